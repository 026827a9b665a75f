"""The bag catalogue: verified uploads grouped into recordings, with facts read from the bag files themselves.

A rosbag2 bag reaches the server as several uploads that share the client's
``bag`` metadata: its storage file(s) and ``metadata.yaml``. The client's
identifiers (robot, session, split index, recovered) group them; what a bag
*contains* (time range, message count, topics and their types) is read at
finalize from the stored bytes — the MCAP summary (or a scan of the messages
when a crashed split has none), else the ``metadata.yaml`` rosbag2 wrote — and
never taken from the client's metadata alone.
"""

from __future__ import annotations

import abc
import hashlib
import io
import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import yaml
from mcap.exceptions import EndOfFile, McapError
from mcap.reader import NonSeekingReader, make_reader

from core.protocol import Codec
from core.server.compression import iter_decompressed

if TYPE_CHECKING:
    from core.server.state_store import UploadRecord

log = logging.getLogger("upload_server")

# Opens a stored file's stored bytes (compressed as stored); a seekable stream lets MCAP read its summary.
OpenStored = Callable[[], AbstractContextManager[IO[bytes]]]
METADATA_FILE = "metadata.yaml"
FileKind = Literal["storage", "metadata", "other"]
# A metadata.yaml is a few KiB; anything far larger is not one and is not parsed.
MAX_METADATA_BYTES = 4 << 20


@dataclass(frozen=True)
class TopicFacts:
    name: str
    type: str
    message_count: int


