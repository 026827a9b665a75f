"""Stored-file codecs: zstd (default) and gzip, streamed; incompressible data is detected on a sample first.

Both produce standard single-frame files (``zstd -d`` / ``gunzip`` read them),
so an operator never needs this code to get a bag back.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import zstandard

from core.checksums import READ_SIZE
from core.protocol import Codec, MiB

# Enough to see past a bag's header into its message data, small enough to cost a few ms.
SAMPLE_SIZE = 1 * MiB
# With zstd worker threads, wait for them after this much input: bounds the work any one write() waits for.
THREADED_FLUSH_EVERY = 1 * MiB


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def clamp_level(codec: Codec, level: int) -> int:
    low, high = (1, 9) if codec is Codec.GZIP else (1, 22)
    return max(low, min(high, level))


def compressed_size(codec: Codec, level: int, sample: bytes) -> int:
    if codec is Codec.GZIP:
        return len(zlib.compress(sample, clamp_level(codec, level)))
    return len(zstandard.ZstdCompressor(level=clamp_level(codec, level)).compress(sample))


def worth_compressing(codec: Codec, level: int, sample: bytes, min_saving: float) -> bool:
    """Compressing pays only if the sample shrinks by at least ``min_saving`` (bags of images or zstd chunks don't).

    The sample is compressed at a fast level (at most 3): higher levels gain little on data that does not
    compress at all, and a slow probe would hold up the finalize job.
    """
    if codec is Codec.NONE or not sample:
        return False
    return compressed_size(codec, min(level, 3), sample) <= len(sample) * (1.0 - min_saving)


class _ZstdWriter:
    def __init__(self, fh: IO[bytes], level: int, size: int, threads: int) -> None:
        # threads >= 1 moves compression to zstd's own worker threads, off the GIL-holding hash loop.
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=threads)
        self._writer = compressor.stream_writer(fh, size=size, closefd=False)
        self._threaded = threads != 0
        self._unflushed = 0

    def write(self, data: bytes, /) -> int:
        written = int(self._writer.write(data))
        self._unflushed += len(data)
        if self._threaded and self._unflushed >= THREADED_FLUSH_EVERY:
            # Worker threads accept input far ahead of their output (a whole small file at high levels), and
            # close() would then do all the work in one call without progress reports or lease renewals.
            self._writer.flush(zstandard.FLUSH_BLOCK)
            self._unflushed = 0
        return written

    def close(self) -> None:
        self._writer.flush(zstandard.FLUSH_FRAME)
        self._writer.close()


def open_writer(codec: Codec, fh: IO[bytes], *, level: int, size: int, threads: int = 0) -> Writer:
    """A writer compressing into ``fh`` (left open); ``size`` goes into the zstd frame header.

    ``threads`` is zstd's worker count (0: compress on the calling thread); gzip has none and ignores it.
    """
    if codec is Codec.ZSTD:
        return _ZstdWriter(fh, clamp_level(codec, level), size, threads)
    if codec is Codec.GZIP:
        # mtime=0: the same input gives the same bytes, so stored files are reproducible.
        return gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=clamp_level(codec, level), mtime=0)
    msg = f"no writer for codec {codec.value}"
    raise ValueError(msg)


def iter_decompressed(source: Path | IO[bytes], codec: Codec) -> Iterator[bytes]:
    """The original bytes of a stored file (a path, or a stream from a blob store), READ_SIZE at a time."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        if codec is Codec.ZSTD:
            stream: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
        elif codec is Codec.GZIP:
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            stream = raw
        if stream is not raw:
            stack.callback(stream.close)  # the decoder; ``raw`` belongs to whoever opened it
        while piece := stream.read(READ_SIZE):
            yield piece
