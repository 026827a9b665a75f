"""The recorder: a bounded queue off the receive path, a writer thread rotating splits, a closer handing them off.

``record()`` is all a source calls per message: it never touches the disk, so a
slow disk shows up as a growing buffer and, past its bound, as counted drops —
never as a blocked ROS callback and never silently. The writer thread writes
batches into the current split and rotates it by the split policy; finished
splits go to a closer thread (closing can mean compressing a whole file) that
closes them in order and hands each one to the uploader.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, Qos

from core.config import RecorderConfig
from ros_nodes.core.bag_info import describe_bag
from ros_nodes.core.bag_writer import MESSAGE_OVERHEAD, SIDECAR, SplitWriter, TopicInfo, is_complete, typestore_for
from ros_nodes.core.disk import DiskGuard, FreeSpace, Retention, free_bytes
from ros_nodes.core.errors import RecorderError, RecorderStateError
from ros_nodes.core.handoff import BagInfo, Handoff, Uploader
from ros_nodes.core.ledger import Ledger
from ros_nodes.core.msgdefs import MessageTypeError, MsgLookup, register_message_type
from ros_nodes.core.salvage import RECOVERED_SUFFIX, UNRECOVERABLE_SUFFIX, salvage
from ros_nodes.core.splitting import NS_PER_S, UNLIMITED, SplitPolicy
from ros_nodes.core.status import RecorderState, RecorderStatus, TopicStats
from ros_nodes.core.topics import TopicSelection

log = logging.getLogger(__name__)

Item = tuple[str, str, bytes, int]  # (topic, message type, CDR bytes, timestamp ns), as queued by record()
Route = tuple[Connection, TopicStats]  # per topic, for the open split: where to write it and what to count

STATE_DIR = ".recorder"
# The queue marker "split here", ordered with the messages around it: a message whose topic no source can send,
# so the writer's loop tells it apart on its rare path (an unknown topic) instead of checking every item.
_SPLIT: Any = object()
_SPLIT_ITEM = (_SPLIT, "", b"", 0)
_RECORDING = RecorderState.RECORDING
_IDLE_WAKEUP_S = 0.2
_DISK_CHECK_NS = NS_PER_S
# status() may be polled often (heartbeats, the status topic, benchmarks): stat the open split at most this often.
_BAG_SIZE_REFRESH_NS = NS_PER_S


def new_session(now: datetime | None = None) -> str:
    """Sortable and unique across quick restarts: UTC time plus a short random suffix."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


