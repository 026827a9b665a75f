"""HTTP calls to the upload server: one attempt each, split timeouts, streamed and abortable chunk bodies.

Every call raises the exception class from ``core.client.errors`` that tells
the retry policy what to do; retrying itself happens in the caller. Chunk PUTs
stream their body in pieces (sized to the link, ``core.client.send_pace``)
through the shared token bucket and report each piece to the watchdog, which
can abort the request by shutting down its socket from another thread (the
only way to wake a ``send`` blocked on a black-holed link).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from core.checksums import ChunkChecksum
from core.client import wire
from core.client.bandwidth import TokenBucket
from core.client.chunk_sizing import PieceSizer
from core.client.errors import StalledTransferError, TransientUploadError, UploadError
from core.client.retry import classify_response, transient_from_exception
from core.client.send_pace import MIN_PIECE, PaceMeter, SendPace
from core.client.session import robot_session
from core.client.wire import WireSample
from core.protocol import (
    AUTH_SCHEME,
    CHUNK_CONTENT_TYPE,
    FEATURE_CHUNK_CRC32C,
    HEADER_AUTHORIZATION,
    HEADER_CHUNK_OFFSET,
    ChunkAlgorithm,
    FinalizeRequest,
    InitRequest,
    chunk_url,
    finalize_url,
    init_url,
    upload_status_url,
)

_current = threading.local()


class ConnectionSlot:
    """The connections one thread used for one request, so another thread can cut them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self.aborted = False

    def attach(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connections.append(connection)
            aborted = self.aborted
        if aborted:
            _shutdown(connection)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)

    def _socket(self) -> socket.socket | None:
        with self._lock:
            connection = self._connections[-1] if self._connections else None
        return None if connection is None else connection.sock

    def sample(self) -> WireSample | None:
        """The kernel's view of the connection the request uses now (``core.client.wire``)."""
        return wire.sample(self._socket())

    def keep_probing(self, on: bool) -> None:
        wire.keep_probing(self._socket(), on)


def _shutdown(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def tracked(slot: ConnectionSlot) -> Iterator[ConnectionSlot]:
    _current.slot = slot
    try:
        yield slot
    finally:
        _current.slot = None


class _TrackedMixin:
    def request(self, *args: Any, **kwargs: Any) -> None:
        slot = getattr(_current, "slot", None)
        if slot is not None:
            slot.attach(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPConnection(_TrackedMixin, HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedMixin, HTTPSConnection):
    pass


class _TrackedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class AbortableAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections register with the calling thread's ``ConnectionSlot``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _TrackedHTTPConnectionPool,
            "https": _TrackedHTTPSConnectionPool,
        }


class ChunkBody:
    """A chunk's bytes as an iterable of pieces with a length, so requests sends ``Content-Length``.

    Each piece first takes its tokens from the shared bucket; ``on_piece(n)`` is
    called when a piece of ``n`` bytes is handed to the socket (which is not yet
    progress on the wire, see ``core.client.wire``) and ``on_piece(0)`` after
    every throttling pause (waiting on the bucket is not a stall). Pieces are as
    large as the link's pace allows (``core.client.send_pace``); without a meter, the smallest.
    """

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        *,
        bucket: TokenBucket | None = None,
        on_piece: Callable[[int], None] | None = None,
        meter: PaceMeter | None = None,
    ) -> None:
        self._data = memoryview(data)
        self._bucket = bucket
        self._on_piece = on_piece or (lambda _n: None)
        self._meter = meter

    def __len__(self) -> int:
        return len(self._data)

    def _piece_length(self) -> int:
        rate = self._bucket.rate if self._bucket is not None else 0
        if rate > 0:
            # At low rates, smaller pieces keep the limit smooth and the watchdog fed.
            return max(1024, min(MIN_PIECE, int(rate / 20)))
        return MIN_PIECE if self._meter is None else self._meter.piece()

    def __iter__(self) -> Iterator[memoryview]:
        offset = 0
        total = len(self._data)
        while offset < total:
            piece = self._data[offset : offset + self._piece_length()]
            if self._bucket is not None and self._bucket.consume(len(piece)) > 0:
                self._on_piece(0)
            yield piece
            offset += len(piece)
            self._on_piece(len(piece))
        if self._meter is not None:
            self._meter.finish()


