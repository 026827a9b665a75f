"""Hostile input against a real gunicorn: 4xx JSON for every malformed request, and no write outside UPLOAD_DIR."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from core.protocol import MiB
from tests.helpers.processes import wait_until
from tests.helpers.servers import GunicornServer

pytestmark = pytest.mark.gunicorn

MARKER = "pwn3d-7f3a"
# Names a client might send to escape the storage root, confuse a filesystem or a log reader.
HOSTILE_FILENAMES = [
    f"../../{MARKER}.bag",
    f"../../../../../../tmp/{MARKER}-abs.bag",
    f"/tmp/{MARKER}-absolute.bag",
    f"..\\..\\{MARKER}-win.bag",
    f"C:\\Windows\\{MARKER}.bag",
    f"uploads/../../{MARKER}-nested.bag",
    f"{MARKER}\x00.bag",
    f"\x00../../{MARKER}-nul.bag",
    f"{MARKER}\n.bag",
    f"{MARKER}\r\nSet-Cookie: x=1.bag",
    f"‮gab.{MARKER}",  # right-to-left override
    f"{MARKER}\u2215..\u2215escape.bag",  # division slash looks like '/'
    f"{MARKER}\uff0e\uff0e\uff0fwide.bag",  # fullwidth ../
    f"{MARKER}\u0000\u202e.bag",
    f"{MARKER}" + "A" * 5000 + ".bag",
    "CON",
    "NUL.bag",
    "COM1.txt",
    "LPT9",
    "aux.bag",
    ".",
    "..",
    "",
    "/",
    "~/.ssh/authorized_keys",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "....//....//etc//passwd",
    f".{MARKER}-hidden.bag",
    f"{MARKER} .bag ",
    f"{MARKER}:stream.bag",
]


def tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root`` except inside ``skip``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for name in filenames + dirnames:
            path = Path(dirpath) / name
            if path == skip:
                continue
            stat = path.lstat()
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> GunicornServer:
    # UPLOAD_DIR two levels below a directory the test watches: an escape of up to two `..` lands in it.
    watched = tmp_path_factory.mktemp("watched")
    with GunicornServer(watched / "srv" / "uploads", workers=2, auth=True, log_dir=watched.parent) as live:
        yield live


def _complete(server: GunicornServer, upload_id: str) -> dict[str, object]:
    url = f"{server.url}/upload/{upload_id}"
    status: dict[str, object] = {}

    def done() -> bool:
        status.update(requests.get(url, headers=server.headers(), timeout=10).json())
        return status["state"] in {"complete", "failed"}

    wait_until(done, 30, 0.1, f"upload {upload_id} to finish")
    return status


def test_hostile_filenames_never_write_outside_the_storage_root(server: GunicornServer) -> None:
    watched = server.upload_dir.parents[1]
    before = tree(watched, server.upload_dir)
    outcomes = {}

    for number, name in enumerate(HOSTILE_FILENAMES):
        content = f"bag {number} {MARKER}\n".encode() * 50
        init = requests.post(
            f"{server.url}/upload/init",
            json={"filename": name, "filesize": len(content), "sha256": hashlib.sha256(content).hexdigest()},
            headers=server.headers(),
            timeout=10,
        )
        if init.status_code >= 400:
            assert init.status_code < 500
            assert init.json()["success"] is False
            outcomes[name] = init.json()["error"]["code"]
            continue
        upload_id = init.json()["upload_id"]
        base = f"{server.url}/upload/{upload_id}"
        assert requests.put(f"{base}/chunk/0", data=content, headers=server.headers(), timeout=10).status_code == 201
        assert requests.post(f"{base}/finalize", headers=server.headers(), timeout=10).status_code == 202
        status = _complete(server, upload_id)
        assert status["state"] == "complete", status
        download = requests.get(f"{server.url}/uploads/{upload_id}/file", headers=server.headers(), timeout=10)
        assert download.content == content
        assert "\n" not in download.headers["Content-Disposition"]
        outcomes[name] = "stored"

    assert tree(watched, server.upload_dir) == before
    assert not list(Path("/tmp").glob(f"{MARKER}*"))
    assert not list(server.upload_dir.parent.parent.parent.glob(f"*{MARKER}*"))
    # Inside the root too, client names never become paths: blobs are named by server-made ids.
    assert not [p for p in server.upload_dir.rglob("*") if MARKER in p.name]
    assert "stored" in outcomes.values()  # the corpus really exercised the storage path
    assert "Traceback" not in server.log()


BAD_BODIES = [
    pytest.param(b"{", "application/json", id="truncated-json"),
    pytest.param(b"not json at all", "application/json", id="not-json"),
    pytest.param(b"[]", "application/json", id="json-array"),
    pytest.param(b'"string"', "application/json", id="json-string"),
    pytest.param(b"null", "application/json", id="json-null"),
    pytest.param(b"\xff\xfe\x00garbage", "application/json", id="binary"),
    pytest.param(b'{"filename": 1, "filesize": "big"}', "application/json", id="wrong-types"),
    pytest.param(b'{"filename": "a", "filesize": 1e400}', "application/json", id="huge-float"),
    pytest.param(b'{"filename": "a", "filesize": ' + b"9" * 5000 + b"}", "application/json", id="huge-int"),
    pytest.param(b'{"filename": "a", "filesize": -1}', "application/json", id="negative-size"),
    pytest.param(b'{"filename": "a", "filesize": 10, "chunks": 0}', "application/json", id="zero-chunks"),
    pytest.param(b'{"filename": "a", "filesize": 10, "checksum": "xyz"}', "application/json", id="bad-md5"),
    pytest.param(b'{"filename": "a", "filesize": 10, "metadata": [1]}', "application/json", id="bad-metadata"),
    pytest.param(b'{"filename": "a", "filesize": 10, "compression": "lzma"}', "application/json", id="bad-codec"),
    pytest.param(b"[" * 100000 + b"]" * 100000, "application/json", id="deep-nesting"),
    pytest.param(b"[" * 10_000, "application/json", id="deep-nesting-under-the-size-limit"),
    pytest.param(b"x" * (128 * 1024), "application/json", id="over-json-limit"),
    pytest.param(b"filename=a&filesize=1", "application/x-www-form-urlencoded", id="form"),
]


@pytest.mark.parametrize(("body", "content_type"), BAD_BODIES)
def test_bad_init_bodies_are_4xx_json(server: GunicornServer, body: bytes, content_type: str) -> None:
    reply = requests.post(
        f"{server.url}/upload/init", data=body, headers=server.headers(**{"Content-Type": content_type}), timeout=10
    )

    assert 400 <= reply.status_code < 500, reply.text
    assert reply.json()["success"] is False
    assert reply.json()["error"]["code"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        pytest.param("PUT", "/upload/{id}/chunk/-1", {"data": b"x"}, id="negative-index"),
        pytest.param("PUT", "/upload/{id}/chunk/99999999999999999999", {"data": b"x"}, id="huge-index"),
        pytest.param("PUT", "/upload/{id}/chunk/5", {"data": b"x"}, id="index-out-of-range"),
        pytest.param("PUT", "/upload/{id}/chunk/0", {"data": b"x" * 10}, id="wrong-size"),
        pytest.param("PUT", "/upload/{id}/chunk/0", {"data": b"x", "headers": {"X-Chunk-SHA256": "zz"}}, id="bad-sha"),
        pytest.param("PUT", "/upload/{id}/chunk/0", {"data": b"x", "headers": {"Content-MD5": "%%%"}}, id="bad-md5"),
        pytest.param("PUT", "/upload/{id}/chunk/abc", {"data": b"x"}, id="non-int-index"),
        pytest.param("PUT", "/upload/{id}/chunk/abc", {"data": b"x" * (100 * 1024)}, id="non-int-index-big-body"),
        pytest.param("PUT", "/upload/{id}/chunk/0", {"data": b"x" * (65 * 1024 * 1024)}, id="over-max-chunk"),
        pytest.param("GET", "/upload/..%2F..%2Fetc%2Fpasswd", {}, id="traversal-id"),
        pytest.param("GET", "/upload/%00", {}, id="nul-id"),
        pytest.param("GET", "/upload/" + "a" * 3000, {}, id="long-id"),
        pytest.param("GET", "/uploads?limit=-5", {}, id="negative-limit"),
        pytest.param("GET", "/uploads?limit=abc", {}, id="text-limit"),
        pytest.param("GET", "/uploads?offset=1e99", {}, id="float-offset"),
        pytest.param("GET", "/uploads?state=bogus", {}, id="bad-state"),
        pytest.param("POST", "/upload/{id}/finalize", {"data": b"x" * (128 * 1024)}, id="finalize-body-too-big"),
        pytest.param("POST", "/robots/robot-1/heartbeat", {"data": b"{"}, id="heartbeat-bad-json"),
        pytest.param("POST", "/robots/robot-1/heartbeat", {"data": b"[" * 10_000}, id="heartbeat-deep-json"),
        pytest.param("POST", "/robots/..%2f/heartbeat", {"json": {}}, id="heartbeat-bad-robot"),
        pytest.param("PATCH", "/upload/{id}", {}, id="method-not-allowed"),
    ],
)
def test_bad_requests_on_every_route_are_4xx_json(
    server: GunicornServer, method: str, path: str, kwargs: dict[str, object]
) -> None:
    content = b"y" * 100
    init = requests.post(
        f"{server.url}/upload/init",
        json={"filename": "x.bag", "filesize": len(content), "chunks": 1},
        headers=server.headers(),
        timeout=10,
    )
    headers = server.headers(**kwargs.pop("headers", {}))  # type: ignore[arg-type]
    url = server.url + path.replace("{id}", init.json()["upload_id"])

    reply = requests.request(method, url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    assert 400 <= reply.status_code < 500, reply.text
    assert reply.json()["success"] is False
    assert "Traceback" not in reply.text


def test_request_line_over_gunicorns_limit_is_refused_before_the_app(server: GunicornServer) -> None:
    """gunicorn's parser answers (its own short 414 page) before Flask sees the request; nginx does the same."""
    reply = requests.get(f"{server.url}/upload/{'a' * 10000}", headers=server.headers(), timeout=10)

    assert reply.status_code == 414
    assert "Traceback" not in reply.text


