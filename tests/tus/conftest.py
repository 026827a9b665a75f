"""Fixtures for the tus front: test apps on every state store and blob store the server supports."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from tests.helpers.seaweedfs import SeaweedFS
from tests.server.conftest import clock, make_app  # noqa: F401 - fixtures reused by this package
from tests.tus.client import TusUpload

# Small native chunks make every PATCH cross chunk boundaries; the protocol does not depend on the size.
CHUNK = 1024

BACKENDS = (
    pytest.param(("sqlite", "local"), id="sqlite-local"),
    pytest.param(("postgresql", "local"), id="postgresql-local", marks=pytest.mark.postgres),
    pytest.param(("sqlite", "s3"), id="sqlite-s3"),
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every backend, or only the blob stores a test names with ``@pytest.mark.blob_stores(...)``.

    A behaviour that exists on one store only is not collected on the other (rather than skipped there).
    """
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("blob_stores")
    stores = marker.args if marker else ("local", "s3")
    metafunc.parametrize("backend", [p for p in BACKENDS if p.values[0][1] in stores], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    return tuple(request.param)  # type: ignore[return-value]


@pytest.fixture
def build(
    backend: tuple[str, str],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    make_app: Callable[..., Flask],  # noqa: F811 - the fixture imported above
) -> Callable[..., Flask]:
    """Build apps on this backend (two calls: the server restarted on the same stores)."""
    engine, blobs = backend
    settings: dict[str, object] = {"default_chunk_size": CHUNK}
    if engine == "postgresql":
        settings["state_store_uri"] = request.getfixturevalue("postgres").create_database()
    if blobs == "s3":
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        for name, value in seaweedfs.env().items():
            monkeypatch.setenv(name, value)
        settings["blob_store_uri"] = f"s3://{seaweedfs.new_bucket()}/server"

    def start(**overrides: object) -> Flask:
        return make_app(**{**settings, **overrides})

    return start


@pytest.fixture
def app(build: Callable[..., Flask]) -> Flask:
    return build()


@pytest.fixture
def on_s3(backend: tuple[str, str]) -> bool:
    return backend[1] == "s3"


@pytest.fixture
def new_upload(app: Flask) -> Callable[[bytes], TusUpload]:
    def make(data: bytes) -> TusUpload:
        return TusUpload(app.test_client(), data)

    return make
