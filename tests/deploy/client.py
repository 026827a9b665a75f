"""A minimal wire-protocol client for deployment tests: chunked, verified uploads with per-chunk retries.

Deliberately independent of ``core.network_manager``: these tests check the server
side of a deployment (nginx, gunicorn, Redis), with the protocol spelled out.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from core.protocol import (
    CHUNK_CONTENT_TYPE,
    HEADER_CHUNK_SHA256,
    MiB,
    UploadState,
    chunk_count,
    chunk_length,
    chunk_url,
    download_url,
    finalize_url,
    init_url,
    upload_status_url,
)


@dataclass
class SourceFile:
    path: Path
    size: int
    md5: str
    sha256: str


def write_source(path: Path, size: int, *, compressible: bool = False) -> SourceFile:
    """A test file written in 1 MiB blocks (random, or repetitive text that compresses well)."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    seed = hashlib.sha256(path.name.encode()).digest()
    with path.open("wb") as out:
        written, n = 0, 0
        while written < size:
            if compressible:
                block = (f"imu {n} ax=0.01 ay=0.02 az=9.81\n".encode() * 40000)[: min(MiB, size - written)]
            else:
                block = hashlib.shake_256(seed + n.to_bytes(8, "big")).digest(min(MiB, size - written))
            out.write(block)
            md5.update(block)
            sha.update(block)
            written += len(block)
            n += 1
    return SourceFile(path, size, md5.hexdigest(), sha.hexdigest())


def read_chunk(source: SourceFile, chunk_size: int, index: int) -> bytes:
    with source.path.open("rb") as f:
        f.seek(index * chunk_size)
        return f.read(chunk_length(source.size, chunk_size, index))


@dataclass
class UploadClient:
    """Talks to ``base_url`` (nginx or gunicorn); ``retries`` re-sends a chunk after a 5xx or a dropped connection."""

    base_url: str
    verify: bool | str = True
    retries: int = 5
    session: requests.Session = field(default_factory=requests.Session)
    retry_log: list[str] = field(default_factory=list)

    @property
    def upload_url(self) -> str:
        return self.base_url + "/upload"

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One call, re-sent after a dropped connection, a 5xx or a 429 (after its Retry-After, at most 2 s)."""
        kwargs.setdefault("timeout", (5, 120))
        for attempt in range(self.retries + 1):
            try:
                reply = self.session.request(method, url, verify=self.verify, **kwargs)
            except requests.ConnectionError as err:
                self.retry_log.append(f"{method} {url} attempt {attempt}: {type(err).__name__}")
                time.sleep(0.2)
                continue
            if reply.status_code < 500 and reply.status_code != 429:
                return reply
            self.retry_log.append(f"{method} {url} attempt {attempt}: HTTP {reply.status_code}")
            time.sleep(min(2.0, float(reply.headers.get("Retry-After", "0.2"))))
        msg = f"{method} {url} failed after {self.retries} retries: {self.retry_log[-3:]}"
        raise AssertionError(msg)

    def init(self, source: SourceFile, chunk_size: int, *, compression: bool = False) -> dict[str, Any]:
        body = {
            "filename": source.path.name,
            "filesize": source.size,
            "chunks": chunk_count(source.size, chunk_size),
            "checksum": source.md5,
            "sha256": source.sha256,
            "chunk_size": chunk_size,
            "compression": compression,
        }
        reply = self.request("POST", init_url(self.upload_url), json=body)
        assert reply.status_code in (200, 201), reply.text
        return dict(reply.json())

    def put_chunk(self, upload_id: str, index: int, data: bytes) -> requests.Response:
        headers = {HEADER_CHUNK_SHA256: hashlib.sha256(data).hexdigest(), "Content-Type": CHUNK_CONTENT_TYPE}
        reply = self.request("PUT", chunk_url(self.upload_url, upload_id, index), data=data, headers=headers)
        assert reply.status_code in (200, 201), reply.text
        return reply

    def upload(
        self,
        source: SourceFile,
        chunk_size: int = 8 * MiB,
        *,
        compression: bool = False,
        order: Iterable[int] | None = None,
        after_chunk: Callable[[int], None] | None = None,
    ) -> str:
        upload_id = str(self.init(source, chunk_size, compression=compression)["upload_id"])
        for index in order if order is not None else range(chunk_count(source.size, chunk_size)):
            self.put_chunk(upload_id, index, read_chunk(source, chunk_size, index))
            if after_chunk is not None:
                after_chunk(index)
        return upload_id

    def finalize(self, upload_id: str, timeout: float = 120.0) -> dict[str, Any]:
        reply = self.request("POST", finalize_url(self.upload_url, upload_id))
        assert reply.status_code in (200, 202), reply.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(upload_id)
            if status["state"] in (UploadState.COMPLETE.value, UploadState.FAILED.value):
                assert status["state"] == UploadState.COMPLETE.value, status
                return status
            time.sleep(0.2)
        msg = f"upload {upload_id} not complete after {timeout}s"
        raise AssertionError(msg)

    def status(self, upload_id: str) -> dict[str, Any]:
        reply = self.request("GET", upload_status_url(self.upload_url, upload_id))
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def downloaded_sha256(self, upload_id: str) -> str:
        digest = hashlib.sha256()
        url = download_url(self.upload_url, upload_id)
        with self.session.get(url, verify=self.verify, stream=True, timeout=(5, 120)) as reply:
            assert reply.status_code == 200, reply.text
            for block in reply.iter_content(MiB):
                digest.update(block)
        return digest.hexdigest()


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` parsed with prometheus_client's own parser: sample name{labels} → value."""
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
