"""Signed download links: no key, short-lived, unforgeable; Range replies an MCAP reader can seek with; CORS."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from mcap.reader import make_reader

from core.server.catalog import bag_id_of
from core.server.signed_links import signed_path
from tests.helpers.bags import FLOAT, STRING, write_bag
from tests.server.test_bag_catalog import upload_bag
from tests.server.uploads import Upload

FOXGLOVE = "https://app.foxglove.dev"


@pytest.fixture
def bag(tmp_path: Path, new_upload: Callable[..., Upload], jobs: Any) -> Path:
    path = write_bag(tmp_path / "run_0", {"/chatter": (STRING, 50), "/imu/data": (FLOAT, 50)}, start_ns=10**18)
    upload_bag(new_upload, jobs, path)
    return path


def links(client: FlaskClient) -> dict[str, Any]:
    response = client.post(f"/bags/{bag_id_of('anonymous', 'run_0')}/links")
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def mcap_link(client: FlaskClient) -> str:
    return next(f["url"] for f in links(client)["files"] if f["filename"].endswith(".mcap"))


def local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_links_expire_after_the_configured_ttl_and_carry_no_key(client: FlaskClient, bag: Path) -> None:
    body = links(client)

    assert body["expires"] == pytest.approx(time.time() + 900, abs=5)
    mcap = next(f for f in body["files"] if f["filename"].endswith(".mcap"))
    assert "key" not in mcap["url"].lower()
    query = parse_qs(urlsplit(mcap["foxglove"]).query)
    assert mcap["foxglove"].startswith(FOXGLOVE + "/~/view?")
    assert query == {"ds": ["remote-file"], "ds.url": [mcap["url"]]}
    assert all("foxglove" not in f for f in body["files"] if f["filename"] == "metadata.yaml")


def test_a_signed_link_downloads_without_a_key(make_app: Callable[..., Flask], bag: Path, client: FlaskClient) -> None:
    url = mcap_link(client)
    keyed = make_app(auth_enabled=True).test_client()  # same storage root, keys required

    response = keyed.get(local(url))

    assert response.status_code == 200
    assert response.data == (bag / "run_0.mcap").read_bytes()
    assert response.headers["Accept-Ranges"] == "bytes"
    assert keyed.get(f"/uploads/{urlsplit(url).path.rsplit('/', 1)[1]}/file").status_code == 401


@pytest.mark.parametrize(
    "tamper",
    [
        lambda q: q.replace("signature=", "signature=0"),
        lambda q: q.replace("expires=", "expires=9"),
        lambda q: q.split("&")[0],
        lambda q: "expires=x&signature=y",
        lambda q: q.split("signature=")[0] + "signature=%F1%9E%84%B9",  # not ASCII
    ],
)
def test_a_tampered_link_is_refused(client: FlaskClient, bag: Path, tamper: Callable[[str], str]) -> None:
    path, query = local(mcap_link(client)).split("?")

    response = client.get(f"{path}?{tamper(query)}")

    assert response.status_code == 403
    assert "not valid" in response.get_json()["error"]["message"]


def test_an_expired_link_is_refused(app: Flask, client: FlaskClient, bag: Path) -> None:
    upload_id = urlsplit(mcap_link(client)).path.rsplit("/", 1)[1]
    expired = signed_path(str(app.secret_key), upload_id, int(time.time()) - 1)

    response = client.get(expired)

    assert response.status_code == 403
    assert "expired" in response.get_json()["error"]["message"]


def test_range_requests_get_206_with_content_range(client: FlaskClient, bag: Path) -> None:
    url = local(mcap_link(client))
    data = (bag / "run_0.mcap").read_bytes()

    head = client.get(url, headers={"Range": "bytes=0-7"})
    tail = client.get(url, headers={"Range": "bytes=-16"})
    beyond = client.get(url, headers={"Range": f"bytes={len(data)}-"})

    assert head.status_code == 206
    assert head.data == data[:8]
    assert head.headers["Content-Range"] == f"bytes 0-7/{len(data)}"
    assert tail.data == data[-16:]
    assert head.headers["ETag"] == tail.headers["ETag"]
    assert beyond.status_code == 416


def test_an_if_range_for_another_version_gets_the_whole_file(client: FlaskClient, bag: Path) -> None:
    response = client.get(local(mcap_link(client)), headers={"Range": "bytes=0-7", "If-Range": '"other"'})

    assert response.status_code == 200
    assert len(response.data) == (bag / "run_0.mcap").stat().st_size


class RangeFile:
    """A seekable file over HTTP Range requests, as a browser MCAP reader reads one."""

    def __init__(self, client: FlaskClient, url: str, size: int) -> None:
        self.client, self.url, self.size, self.pos, self.requests = client, url, size, 0, 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        stop = self.size if n < 0 else min(self.size, self.pos + n)
        if stop <= self.pos:
            return b""
        self.requests += 1
        reply = self.client.get(self.url, headers={"Range": f"bytes={self.pos}-{stop - 1}"})
        assert reply.status_code == 206
        self.pos = stop
        return reply.data


def test_an_mcap_reader_reads_the_summary_through_ranges(client: FlaskClient, bag: Path) -> None:
    size = (bag / "run_0.mcap").stat().st_size
    remote = RangeFile(client, local(mcap_link(client)), size)

    summary = make_reader(remote).get_summary()  # type: ignore[arg-type]

    assert summary is not None
    assert summary.statistics is not None
    assert summary.statistics.message_count == 100
    assert sorted(c.topic for c in summary.channels.values()) == ["/chatter", "/imu/data"]


def test_the_configured_origin_may_read_signed_downloads(client: FlaskClient, bag: Path) -> None:
    url = local(mcap_link(client))

    allowed = client.get(url, headers={"Origin": FOXGLOVE, "Range": "bytes=0-1"})
    other = client.get(url, headers={"Origin": "https://evil.example"})

    assert allowed.headers["Access-Control-Allow-Origin"] == FOXGLOVE
    assert "Content-Range" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Origin" not in other.headers


def test_the_download_origin_is_configurable(make_app: Callable[..., Flask], bag: Path, client: FlaskClient) -> None:
    url = local(mcap_link(client))
    custom = make_app(download_cors_origins=("https://viewer.example",)).test_client()

    assert custom.get(url, headers={"Origin": "https://viewer.example"}).headers["Access-Control-Allow-Origin"] == (
        "https://viewer.example"
    )
    assert "Access-Control-Allow-Origin" not in custom.get(url, headers={"Origin": FOXGLOVE}).headers


def test_keyed_file_downloads_answer_ranges_too(client: FlaskClient, bag: Path) -> None:
    upload_id = urlsplit(mcap_link(client)).path.rsplit("/", 1)[1]
    data = (bag / "run_0.mcap").read_bytes()

    response = client.get(f"/uploads/{upload_id}/file", headers={"Range": "bytes=8-15"})

    assert response.status_code == 206
    assert response.data == data[8:16]
    assert response.headers["Content-Disposition"].startswith("attachment;")


def test_a_compressed_file_answers_a_range_of_its_original_bytes(
    new_upload: Callable[..., Upload], jobs: Any, client: FlaskClient
) -> None:
    data = b"compressible " * 4096
    upload = new_upload(data, filename="notes.txt")
    upload.init(compression="zstd")
    upload.send_all()
    upload.finalize()
    assert jobs.run_once()
    assert upload.status()["codec"] == "zstd"

    response = client.get(f"/uploads/{upload.upload_id}/file", headers={"Range": "bytes=13-25"})

    assert response.status_code == 206
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Range"] == f"bytes 13-25/{len(data)}"
    assert response.data == data[13:26]
