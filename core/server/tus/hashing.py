"""The whole-file sha256 of tus uploads, computed as their offsets advance, and how its state survives a PATCH.

CPython's hashlib cannot export a hash's state, and the ``rehash`` package refuses OpenSSL 3. But
OpenSSL 3's libcrypto still exports the (deprecated) ``SHA256_Init/Update/Final`` over a plain
``SHA256_CTX`` struct (112 bytes on 64-bit Linux). ``ExportableSha256`` drives those through ctypes,
so the running hash is a byte string: the service stores it, tagged with ``STATE_FORMAT``, in the
same fenced transaction that advances the offset, and any worker, host or restarted process
continues it at exactly that offset. A state is only used when it validates: the same format
(struct size, byte order), ``md_len`` 32, and a bit count and block fill that say "exactly
``offset`` bytes". A state that does not (absent, another format) gives no running hash: the
upload completes without ``received_sha256`` and finalize re-reads the stored bytes. Where
libcrypto lacks the symbols or fails the self-test at load, hashes stay in the process that
received the bytes (hashlib, keyed by upload id and offset), with the same re-read fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys
import threading
from collections import OrderedDict
from typing import Any, Protocol

# Uploads in flight in one worker process; the least recently advanced beyond this fall back to a re-read.
MAX_TRACKED = 1024
SHA256_BYTES = 32
SHA256_BLOCK = 64


class RunningHash(Protocol):
    """What the PATCH path needs of a sha256 in progress: hashlib's and ``ExportableSha256`` both are."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> RunningHash: ...


class _Sha256Ctx(ctypes.Structure):
    """OpenSSL's ``SHA256_CTX`` (include/openssl/sha.h); SHA_LONG is a 32-bit unsigned int."""

    _fields_ = (
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint32),
        ("md_len", ctypes.c_uint32),
    )


STATE_FORMAT = f"openssl-sha256-ctx-v1/{ctypes.sizeof(_Sha256Ctx)}/{sys.byteorder}"


def _self_test(lib: ctypes.CDLL) -> bool:
    """The struct as declared works with this libcrypto: a split hash equals hashlib's, through an export."""
    sample = bytes(range(256)) * 3
    first = ExportableSha256(lib)
    first.update(sample[:77])
    resumed = ExportableSha256.resume(first.export(), STATE_FORMAT, 77, lib)
    if resumed is None:
        return False
    resumed.update(sample[77:])
    return resumed.hexdigest() == hashlib.sha256(sample).hexdigest()


def _load_libcrypto() -> ctypes.CDLL | None:
    """libcrypto with SHA256_Init/Update/Final that pass the self-test, or None (then states are not exported)."""
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_void_p], ctypes.c_int
    update.argtypes, update.restype = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int
    final.argtypes, final.restype = [ctypes.c_char_p, ctypes.c_void_p], ctypes.c_int
    return lib if _self_test(lib) else None


class ExportableSha256:
    """A sha256 whose state is bytes: continued by any process from what ``export`` gave, via libcrypto."""

    def __init__(self, lib: ctypes.CDLL, ctx: _Sha256Ctx | None = None) -> None:
        self._lib = lib
        if ctx is None:
            ctx = _Sha256Ctx()
            if lib.SHA256_Init(ctypes.byref(ctx)) != 1:
                msg = "SHA256_Init failed"
                raise RuntimeError(msg)
        self._ctx = ctx

    @classmethod
    def resume(cls, state: bytes, state_format: str, offset: int, lib: ctypes.CDLL) -> ExportableSha256 | None:
        """The hash of bytes [0, offset) from an exported state; None unless the state proves to be exactly that."""
        if state_format != STATE_FORMAT or len(state) != ctypes.sizeof(_Sha256Ctx):
            return None
        ctx = _Sha256Ctx.from_buffer_copy(state)
        bits = (ctx.Nh << 32) | ctx.Nl
        if ctx.md_len != SHA256_BYTES or ctx.num != offset % SHA256_BLOCK or bits != (offset * 8) % (1 << 64):
            return None
        return cls(lib, ctx)

    def update(self, data: bytes, /) -> None:
        """Hash ``data`` in place (no copy); ctypes releases the GIL for the call."""
        if data and self._lib.SHA256_Update(ctypes.byref(self._ctx), data, len(data)) != 1:
            msg = "SHA256_Update failed"
            raise RuntimeError(msg)

    def export(self) -> bytes:
        return ctypes.string_at(ctypes.addressof(self._ctx), ctypes.sizeof(self._ctx))

    def copy(self) -> ExportableSha256:
        return ExportableSha256(self._lib, _Sha256Ctx.from_buffer_copy(self.export()))

    def hexdigest(self) -> str:
        """The digest so far; the state itself goes on (SHA256_Final runs on a copy)."""
        ctx = self.copy()._ctx
        out = ctypes.create_string_buffer(SHA256_BYTES)
        if self._lib.SHA256_Final(out, ctypes.byref(ctx)) != 1:
            msg = "SHA256_Final failed"
            raise RuntimeError(msg)
        return out.raw.hex()


LIBCRYPTO = _load_libcrypto()


class StreamHashes:
    """The running hashes of tus uploads: exported states (in the tus row) where libcrypto allows, else in-process.

    With libcrypto, ``resume`` continues only the state the tus row holds at exactly the offset,
    so any worker or host continues it. Without, each process keeps its own hashlib objects keyed
    by (upload id, offset), bounded and thread-safe: a PATCH continues the hash only if this
    process received the bytes before it.
    """

    def __init__(self, limit: int = MAX_TRACKED, lib: ctypes.CDLL | None = LIBCRYPTO) -> None:
        self._limit = limit
        self._lib = lib
        self._lock = threading.Lock()
        self._states: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def start(self) -> RunningHash:
        return ExportableSha256(self._lib) if self._lib is not None else hashlib.sha256()

    def resume(self, upload_id: str, offset: int, stored: tuple[str, bytes] | None) -> RunningHash | None:
        """The hash of bytes [0, offset) (a new one at offset 0); None when no usable state exists.

        ``stored``: the (format, state) the tus row holds with this offset, if any.
        """
        if offset == 0:
            return self.start()
        if self._lib is not None:
            return None if stored is None else ExportableSha256.resume(stored[1], stored[0], offset, self._lib)
        with self._lock:
            state = self._states.get(upload_id)
            if state is None or state[0] != offset:
                return None
            return state[1].copy()

    @staticmethod
    def exported(running: RunningHash | None) -> tuple[str, bytes] | None:
        """(format, state) to store with the new offset; None for hashes that cannot be exported."""
        return (STATE_FORMAT, running.export()) if isinstance(running, ExportableSha256) else None

    def save(self, upload_id: str, offset: int, running: RunningHash) -> None:
        """Keep an in-process hash for the next PATCH (an exported one lives in the tus row instead)."""
        if isinstance(running, ExportableSha256):
            return
        with self._lock:
            self._states[upload_id] = (offset, running.copy())  # the caller goes on updating its own
            self._states.move_to_end(upload_id)
            while len(self._states) > self._limit:
                self._states.popitem(last=False)

    def forget(self, upload_id: str) -> None:
        with self._lock:
            self._states.pop(upload_id, None)
