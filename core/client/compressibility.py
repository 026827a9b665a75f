"""Decide whether asking the server to compress a bag is worth it, from a few samples of the file.

MCAP bags with zstd chunks, images and point clouds often do not shrink;
compressing them costs server CPU (~190 MB/s at zstd level 3) for nothing.
"""

from __future__ import annotations

from pathlib import Path

import zstandard

SAMPLE_SIZE = 256 * 1024
SAMPLES = 4
# Below this ratio (compressed / original) compression is worth its CPU.
WORTHWHILE_RATIO = 0.9


def sample_ratio(path: Path, size: int) -> float:
    """Compressed/original size of up to SAMPLES pieces spread over the file (zstd level 1, fast)."""
    if size <= 0:
        return 1.0
    compressor = zstandard.ZstdCompressor(level=1)
    offsets = sorted({min(size - 1, (size * i) // SAMPLES) for i in range(SAMPLES)})
    original = compressed = 0
    with path.open("rb") as fh:
        for offset in offsets:
            fh.seek(offset)
            data = fh.read(SAMPLE_SIZE)
            original += len(data)
            compressed += len(compressor.compress(data))
    return compressed / original if original else 1.0


def worth_compressing(path: Path, size: int) -> bool:
    return sample_ratio(path, size) < WORTHWHILE_RATIO
