"""Stored files: zstd or gzip readable by the standard CLI tools, incompressible and small files stored as is."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import zstandard

from core.checksums import READ_SIZE
from core.config import ConfigError, ServerConfig
from core.protocol import Codec, MiB
from core.server.compression import THREADED_FLUSH_EVERY, open_writer
from tests.server.conftest import CHUNK
from tests.server.uploads import Upload

CLI = {"zstd": ["zstd", "-d", "-c"], "gzip": ["gzip", "-d", "-c"]}


def compressible(size: int) -> bytes:
    """Robot-like data: repetitive records with some noise."""
    record = b"header:stamp=%08d;frame=base_link;" + os.urandom(8) + b"\x00" * 40
    return (record * (size // len(record) + 1))[:size]


def finish(upload: Any, jobs: Any, **init: Any) -> dict[str, Any]:
    upload.init(**init)
    upload.send_all()
    assert upload.finalize().status_code == 202
    assert jobs.run_once()
    status: dict[str, Any] = upload.status()
    assert status["state"] == "complete", status
    return status


def stored_file(upload_dir: Path, upload_id: str) -> Path:
    (path,) = [p for p in (upload_dir / "store").rglob(f"{upload_id}*") if p.suffix != ".json"]
    return path


@pytest.mark.parametrize(("codec", "suffix"), [("zstd", ".zst"), ("gzip", ".gz")])
def test_compressed_file_decompresses_with_the_standard_cli(
    new_upload: Any, jobs: Any, upload_dir: Path, tmp_path: Path, codec: str, suffix: str
) -> None:
    assert shutil.which(CLI[codec][0]), f"{CLI[codec][0]} CLI is required (make system-deps)"
    data = compressible(20 * CHUNK + 123)
    upload = new_upload(data)

    status = finish(upload, jobs, compression=codec)

    assert status["codec"] == codec
    assert status["stored_size"] < len(data) / 2
    assert status["compression_ratio"] > 2
    path = stored_file(upload_dir, upload.upload_id)
    assert path.suffix == suffix
    out = subprocess.run([*CLI[codec], str(path)], check=True, capture_output=True).stdout
    assert out == data
    assert upload.download().data == data
    assert upload.download(raw=True).data == path.read_bytes()


def test_incompressible_data_is_stored_as_is_and_the_reply_says_so(
    new_upload: Any, jobs: Any, upload_dir: Path
) -> None:
    data = os.urandom(20 * CHUNK)
    upload = new_upload(data)

    status = finish(upload, jobs, compression=True)

    assert status["compression"] == "zstd"
    assert status["codec"] == "none"
    assert status["stored_size"] == len(data)
    assert stored_file(upload_dir, upload.upload_id).read_bytes() == data


def test_file_below_threshold_is_not_compressed(make_app: Any, jobs: Any) -> None:
    from tests.server.uploads import Upload

    app = make_app(compression_threshold=1_000_000)
    upload = Upload(app.test_client(), compressible(4 * CHUNK), CHUNK)

    status = finish(upload, app.extensions["job_runner"], compression=True)

    assert status["codec"] == "none"


def test_seed_compression_log_line(new_upload: Any, jobs: Any, caplog: pytest.LogCaptureFixture) -> None:
    data = compressible(8 * CHUNK)
    upload = new_upload(data)

    status = finish(upload, jobs, compression=True)

    reduction = 100 * (1 - status["stored_size"] / len(data))
    expected = f"Compressed test.bag: {len(data)} → {status['stored_size']} bytes ({reduction:.1f}% reduction)"
    assert expected in caplog.text


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_zstd_with_worker_threads_still_writes_one_standard_frame(tmp_path: Path, threads: int) -> None:
    data = compressible(3 * MiB + 123)
    path = tmp_path / "stored.zst"
    with path.open("wb") as fh:
        writer = open_writer(Codec.ZSTD, fh, level=1, size=len(data), threads=threads)
        for offset in range(0, len(data), READ_SIZE):
            writer.write(data[offset : offset + READ_SIZE])
        writer.close()

    assert zstandard.get_frame_parameters(path.read_bytes()).content_size == len(data)
    assert subprocess.run([*CLI["zstd"], str(path)], check=True, capture_output=True).stdout == data


def test_finalize_compresses_with_the_configured_threads(
    make_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    real = zstandard.ZstdCompressor

    def recording(*args: Any, threads: int = 0, **kwargs: Any) -> zstandard.ZstdCompressor:
        opened.append(threads)
        return real(*args, threads=threads, **kwargs)

    monkeypatch.setattr(zstandard, "ZstdCompressor", recording)
    app = make_app(compression_threads=2)
    upload = Upload(app.test_client(), compressible(12 * CHUNK), CHUNK)

    finish(upload, app.extensions["job_runner"], compression="zstd")

    assert 2 in opened


def test_compression_threads_below_minus_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="COMPRESSION_THREADS"):
        ServerConfig.from_env({"COMPRESSION_THREADS": "-2"})


def test_zstd_worker_threads_compress_during_writes_not_all_at_close() -> None:
    """Finalize reports progress (and renews its lease) between writes: close() must not hold all the work."""
    sink = io.BytesIO()
    data = compressible(THREADED_FLUSH_EVERY + 1)
    writer = open_writer(Codec.ZSTD, sink, level=19, size=2 * len(data), threads=1)

    writer.write(data)

    assert sink.tell() > 0
    writer.write(data)
    writer.close()
    assert zstandard.ZstdDecompressor().decompress(sink.getvalue()) == data + data