@dataclass(frozen=True)
class FileFacts:
    """What one verified file contributes to its bag (``parsed``: its contents could be read)."""

    upload_id: str
    filename: str
    kind: FileKind
    size: int
    stored_size: int
    sha256: str | None
    parsed: bool = False
    start_ns: int | None = None
    end_ns: int | None = None
    message_count: int = 0
    topics: tuple[TopicFacts, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileFacts:
        topics = tuple(TopicFacts(**t) for t in data.get("topics", ()))
        return cls(**{**data, "topics": topics})


@dataclass(frozen=True)
class BagIdentity:
    """Who recorded the bag, as the client declared it (the bag's bytes do not say)."""

    bag_id: str
    owner: str
    name: str
    robot_id: str
    session: str
    split_index: int
    storage: str
    recovered: bool


@dataclass(frozen=True)
class BagRecord(BagIdentity):
    """One bag as listed: identity plus facts combined over its files."""

    start_ns: int
    end_ns: int
    message_count: int
    size: int
    stored_size: int
    updated_at: float
    topics: tuple[TopicFacts, ...] = ()
    files: tuple[FileFacts, ...] = ()

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(frozen=True)
class Combined:
    start_ns: int
    end_ns: int
    message_count: int
    size: int
    stored_size: int
    topics: tuple[TopicFacts, ...]


def combine(files: Iterable[FileFacts]) -> Combined:
    """A bag's facts from its files: the storage files' contents when any was read, else metadata.yaml's.

    Both describe the same messages, so they are never added together.
    """
    files = list(files)
    storage = [f for f in files if f.kind == "storage" and f.parsed]
    sources = storage or [f for f in files if f.kind == "metadata" and f.parsed]
    counts: dict[str, int] = {}
    types: dict[str, str] = {}
    for source in sources:
        for topic in source.topics:
            counts[topic.name] = counts.get(topic.name, 0) + topic.message_count
            types.setdefault(topic.name, topic.type)
    starts = [f.start_ns for f in sources if f.start_ns is not None]
    ends = [f.end_ns for f in sources if f.end_ns is not None]
    return Combined(
        start_ns=min(starts, default=0),
        end_ns=max(ends, default=0),
        message_count=sum(f.message_count for f in sources),
        size=sum(f.size for f in files),
        stored_size=sum(f.stored_size for f in files),
        topics=tuple(TopicFacts(name, types[name], counts[name]) for name in sorted(counts)),
    )


@dataclass(frozen=True)
class BagQuery:
    """A page of the catalogue, sorted by start time (newest first unless ``ascending``).

    ``since_ns``/``until_ns`` keep bags whose time range overlaps the window; ``topic`` matches a
    topic name exactly, or every name it starts with when ``topic_prefix``.
    """

    owner: str | None = None
    robot_id: str | None = None
    session: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    topic: str | None = None
    topic_prefix: bool = False
    message_type: str | None = None
    recovered: bool | None = None
    ascending: bool = False
    limit: int = 50
    offset: int = 0


class BagCatalog(abc.ABC):
    """The catalogue half of the state store (one transaction with the uploads it describes)."""

    @abc.abstractmethod
    def record_bag_file(self, bag: BagIdentity, facts: FileFacts, now: float) -> BagRecord:
        """Add (or replace) one verified file of a bag and recompute the bag's facts; the bag as now stored."""

    @abc.abstractmethod
    def get_bag(self, bag_id: str) -> BagRecord | None:
        """One bag with its topics and files."""

    @abc.abstractmethod
    def list_bags(self, query: BagQuery) -> tuple[list[BagRecord], int]:
        """One page of bags (with topics, without files) and the total matching the filters."""

    @abc.abstractmethod
    def delete_bag(self, bag_id: str) -> BagRecord | None:
        """Forget a bag and its file and topic rows; the bag as it was, or None if unknown."""


def bag_id_of(owner: str, bag: str) -> str:
    """A stable id per (uploading key, bag name): two robots may name their bags alike."""
    return hashlib.sha256(f"{owner}\0{bag}".encode()).hexdigest()[:32]


def kind_of(filename: str) -> FileKind:
    name = Path(filename).name
    if name == METADATA_FILE:
        return "metadata"
    if name.endswith((".mcap", ".db3")):
        return "storage"
    return "other"


# --- reading facts from the stored bytes ------------------------------------------------------
class _IterStream(io.RawIOBase):
    """A read-only stream over an iterator of byte strings (a compressed blob, decompressed on the fly)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buffer = piece
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


@contextmanager
def _original(open_stored: OpenStored, codec: Codec) -> Iterator[IO[bytes]]:
    """The original bytes: the stored stream itself when stored raw (seekable on local disk), else decompressed."""
    with open_stored() as stored:
        yield stored if codec is Codec.NONE else io.BufferedReader(_IterStream(iter_decompressed(stored, codec)))


def _mcap_summary(stream: IO[bytes]) -> dict[str, Any] | None:
    """The facts in an indexed MCAP's summary section; None when it has none (or is not seekable)."""
    if not stream.seekable():
        return None
    try:
        summary = make_reader(stream).get_summary()
    except (McapError, EndOfFile, ValueError, struct.error):
        summary = None  # torn footer: a split cut short; its messages are still there to count
    if summary is None or summary.statistics is None:
        stream.seek(0)
        return None
    stats = summary.statistics
    channels = summary.channels
    schemas = {sid: schema.name for sid, schema in summary.schemas.items()}
    types = {c.topic: schemas.get(c.schema_id, "") for c in channels.values()}
    counts = {channels[cid].topic: n for cid, n in stats.channel_message_counts.items() if cid in channels}
    return _facts(stats.message_start_time, stats.message_end_time, types, counts)


def _mcap_scan(stream: IO[bytes]) -> dict[str, Any]:
    """Count the messages themselves (a compressed blob, or a split without summary); a torn tail ends the count."""
    types: dict[str, str] = {}
    counts: dict[str, int] = {}
    start = end = None
    try:
        for schema, channel, message in NonSeekingReader(stream).iter_messages(log_time_order=False):
            types.setdefault(channel.topic, schema.name if schema else "")
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            start = message.log_time if start is None else min(start, message.log_time)
            end = message.log_time if end is None else max(end, message.log_time)
    except (McapError, EndOfFile, struct.error):
        if not counts:
            raise
    return _facts(start, end, types, counts)


def _facts(start: int | None, end: int | None, types: dict[str, str], counts: dict[str, int]) -> dict[str, Any]:
    topics = tuple(TopicFacts(name, types[name], counts.get(name, 0)) for name in sorted(types))
    return {"start_ns": start, "end_ns": end, "message_count": sum(counts.values()), "topics": topics}


def _mcap_facts(stream: IO[bytes]) -> dict[str, Any]:
    return _mcap_summary(stream) or _mcap_scan(stream)


def _metadata_facts(stream: IO[bytes]) -> dict[str, Any]:
    text = stream.read(MAX_METADATA_BYTES + 1)
    if len(text) > MAX_METADATA_BYTES:
        msg = "larger than any metadata.yaml"
        raise ValueError(msg)
    info = (yaml.safe_load(text) or {})["rosbag2_bagfile_information"]
    start = int(info["starting_time"]["nanoseconds_since_epoch"])
    duration = int(info["duration"]["nanoseconds"])
    topics = tuple(
        TopicFacts(str(t["topic_metadata"]["name"]), str(t["topic_metadata"]["type"]), int(t["message_count"]))
        for t in info.get("topics_with_message_count") or ()
    )
    total = int(info["message_count"])
    return {"start_ns": start, "end_ns": start + duration, "message_count": total, "topics": topics}


def bag_facts(
    *,
    upload_id: str,
    filename: str,
    open_stored: OpenStored,
    codec: Codec,
    size: int,
    stored_size: int,
    sha256: str | None,
) -> FileFacts:
    """What the stored file (``open_stored()``: its stored bytes) says about its bag; an unreadable one is listed."""
    kind = kind_of(filename)
    base = FileFacts(upload_id, filename, kind, size, stored_size, sha256)
    reader = {"metadata": _metadata_facts}.get(kind) or (_mcap_facts if filename.endswith(".mcap") else None)
    if reader is None:
        return base
    try:
        with _original(open_stored, codec) as stream:
            read = reader(stream)
    except (McapError, EndOfFile, struct.error, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        log.warning("Catalogue: cannot read %s (upload %s): %s", filename, upload_id, err)
        return base
    return FileFacts(upload_id, filename, kind, size, stored_size, sha256, parsed=True, **read)


@dataclass(frozen=True)
class _Declared:
    """The client's grouping fields of one upload, checked for type (they only group, never describe)."""

    bag: str
    robot_id: str
    session: str
    split_index: int
    storage: str
    recovered: bool


def declared(metadata: dict[str, Any], owner: str) -> _Declared | None:
    """The upload's bag grouping, or None when it belongs to no bag (a plain file upload)."""
    bag = metadata.get("bag")
    if not isinstance(bag, str) or not bag:
        return None

    def text(name: str, default: str) -> str:
        value = metadata.get(name)
        return value if isinstance(value, str) and value else default

    split = metadata.get("split_index")
    return _Declared(
        bag=bag,
        robot_id=text("robot_id", owner),
        session=text("session", ""),
        split_index=split if isinstance(split, int) and not isinstance(split, bool) else 0,
        storage=text("storage", ""),
        recovered=metadata.get("recovered") is True,
    )


def identity_of(owner: str, grouping: _Declared) -> BagIdentity:
    return BagIdentity(
        bag_id=bag_id_of(owner, grouping.bag),
        owner=owner,
        name=grouping.bag,
        robot_id=grouping.robot_id,
        session=grouping.session,
        split_index=grouping.split_index,
        storage=grouping.storage,
        recovered=grouping.recovered,
    )


class StoredFiles(Protocol):
    """The one blob-store method the catalogue reads through (the download route's)."""

    def open_blob(
        self, blob_id: str, codec: Codec, start: int = 0, length: int | None = None
    ) -> AbstractContextManager[IO[bytes]]: ...


def record_upload(catalog: BagCatalog, blobs: StoredFiles, record: UploadRecord, now: float) -> BagRecord | None:
    """Finalize's hook: file a verified upload that belongs to a bag under it; None for other uploads.

    Called after the upload is complete: a file that cannot be read is listed without contents, so
    the catalogue never refuses a verified copy.
    """
    grouping = declared(record.metadata, record.owner)
    if grouping is None or not record.verified or record.blob_id is None:
        return None
    codec, blob_id = record.codec or Codec.NONE, record.blob_id
    facts = bag_facts(
        upload_id=record.upload_id,
        filename=record.filename,
        open_stored=lambda: blobs.open_blob(blob_id, codec),
        codec=codec,
        size=record.filesize,
        stored_size=record.stored_size or 0,
        sha256=record.sha256,
    )
    bag = catalog.record_bag_file(identity_of(record.owner, grouping), facts, now)
    log.info(
        "Catalogued %s in bag %s (%s, robot %s): %d file(s), %d message(s), %d topic(s)",
        record.filename,
        bag.bag_id,
        bag.name,
        bag.robot_id,
        len(bag.files),
        bag.message_count,
        len(bag.topics),
    )
    return bag
