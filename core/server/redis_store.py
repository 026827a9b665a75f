"""Upload state in Redis, for several app servers behind one nginx (``STATE_STORE_URI=redis://…``).

Implements ``core.server.state_store.StateStore`` with the same guarantees as the
SQLite default: every state change is a compare-and-set, done in one Lua script so
two app servers can never both finalize, abort or expire an upload. Each upload
is a hash (one field per ``UploadRecord`` field, so Lua never re-encodes user
metadata); sorted sets index uploads by creation, state, owner and last activity.

Durability: a chunk is acknowledged once Redis has recorded it, so Redis must run
with ``appendonly yes`` and ``appendfsync always`` (DEPLOYMENT.md, "Scale-out").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from typing import Any

import redis

from core.config import ServerConfig
from core.protocol import Codec, UploadState
from core.server.state_store import SQLiteStateStore, StateStore, UploadQuery, UploadRecord, check_mutable

# Every key of this project in a shared Redis starts with this (upload state, robot status, commands).
PREFIX = "ros2-upload:"
_FIELDS = tuple(f.name for f in fields(UploadRecord))
_ACTIVE = (UploadState.UPLOADING.value, UploadState.FINALIZING.value)
_NONE = "\x00none"  # a field set to None is deleted from the hash

# KEYS: upload, by_state_prefix, activity; ARGV: id, now, n_states, states…, field, value, …
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
local n = tonumber(ARGV[3])
local allowed = false
for i = 1, n do if ARGV[3 + i] == state then allowed = true end end
if not allowed then return 0 end
local created = redis.call('HGET', KEYS[1], 'created_at')
for i = 4 + n, #ARGV, 2 do
  if ARGV[i + 1] == '\\0none' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  if ARGV[i] == 'state' and ARGV[i + 1] ~= state then
    redis.call('ZREM', KEYS[2] .. state, ARGV[1])
    redis.call('ZADD', KEYS[2] .. ARGV[i + 1], created, ARGV[1])
    if ARGV[i + 1] == 'uploading' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
    else redis.call('ZREM', KEYS[3], ARGV[1]) end
  end
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
if redis.call('HGET', KEYS[1], 'state') == 'uploading' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1]) end
return 1
"""

# KEYS: upload, chunks, activity; ARGV: id, index, sha256, now
_RECORD_CHUNK = """
if redis.call('HGET', KEYS[1], 'state') ~= 'uploading' then return -1 end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return redis.call('HLEN', KEYS[2])
"""

# KEYS: upload, by_state_prefix, activity, job, jobs_due; ARGV: id, now
_START_FINALIZE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'uploading' then return 0 end
local created = redis.call('HGET', KEYS[1], 'created_at')
redis.call('HSET', KEYS[1], 'state', 'finalizing', 'progress', '0', 'updated_at', ARGV[2])
redis.call('ZREM', KEYS[2] .. 'uploading', ARGV[1])
redis.call('ZADD', KEYS[2] .. 'finalizing', created, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'attempts', '0')
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
return 1
"""

# KEYS: jobs_due, job_prefix; ARGV: holder, now, lease
_CLAIM_JOB = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1)
if #due == 0 then return false end
local id = due[1]
local attempts = redis.call('HINCRBY', KEYS[2] .. id, 'attempts', 1)
redis.call('HSET', KEYS[2] .. id, 'holder', ARGV[1])
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), id)
return {id, attempts}
"""

