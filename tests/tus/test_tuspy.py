"""tuspy (the PyPI tus client) against a real gunicorn, alone and behind nginx: resume, 460, verified storage."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from tusclient import client as tus
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from tests.tus.deployments import Deployment, deploy

pytestmark = [pytest.mark.gunicorn]

SIZE = 3 * 1024 * 1024 + 123


@pytest.fixture(scope="module", params=["gunicorn", pytest.param("nginx", marks=pytest.mark.nginx)])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(request.param, tmp_path_factory.mktemp(f"tuspy-{request.param}")) as running:
        yield running


@pytest.fixture
def bag(tmp_path: Path, deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Path:
    deployment.reset_faults()
    if deployment.ca is not None:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(deployment.ca))  # tuspy calls requests without a session
    path = tmp_path / "run_1.mcap"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def stream(bag: Path) -> Iterator[BinaryIO]:
    """The bag opened once: tuspy leaves a file it opened itself unclosed when an upload fails."""
    with bag.open("rb") as opened:
        yield opened


def uploader(deployment: Deployment, stream: BinaryIO, **options: object) -> tus.Uploader:
    client = tus.TusClient(deployment.endpoint, headers=deployment.auth)
    stream.seek(0)
    sha256 = hashlib.sha256(stream.read()).hexdigest()
    meta = {"filename": Path(stream.name).name, "sha256": sha256}
    return client.uploader(file_stream=stream, metadata=meta, **options)


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def test_an_interrupted_upload_resumes_from_the_servers_offset(
    deployment: Deployment, bag: Path, stream: BinaryIO
) -> None:
    deployment.cut_after(SIZE // 2)
    first = uploader(deployment, stream)  # one PATCH of the whole file, tuspy's default
    with pytest.raises((TusCommunicationError, TusUploadFailed)):
        first.upload()
    assert first.url is not None
    deployment.reset_faults()
    deployment.wait_patch_ended(upload_id(first.url))

    # What a new process does with the stored URL: tuspy's constructor asks the server (HEAD) for the offset.
    resumed = uploader(deployment, stream, url=first.url)
    assert 0 < resumed.offset < SIZE
    resumed.upload()

    status = deployment.wait_stored(upload_id(first.url))
    assert (status["state"], status["verified"], status["filename"]) == ("complete", True, bag.name)
    assert deployment.stored_sha256(upload_id(first.url)) == hashlib.sha256(bag.read_bytes()).hexdigest()


def test_a_body_corrupted_on_the_way_is_refused_with_460_and_stores_nothing(
    deployment: Deployment, stream: BinaryIO
) -> None:
    deployment.flip.flip_after(64 * 1024)  # inside the first PATCH body, after the headers
    first = uploader(deployment, stream, upload_checksum=True, chunk_size=1024 * 1024)

    with pytest.raises(TusUploadFailed) as refused:
        first.upload()

    assert refused.value.status_code == 460
    assert deployment.flip.flips == 1
    assert first.get_offset() == 0
    retried = uploader(deployment, stream, url=first.url, upload_checksum=True, chunk_size=1024 * 1024)
    retried.upload()
    status = deployment.wait_stored(upload_id(first.url))
    assert (status["state"], status["verified"]) == ("complete", True)


def test_checksummed_patches_of_any_size_store_the_file_verified(deployment: Deployment, stream: BinaryIO) -> None:
    upload = uploader(deployment, stream, upload_checksum=True, chunk_size=700 * 1024)  # not a multiple of 256 KiB
    upload.upload()
    status = deployment.wait_stored(upload_id(upload.url))
    assert (status["state"], status["verified"]) == ("complete", True)


def test_patches_on_new_connections_to_any_worker_keep_the_in_order_sha256(
    deployment: Deployment, stream: BinaryIO
) -> None:
    """tuspy opens a connection per PATCH (any of the gunicorn workers): the hash state travels in the tus row."""
    client = uploader(deployment, stream, chunk_size=256 * 1024)
    client.upload()

    status = deployment.wait_stored(upload_id(client.url))
    assert (status["state"], status["verified"]) == ("complete", True)
    assert (
        f"Finalize of {upload_id(client.url)}: sha256 computed as the bytes arrived, not re-read"
        in deployment.app.log()
    )