@dataclass
class ServerClient:
    """One attempt of each server call; a session per thread because requests sessions are not thread-safe."""

    upload_url: str
    api_key: str | None = None
    verify: bool | str = True
    # How much of a chunk one request carries: learned from this link's failures (shared by every job).
    sizer: PieceSizer = field(default_factory=PieceSizer)
    # How many bytes one send carries: learned from this link's acknowledgements (shared by every job).
    pace: SendPace = field(default_factory=SendPace)
    # False once an init reply lacked FEATURE_FINALIZE_SHA256 (an older server): bags are hashed before init.
    finalize_sha256: bool = True
    # How chunks are checked: sha256, which every server checks, until an init reply lists FEATURE_CHUNK_CRC32C.
    chunk_algorithm: ChunkAlgorithm = ChunkAlgorithm.SHA256
    _local: threading.local = field(default_factory=threading.local, init=False, repr=False)

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = robot_session(self.upload_url, self.verify)
            adapter = AbortableAdapter(pool_connections=4, pool_maxsize=8)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if self.api_key:
                session.headers[HEADER_AUTHORIZATION] = f"{AUTH_SCHEME} {self.api_key}"
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _json(
        self, method: str, url: str, what: str, timeout: tuple[float, float], *, gone: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        try:
            response = self.session().request(method, url, timeout=timeout, **kw)
        except requests.RequestException as err:
            raise transient_from_exception(err, what) from err
        classify_response(response, what, gone_statuses=gone)
        try:
            body = response.json()
        except ValueError as err:
            msg = f"{what}: HTTP {response.status_code} with a body that is not JSON"
            raise TransientUploadError(msg, status=response.status_code) from err
        if not isinstance(body, dict):
            msg = f"{what}: HTTP {response.status_code} with unexpected JSON {str(body)[:100]}"
            raise TransientUploadError(msg, status=response.status_code)
        return body

    def init(self, request: InitRequest, timeout: float) -> dict[str, Any]:
        """A new (or resumed) upload; its reply's ``features`` say how this server's chunks are checked."""
        reply = self._json("POST", init_url(self.upload_url), "init", (timeout, timeout), gone=(), json=request)
        features = reply.get("features") or ()
        self.chunk_algorithm = ChunkAlgorithm.CRC32C if FEATURE_CHUNK_CRC32C in features else ChunkAlgorithm.SHA256
        return reply

    def status(self, upload_id: str, timeout: float) -> dict[str, Any]:
        url = upload_status_url(self.upload_url, upload_id)
        return self._json("GET", url, f"status {upload_id}", (timeout, timeout), gone=(404, 410))

    def abandon(self, upload_id: str, timeout: float) -> None:
        """Best-effort DELETE of an upload this client will not use; one it cannot delete expires by UPLOAD_TTL."""
        url = upload_status_url(self.upload_url, upload_id)
        with contextlib.suppress(UploadError):
            self._json("DELETE", url, f"abandon {upload_id}", (timeout, timeout), gone=(404, 410))

    def finalize(self, upload_id: str, timeout: float, *, sha256: str | None = None) -> dict[str, Any]:
        """Ask for verification and storage; ``sha256`` is the whole-file digest computed while sending."""
        url = finalize_url(self.upload_url, upload_id)
        body: FinalizeRequest | None = None if sha256 is None else {"sha256": sha256}
        return self._json("POST", url, f"finalize {upload_id}", (timeout, timeout), gone=(404, 410), json=body)

    def put_chunk(
        self,
        upload_id: str,
        index: int,
        data: bytes | bytearray | memoryview,
        *,
        connect_timeout: float,
        read_timeout: float,
        bucket: TokenBucket | None = None,
        on_piece: Callable[[int], None] | None = None,
        slot: ConnectionSlot | None = None,
        offset: int | None = None,
        chunk_checksum: ChunkChecksum | None = None,
    ) -> dict[str, Any]:
        """Send one chunk with its checksum; ``slot.abort()`` from another thread cuts it off.

        With ``offset``, ``data`` is the piece of the chunk starting there and ``chunk_checksum`` the
        checksum of the whole chunk (see HEADER_CHUNK_OFFSET). Both use ``chunk_algorithm``.
        """
        what = f"chunk {index} of {upload_id}"
        algorithm = self.chunk_algorithm if chunk_checksum is None else chunk_checksum.algorithm
        chunk = chunk_checksum or ChunkChecksum.of(algorithm, (data,))
        headers = {"Content-Type": CHUNK_CONTENT_TYPE, chunk.header: chunk.hexdigest}
        if offset is not None:
            what = f"piece at {offset} of {what}"
            piece = ChunkChecksum.of(algorithm, (data,))
            headers |= {HEADER_CHUNK_OFFSET: str(offset), piece.piece_header: piece.hexdigest}
        slot = slot or ConnectionSlot()
        # urllib3 sends the body under the connect timeout: that is what bounds one piece.
        body = ChunkBody(data, bucket=bucket, on_piece=on_piece, meter=self.pace.meter(slot.sample, connect_timeout))
        url = chunk_url(self.upload_url, upload_id, index)
        try:
            with tracked(slot):
                response = self.session().put(url, data=body, headers=headers, timeout=(connect_timeout, read_timeout))
        except (requests.RequestException, OSError) as err:
            self.pace.failed()
            if slot.aborted:
                msg = f"{what}: aborted by the watchdog ({type(err).__name__})"
                raise StalledTransferError(msg) from err
            if isinstance(err, requests.RequestException):
                raise transient_from_exception(err, what) from err
            msg = f"{what}: {err}"
            raise TransientUploadError(msg) from err
        if slot.aborted and response.status_code >= 400:
            msg = f"{what}: aborted by the watchdog"
            raise StalledTransferError(msg)
        classify_response(response, what, gone_statuses=(404, 410))
        try:
            reply = response.json()
        except ValueError:
            reply = {}
        return reply if isinstance(reply, dict) else {}