# KEYS: jobs_due, job; ARGV: id, holder, due_at, release (1: also drop the holder)
_RESCHEDULE_JOB = """
if redis.call('HGET', KEYS[2], 'holder') ~= ARGV[2] then return 0 end
if ARGV[4] == '1' then redis.call('HDEL', KEYS[2], 'holder') end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: lease; ARGV: holder, now, until
_ACQUIRE_LEASE = """
local holder = redis.call('HGET', KEYS[1], 'holder')
local expires = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if holder and holder ~= ARGV[1] and expires > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'until', ARGV[3])
return 1
"""


def connect(url: str) -> redis.Redis:
    """A client with bounded timeouts: a request must fail with a clear error, not hang, when Redis is away."""
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


def _encode(name: str, value: Any) -> str:
    if value is None:
        return _NONE
    if name == "metadata":
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(getattr(value, "value", value))


_INTS = {"filesize", "chunk_size", "chunks", "stored_size", "progress"}
_FLOATS = {"created_at", "updated_at"}
_BOOLS = {"verified", "deduplicated"}


def _decode(raw: dict[bytes, bytes]) -> UploadRecord:
    values: dict[str, Any] = {}
    for key, data in raw.items():
        name, text = key.decode(), data.decode()
        if name not in _FIELDS:
            continue
        if name in _INTS:
            values[name] = int(text)
        elif name in _FLOATS:
            values[name] = float(text)
        elif name in _BOOLS:
            values[name] = text == "1"
        elif name == "metadata":
            values[name] = json.loads(text)
        elif name == "state":
            values[name] = UploadState(text)
        elif name in ("compression", "codec"):
            values[name] = Codec(text)
        else:
            values[name] = text
    return UploadRecord(**values)


class RedisStateStore(StateStore):
    """Upload sessions, chunk receipts, finalize jobs and leases in one Redis database."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = client
        self.p = prefix
        self._transition = client.register_script(_TRANSITION)
        self._record_chunk = client.register_script(_RECORD_CHUNK)
        self._start_finalize = client.register_script(_START_FINALIZE)
        self._claim_job = client.register_script(_CLAIM_JOB)
        self._reschedule_job = client.register_script(_RESCHEDULE_JOB)
        self._acquire_lease = client.register_script(_ACQUIRE_LEASE)

    @classmethod
    def from_url(cls, url: str) -> RedisStateStore:
        return cls(connect(url))

    # --- keys ----------------------------------------------------------------------------------
    def _upload(self, upload_id: str) -> str:
        return f"{self.p}upload:{upload_id}"

    def _chunks(self, upload_id: str) -> str:
        return f"{self.p}chunks:{upload_id}"

    def _job(self, upload_id: str) -> str:
        return f"{self.p}job:{upload_id}"

    @property
    def _by_state(self) -> str:
        return f"{self.p}state:"

    @property
    def _activity(self) -> str:
        return f"{self.p}activity"

    @property
    def _jobs_due(self) -> str:
        return f"{self.p}jobs"

    def _resume_key(self, owner: str, filename: str, filesize: int, chunk_size: int, md5: Any, sha256: Any) -> str:
        identity = json.dumps([owner, filename, filesize, chunk_size, md5, sha256])
        return f"{self.p}resume:{hashlib.sha256(identity.encode()).hexdigest()}"

    def _duplicate_keys(self, filesize: int, md5: str | None, sha256: str | None) -> list[str]:
        keys = [f"{self.p}sha256:{sha256}"] if sha256 else []
        return keys + ([f"{self.p}md5:{md5}:{filesize}"] if md5 else [])

    # --- records -------------------------------------------------------------------------------
    def create_upload(self, record: UploadRecord) -> None:
        mapping = {name: _encode(name, getattr(record, name)) for name in _FIELDS}
        uid = record.upload_id
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._upload(uid), mapping={k: v for k, v in mapping.items() if v != _NONE})
        pipe.zadd(f"{self.p}created", {uid: record.created_at})
        pipe.zadd(self._by_state + record.state.value, {uid: record.created_at})
        pipe.zadd(f"{self.p}owner:{record.owner}", {uid: record.created_at})
        key = self._resume_key(
            record.owner, record.filename, record.filesize, record.chunk_size, record.md5, record.sha256
        )
        pipe.zadd(key, {uid: record.created_at})
        for index in self._duplicate_keys(record.filesize, record.md5, record.sha256):
            pipe.zadd(index, {uid: record.created_at})
        if record.state is UploadState.UPLOADING:
            pipe.zadd(self._activity, {uid: record.updated_at})
        pipe.execute()

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        raw = self.redis.hgetall(self._upload(upload_id))
        return _decode(raw) if raw else None

    def _records(self, ids: list[bytes]) -> list[UploadRecord]:
        pipe = self.redis.pipeline(transaction=False)
        for uid in ids:
            pipe.hgetall(self._upload(uid.decode()))
        return [_decode(raw) for raw in pipe.execute() if raw]

    def find_resumable(
        self, *, owner: str, filename: str, filesize: int, chunk_size: int, md5: str | None, sha256: str | None
    ) -> UploadRecord | None:
        ids = self.redis.zrevrange(self._resume_key(owner, filename, filesize, chunk_size, md5, sha256), 0, -1)
        return next((r for r in self._records(ids) if r.state.value in _ACTIVE), None)

    def find_duplicate(
        self, *, filesize: int, md5: str | None, sha256: str | None, owner: str | None
    ) -> UploadRecord | None:
        keys = self._duplicate_keys(filesize, md5, sha256)
        if not keys:
            return None
        for record in self._records(self.redis.zrange(keys[0], 0, -1)):
            matches = record.sha256 == sha256 if sha256 else (record.md5 == md5 and record.filesize == filesize)
            complete = record.state is UploadState.COMPLETE and record.verified
            if matches and complete and (owner is None or record.owner == owner):
                return record
        return None

    def list_uploads(self, query: UploadQuery) -> tuple[list[UploadRecord], int]:
        if query.owner is not None and query.state is not None:
            owned = self._records(self.redis.zrevrange(f"{self.p}owner:{query.owner}", 0, -1))
            matching = [r for r in owned if r.state is query.state]
            return matching[query.offset : query.offset + query.limit], len(matching)
        if query.owner is not None:
            index = f"{self.p}owner:{query.owner}"
        elif query.state is not None:
            index = self._by_state + query.state.value
        else:
            index = f"{self.p}created"
        total = int(self.redis.zcard(index))
        ids = self.redis.zrevrange(index, query.offset, query.offset + query.limit - 1)
        return self._records(ids), total

    def transition(
        self, upload_id: str, from_states: Collection[UploadState], now: float, **changes: Any
    ) -> UploadRecord | None:
        check_mutable(changes)
        states = [s.value for s in from_states]
        pairs = [item for name, value in changes.items() for item in (name, _encode(name, value))]
        keys = [self._upload(upload_id), self._by_state, self._activity]
        if not self._transition(keys=keys, args=[upload_id, repr(now), len(states), *states, *pairs]):
            return None
        return self.get_upload(upload_id)

    # --- chunks ------------------------------------------------------------------------------
    def record_chunk(self, upload_id: str, index: int, sha256: str, now: float) -> int | None:
        keys = [self._upload(upload_id), self._chunks(upload_id), self._activity]
        count = int(self._record_chunk(keys=keys, args=[upload_id, index, sha256, repr(now)]))
        return None if count < 0 else count

    def chunk_sha256(self, upload_id: str, index: int) -> str | None:
        value = self.redis.hget(self._chunks(upload_id), str(index))
        return value.decode() if value is not None else None

    def received_chunks(self, upload_id: str) -> dict[int, str]:
        return {int(k): v.decode() for k, v in self.redis.hgetall(self._chunks(upload_id)).items()}

    def stale_uploads(self, idle_before: float, limit: int = 100) -> list[UploadRecord]:
        ids = self.redis.zrangebyscore(self._activity, "-inf", f"({idle_before!r}", start=0, num=limit)
        return [r for r in self._records(ids) if r.state is UploadState.UPLOADING]

    # --- finalize jobs and leases ---------------------------------------------------------------
    def start_finalize(self, upload_id: str, now: float) -> UploadRecord | None:
        keys = [self._upload(upload_id), self._by_state, self._activity, self._job(upload_id), self._jobs_due]
        if not self._start_finalize(keys=keys, args=[upload_id, repr(now)]):
            return None
        return self.get_upload(upload_id)

    def claim_job(self, holder: str, now: float, lease: float) -> tuple[str, int] | None:
        claimed = self._claim_job(keys=[self._jobs_due, f"{self.p}job:"], args=[holder, repr(now), repr(lease)])
        if not claimed:
            return None
        upload_id, attempts = claimed
        return upload_id.decode(), int(attempts)

    def renew_job(self, upload_id: str, holder: str, until: float) -> bool:
        keys = [self._jobs_due, self._job(upload_id)]
        return bool(self._reschedule_job(keys=keys, args=[upload_id, holder, repr(until), "0"]))

    def release_job(self, upload_id: str, holder: str, retry_at: float) -> None:
        self._reschedule_job(keys=[self._jobs_due, self._job(upload_id)], args=[upload_id, holder, repr(retry_at), "1"])

    def finish_job(self, upload_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self._jobs_due, upload_id)
        pipe.delete(self._job(upload_id))
        pipe.execute()

    def acquire_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        return bool(self._acquire_lease(keys=[f"{self.p}lease:{name}"], args=[holder, repr(now), repr(until)]))

    def close(self) -> None:
        self.redis.close()


def open_state_store(config: ServerConfig, sqlite_path: Path) -> StateStore:
    """Redis when STATE_STORE_URI is set, else the embedded SQLite database at ``sqlite_path``."""
    if config.state_store_uri:
        return RedisStateStore.from_url(config.state_store_uri)
    return SQLiteStateStore(sqlite_path)