class Recorder:
    """Records (topic, type, CDR bytes, time) into split rosbag2 bags; see the module docstring."""

    def __init__(
        self,
        config: RecorderConfig,
        *,
        uploader: Uploader | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        free_space: FreeSpace = free_bytes,
        type_lookup: MsgLookup | None = None,
    ) -> None:
        self.config = config
        self.type_lookup = type_lookup
        self.output_dir = config.output_dir
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.selection = TopicSelection(config.topics, config.include_regex, config.exclude_regex)
        self.policy = SplitPolicy(config.max_bag_size, config.max_bag_duration)
        self.disk = DiskGuard(self.output_dir, config.min_free_disk, free_space)
        self.retention = Retention(config.keep_bags, config.keep_bytes)
        self.typestore = typestore_for(config.ros_distro)
        self.ledger = Ledger(self.output_dir / STATE_DIR / "handoff.sqlite")
        self.handoff = Handoff(uploader, self.ledger, priority=config.upload_priority)
        self.handoff.on_verified(lambda _bag: self.apply_retention())
        self.handoff.listen(uploader)
        self._clock = clock_ns

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()
        self._queued_bytes = 0
        self._buffer_size = config.buffer_size
        self._wanted: dict[str, bool] = {}  # the selection's decision per topic, one lookup per message
        self._writer_waiting = False
        self._dropped_messages = 0
        self._dropped_bytes = 0

        self._state = RecorderState.IDLE
        self._stopping = False
        self._stop_reason: str | None = None
        self._last_error: str | None = None
        self._session: str | None = None
        self._started_ns: int | None = None
        self._stopped_ns: int | None = None
        self._bag_size: tuple[Path, int, int] | None = None  # (split path, bytes, measured at)
        self._split: SplitWriter | None = None
        self._split_index = 0
        self._splits_done = 0
        self._topics: dict[str, TopicInfo] = {}
        self._stats: dict[str, TopicStats] = {}
        self._status_lock = threading.Lock()  # TopicStats.snapshot() moves the rate anchors
        self._routes: dict[str, Route] = {}  # the open split's topics
        self._split_base: dict[str, int] = {}  # each topic's count when it joined the open split
        self._errors_by_topic: dict[str, str] = {}
        self._closed = False
        self._pending_at_close = 0
        self._messages_written = 0
        self._bytes_written = 0
        self._recovered: list[str] = []
        self._unrecoverable: list[str] = []
        self._retention_lock = threading.Lock()
        self._writer_thread: threading.Thread | None = None
        self._closer_queue: queue.Queue[SplitWriter | BagInfo | None] = queue.Queue()
        self._closer_thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------
    @property
    def state(self) -> RecorderState:
        return self._state

    def start(self, session: str | None = None) -> str:
        """Recover what a previous run left behind, check the disk, and start recording; returns the session."""
        if self._state in (RecorderState.RECORDING, RecorderState.PAUSED):
            msg = f"recorder is already {self._state.value}"
            raise RecorderStateError(msg)
        self.recover()
        self.disk.require()
        self._session = session or new_session()
        self._started_ns, self._stopped_ns = self._clock(), None
        self._split_index = 0
        self._stopping = False
        self._stop_reason = None
        self._closer_thread = threading.Thread(target=self._closer_loop, name="recorder-closer", daemon=True)
        self._writer_thread = threading.Thread(target=self._writer_loop, name="recorder-writer", daemon=True)
        self._closer_thread.start()
        self._writer_thread.start()
        self._state = RecorderState.RECORDING
        log.info("recording session %s of robot %s into %s", self._session, self.config.robot_id, self.output_dir)
        return self._session

    def stop(self, reason: str = "requested") -> None:
        """Write everything queued, close and hand off the open split; idempotent."""
        if self._writer_thread is None:
            return
        self._state = RecorderState.STOPPED
        self._stopped_ns = self._stopped_ns or self._clock()
        with self._cond:
            self._stopping = True
            self._stop_reason = self._stop_reason or reason
            self._cond.notify()
        if threading.current_thread() is not self._writer_thread:
            self._writer_thread.join()
            self._writer_thread = None
            if self._closer_thread is not None:
                self._closer_thread.join()
                self._closer_thread = None
        log.info("recording stopped (%s) after %d splits", self._stop_reason, self._splits_done)

    def pause(self) -> None:
        self._require(RecorderState.RECORDING, "pause")
        self._state = RecorderState.PAUSED

    def resume(self) -> None:
        self._require(RecorderState.PAUSED, "resume")
        self._state = RecorderState.RECORDING

    def split_now(self) -> None:
        """Close the current split after every message received so far; the next one opens on the next message."""
        if self._state not in (RecorderState.RECORDING, RecorderState.PAUSED):
            msg = f"cannot split while {self._state.value}"
            raise RecorderStateError(msg)
        with self._cond:
            self._queue.append(_SPLIT_ITEM)
            self._cond.notify()

    def command(self, action: str) -> None:
        """Run an operator command by name (heartbeat replies, ROS services): start/stop/pause/resume/split."""
        handlers: dict[str, Callable[[], object]] = {
            "start": self.start,
            "stop": self.stop,
            "pause": self.pause,
            "resume": self.resume,
            "split": self.split_now,
        }
        handler = handlers.get(str(getattr(action, "value", action)))
        if handler is None:
            msg = f"unknown recorder command {action!r} (expected one of {sorted(handlers)})"
            raise RecorderStateError(msg)
        handler()

    def _require(self, state: RecorderState, action: str) -> None:
        if self._state is not state:
            msg = f"cannot {action} while {self._state.value}"
            raise RecorderStateError(msg)

    # --- receive path ----------------------------------------------------------------
    def add_topic(
        self,
        topic: str,
        msgtype: str,
        *,
        qos: Sequence[Qos] = (),
        msgdef: str | None = None,
        rihs01: str | None = None,
    ) -> None:
        """Declare a topic's QoS and definition ahead of its messages (sources that know them).

        A type the typestore lacks is registered through ``type_lookup`` (the
        ROS installation's ``.msg`` files) here, on the source's thread, before
        any of its messages reach the writer. Without a definition the topic's
        messages are counted as dropped and the reason is reported.
        """
        if msgdef is None and self.type_lookup is not None and msgtype not in self.typestore.types:
            try:
                added = register_message_type(self.typestore, msgtype, self.type_lookup)
            except MessageTypeError as err:
                log.error("cannot record %s: %s", topic, err)
                self._last_error = str(err)
            else:
                log.info("registered message types %s for %s from their .msg definitions", ", ".join(added), topic)
        self._topics[topic] = TopicInfo(topic, msgtype, tuple(qos), msgdef, rihs01)

    def wants(self, topic: str) -> bool:
        return self.selection.accepts(topic)

    def record(self, topic: str, msgtype: str, data: bytes, timestamp: int | None = None) -> bool:
        """Queue one serialized message; False when not recorded (not recording, not selected, buffer full).

        Runs once per message on the source's thread: one cached selection
        lookup, one uncontended lock, one tuple appended; no call on the way.
        """
        if self._state is not _RECORDING:
            return False
        wanted = self._wanted.get(topic)
        if wanted is None:
            wanted = self._wanted[topic] = self.selection.accepts(topic)
        if not wanted:
            return False
        size = len(data)
        if timestamp is None:
            timestamp = self._clock()
        # The condition's plain lock, not the Condition: notify() only when the writer sleeps, and only once —
        # the woken writer may wait for the GIL a whole switch interval, thousands of record() calls.
        with self._lock:
            if self._queued_bytes + size > self._buffer_size:
                self._overflow(topic, size)
                return False
            self._queue.append((topic, msgtype, data, timestamp))
            self._queued_bytes += size
            if self._writer_waiting:
                self._writer_waiting = False
                self._cond.notify()
        return True

    def _overflow(self, topic: str, size: int) -> None:
        """Count a message the full buffer refuses (called holding the lock); log the first and every 1000th."""
        self._dropped_messages += 1
        self._dropped_bytes += size
        if self._dropped_messages == 1 or self._dropped_messages % 1000 == 0:
            log.warning(
                "recording buffer full (%d bytes): %d messages dropped so far, latest on %s",
                self._buffer_size,
                self._dropped_messages,
                topic,
            )

    # --- writer thread -----------------------------------------------------------------
    def _writer_loop(self) -> None:
        next_disk_check = 0
        while True:
            with self._cond:
                if not self._queue and not self._stopping:
                    self._writer_waiting = True
                    self._cond.wait(_IDLE_WAKEUP_S)
                    self._writer_waiting = False
                batch, self._queue = self._queue, deque()
                stopping = self._stopping
            try:
                written = self._write_batch(batch)
            except Exception as err:
                log.exception("writing split %s failed", self._split.info.bag if self._split else None)
                self._last_error = f"{type(err).__name__}: {err}"
                self._fail(f"write error: {self._last_error}")
                return
            with self._cond:
                self._queued_bytes -= written
            now = self._clock()
            split = self._split
            # Only an idle split is closed by the clock; while messages flow their timestamps decide.
            if (
                not batch
                and split is not None
                and self.policy.expired(messages=split.info.message_count, first_ns=split.info.start_ns, now_ns=now)
            ):
                self._rotate()
            if stopping:
                self._rotate()
                self._closer_queue.put(None)
                return
            if now >= next_disk_check:
                next_disk_check = now + _DISK_CHECK_NS
                if not self.disk.ok():
                    self._fail(f"disk_full: free space below {self.disk.floor} bytes in {self.output_dir}")
                    return

    def _fail(self, reason: str) -> None:
        """Stop from inside the writer thread: keep what was written, close the split, refuse new messages."""
        log.error("recording stops: %s", reason)
        self._state = RecorderState.STOPPED
        self._stopped_ns = self._stopped_ns or self._clock()
        with self._cond:
            self._stopping = True
            self._stop_reason = reason
            # What is still queued cannot be written any more: count it, never lose it silently.
            self._dropped_messages += sum(1 for item in self._queue if item is not _SPLIT_ITEM)
            self._dropped_bytes += self._queued_bytes
            self._queue.clear()
            self._queued_bytes = 0
        try:
            self._rotate()
        finally:
            self._closer_queue.put(None)

    def _write_batch(self, batch: deque[Item]) -> int:
        """Write a batch; returns its payload bytes.

        Per message only a route lookup, the split test (two integer comparisons
        against the policy's ``room``/``deadline``), the rosbags write and plain
        counters. Everything rare (split marker, new split, a topic's first
        message in a split) is behind one test; the split's counts are stored by
        ``_settle()`` once per batch and before each rotation.
        """
        split = self._split
        tally = self._load_tally(split)
        count, start, end, room, deadline = tally
        written = 0
        overhead = MESSAGE_OVERHEAD
        policy = self.policy
        routes = self._routes
        write = split.writer.write if split is not None else None
        try:
            for topic, msgtype, data, timestamp in batch:
                size = len(data)
                route = routes.get(topic)
                # A known route means this split has messages already, so the split test needs no count check.
                if route is None or size > room or timestamp >= deadline:
                    if topic is _SPLIT:
                        if split is not None:
                            written += self._settle(split, tally, count, start, end, room)
                            self._rotate()
                            split, routes = None, self._routes
                        continue
                    if split is None or (count and (size > room or timestamp >= deadline)):
                        if split is not None:
                            written += self._settle(split, tally, count, start, end, room)
                            split.flush_closed_chunks()
                            self._rotate()
                            split = None  # settled: an exception from here on must not settle it again
                        split = self._open_split()
                        tally = self._load_tally(split)
                        count, start, end, room, deadline = tally
                        routes = self._routes
                        write = split.writer.write
                        route = None
                    if route is None:
                        route = self._route(split, topic, msgtype, timestamp, size)
                        if route is None:
                            continue
                conn, stats = route
                write(conn, timestamp, data)
                stats.count += 1
                stats.bytes += size
                stats.last_ns = timestamp
                count += 1
                room -= size + overhead
                if timestamp > end:
                    end = timestamp
                if timestamp < start:
                    start = timestamp
                    deadline = policy.deadline(start)
            # Flush before settling: once the counters say a message is written, its closed chunks are on disk.
            if split is not None:
                split.flush_closed_chunks()
        finally:
            if split is not None:
                written += self._settle(split, tally, count, start, end, room)
        return written

    def _load_tally(self, split: SplitWriter | None) -> tuple[int, int, int, int, int]:
        """The open split's (messages, start, end, room, deadline) as the batch loop keeps them in locals."""
        if split is None or not split.info.message_count:
            return 0, UNLIMITED, -UNLIMITED, self.policy.room(0), UNLIMITED
        info = split.info
        return (
            info.message_count,
            info.start_ns,
            info.end_ns,
            self.policy.room(split.size),
            self.policy.deadline(info.start_ns),
        )

    def _settle(
        self, split: SplitWriter, tally: tuple[int, int, int, int, int], count: int, start: int, end: int, room: int
    ) -> int:
        """Store the batch loop's locals into the split's info (what its hand-off metadata reports).

        Returns the payload bytes written since ``tally`` was loaded; the
        recorder's totals are updated here too, so the loop counts nothing twice.
        """
        info = split.info
        messages = count - tally[0]
        if count:
            info.message_count, info.start_ns, info.end_ns = count, start, end
        framed = tally[3] - room
        split.size += framed
        for topic, (_conn, stats) in self._routes.items():
            info.topics[topic] = stats.count - self._split_base[topic]
        payload = framed - messages * MESSAGE_OVERHEAD
        self._messages_written += messages
        self._bytes_written += payload
        return payload

    def _route(self, split: SplitWriter, topic: str, msgtype: str, timestamp: int, size: int) -> Route | None:
        """First message of a topic in this split: add its connection; None when the type is unknown (counted)."""
        try:
            conn = split.add_topic(self._topics.get(topic) or TopicInfo(topic, msgtype))
        except RecorderError as err:
            self._unrecordable(topic, size, err)
            return None
        stats = self._stats.get(topic)
        if stats is None:
            stats = self._stats[topic] = TopicStats(msgtype, timestamp)
        self._split_base[topic] = stats.count
        route = self._routes[topic] = (conn, stats)
        return route

    def _unrecordable(self, topic: str, size: int, err: RecorderError) -> None:
        """A topic whose type has no definition is dropped (counted, logged once); the others go on."""
        if topic not in self._errors_by_topic:
            log.error("cannot record %s: %s", topic, err)
            self._errors_by_topic[topic] = str(err)
            self._last_error = str(err)
        with self._cond:
            self._dropped_messages += 1
            self._dropped_bytes += size
            self._queued_bytes -= size

    def _open_split(self) -> SplitWriter:
        name = f"{self.config.robot_id}_{self._session}_{self._split_index:04d}"
        info = BagInfo(
            bag=name,
            path=self.output_dir / name,
            robot_id=self.config.robot_id,
            session=self._session,
            split_index=self._split_index,
            storage=self.config.storage,
        )
        split = SplitWriter(info, self.config, self.typestore)
        split.open()
        self._split = split
        self._split_index += 1
        log.info("opened split %s", name)
        return split

    def _rotate(self) -> None:
        split, self._split = self._split, None
        self._routes, self._split_base = {}, {}  # after _settle(), which reads them
        if split is None:
            return
        if self.config.storage == "sqlite3":
            # sqlite3 objects cannot cross threads: close here and let the closer only hand it off.
            try:
                self._closer_queue.put(split.close())
            except Exception as err:
                self._close_failed(split, err)
            return
        self._closer_queue.put(split)

    # --- closer thread -------------------------------------------------------------------
    def _closer_loop(self) -> None:
        while (item := self._closer_queue.get()) is not None:
            if isinstance(item, BagInfo):
                info = item
            else:
                try:
                    info = item.close()
                except Exception as err:
                    self._close_failed(item, err)
                    continue
            self._splits_done += 1
            log.info(
                "closed split %s: %d messages, %d topics, %.1f s",
                info.bag,
                info.message_count,
                len(info.topics),
                (info.end_ns - info.start_ns) / NS_PER_S,
            )
            self._hand_off(info)
            self.apply_retention()

    def _close_failed(self, split: SplitWriter, err: Exception) -> None:
        # The folder keeps its sidecar and no metadata.yaml: the next start() salvages it.
        log.error("closing split %s failed: %s", split.info.bag, err, exc_info=err)
        self._last_error = f"close {split.info.bag}: {err}"

    def _hand_off(self, info: BagInfo) -> None:
        try:
            self.handoff.submit(info)
        except Exception as err:
            # The bag stays on disk and in no "queued" ledger row: the next start() queues it again.
            log.exception("handing %s to the uploader failed", info.bag)
            self._last_error = f"hand-off {info.bag}: {err}"

    # --- recovery and retention ------------------------------------------------------------------
    def recover(self) -> list[BagInfo]:
        """Salvage crashed splits and queue every complete bag not queued before (after a crash or restart)."""
        found = []
        for path in self.bag_dirs(include_open=True):
            if (path / SIDECAR).exists() and not is_complete(path):
                try:
                    result = salvage(path, self.config)
                except RecorderError as err:
                    log.error("salvaging %s failed: %s", path, err)
                    self._last_error = str(err)
                    continue
                if result.info is None:
                    self._unrecoverable.append(str(result.lost_path))
                    continue
                self._recovered.append(result.info.bag)
                found.append(result.info)
                continue
            (path / SIDECAR).unlink(missing_ok=True)  # killed between metadata.yaml and cleanup
            found.append(self._describe(path))
        for info in found:
            self._hand_off(info)
        if self.handoff.uploader is not None:
            self.handoff.reconcile(self.handoff.uploader)
        return found

    def _describe(self, path: Path) -> BagInfo:
        return describe_bag(path, robot_id=self.config.robot_id, recovered=path.name.endswith(RECOVERED_SUFFIX))

    def bag_dirs(self, *, include_open: bool = False) -> list[Path]:
        """Bags in the output folder, oldest first (names sort by session, then split index)."""
        bags = []
        for path in sorted(self.output_dir.iterdir()):
            if not path.is_dir() or path.name.startswith(".") or path.name.endswith(UNRECOVERABLE_SUFFIX):
                continue
            if self._split is not None and path == self._split.info.path:
                continue
            if is_complete(path) or (include_open and (path / SIDECAR).exists()):
                bags.append(path)
        return bags

    def apply_retention(self) -> list[Path]:
        if not self.retention.enabled:
            return []
        with self._retention_lock:
            return self.retention.enforce(self.bag_dirs(), self.ledger.bag_verified)

    # --- status ------------------------------------------------------------------------------
    def status(self) -> RecorderStatus:
        now = self._clock()
        split = self._split
        with self._cond:
            buffered_messages = len(self._queue)
            buffered_bytes = self._queued_bytes
        try:
            disk_free: int | None = self.disk.free()
        except OSError:
            disk_free = None
        return RecorderStatus(
            state=self._state.value,
            robot_id=self.config.robot_id,
            session=self._session,
            current_bag=split.info.bag if split else None,
            storage=self.config.storage,
            started_at=self._started_ns / NS_PER_S if self._started_ns is not None else None,
            elapsed=self._elapsed(now),
            current_bag_bytes=self._current_bag_bytes(split.info.path if split else None, now),
            topics=self._topic_snapshots(now),
            messages_written=self._messages_written,
            bytes_written=self._bytes_written,
            splits_done=self._splits_done,
            buffered_messages=buffered_messages,
            buffered_bytes=buffered_bytes,
            buffer_capacity=self.config.buffer_size,
            dropped_messages=self._dropped_messages,
            dropped_bytes=self._dropped_bytes,
            disk_free=disk_free,
            disk_floor=self.disk.floor,
            stop_reason=self._stop_reason,
            last_error=self._last_error,
            recovered_bags=list(self._recovered),
            unrecoverable_bags=list(self._unrecoverable),
            uploads_pending=self._uploads_pending(),
        )

    def _topic_snapshots(self, now: int) -> dict[str, dict[str, Any]]:
        with self._status_lock:
            return {topic: stats.snapshot(now) for topic, stats in list(self._stats.items())}

    def _elapsed(self, now: int) -> float | None:
        if self._started_ns is None:
            return None
        return max(0, (self._stopped_ns or now) - self._started_ns) / NS_PER_S

    def _current_bag_bytes(self, path: Path | None, now: int) -> int | None:
        """Bytes the open split occupies on disk: a stat of its few files, cached for a second."""
        if path is None:
            return None
        cached = self._bag_size
        if cached is not None and cached[0] == path and now - cached[2] < _BAG_SIZE_REFRESH_NS:
            return cached[1]
        try:
            size = sum(entry.stat().st_size for entry in os.scandir(path) if entry.name != SIDECAR and entry.is_file())
        except OSError:
            return cached[1] if cached is not None and cached[0] == path else None
        self._bag_size = (path, size, now)
        return size

    def _uploads_pending(self) -> int:
        if self._closed:
            return self._pending_at_close
        return sum(1 for _ in self.handoff.pending())

    def close(self) -> None:
        """Stop and release the ledger; ``status()`` keeps working with the last known upload count."""
        self.stop()
        if not self._closed:
            self._pending_at_close = self._uploads_pending()
            self._closed = True
            self.ledger.close()