def pieces(size: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """A body of ``size`` bytes as a generator: requests sends it with ``Transfer-Encoding: chunked``."""
    for start in range(0, size, piece):
        yield b"c" * min(piece, size - start)


@pytest.mark.parametrize("size", [pytest.param(3 * MiB, id="exact-size"), pytest.param(70 * MiB, id="over-max")])
def test_chunk_with_chunked_encoding_is_refused_with_411_and_nothing_is_stored(
    server: GunicornServer, size: int
) -> None:
    content = b"c" * (3 * MiB)
    init = requests.post(
        f"{server.url}/upload/init",
        json={"filename": "chunked.bag", "filesize": len(content), "chunks": 1},
        headers=server.headers(),
        timeout=10,
    )
    chunk_url = f"{server.url}/upload/{init.json()['upload_id']}/chunk/0"
    with requests.Session() as session:
        refused = session.put(chunk_url, data=pieces(size), headers=server.headers(), timeout=60)
        status = session.get(chunk_url.rsplit("/chunk/", 1)[0], headers=server.headers(), timeout=10)
        # The same keep-alive connection still frames requests correctly after the refused body.
        stored = session.put(chunk_url, data=content, headers=server.headers(), timeout=30)

    assert refused.request.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in refused.request.headers
    assert refused.status_code == 411, refused.text
    assert refused.json()["error"]["code"] == "length_required"
    assert status.json()["received"] == []
    assert stored.status_code == 201, stored.text
