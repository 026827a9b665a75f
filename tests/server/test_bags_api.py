"""GET /bags (filters, pages, access), one bag's detail, the whole bag as a streamed tar, and admin delete."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.server.catalog import bag_id_of
from tests.helpers.bags import FLOAT, STRING, write_bag
from tests.server.test_bag_catalog import upload_bag
from tests.server.uploads import Upload, identity_header

SECOND = 1_000_000_000
ROBOT1 = identity_header("robot1")
ROBOT2 = identity_header("robot2")
ADMIN = identity_header("ops", admin=True)


@pytest.fixture
def robot_upload(client: FlaskClient) -> Callable[..., Upload]:
    def build(data: bytes, *, filename: str, robot: str = "robot1") -> Upload:
        return Upload(client, data, 1024, filename=filename, headers=identity_header(robot))

    return build


@pytest.fixture
def two_robots(tmp_path: Path, robot_upload: Callable[..., Upload], jobs: Any) -> dict[str, Path]:
    """robot1 recorded two splits (chatter, then chatter + imu), robot2 one split (imu) after both."""
    bags = {
        "r1_0": (write_bag(tmp_path / "r1_0", {"/chatter": (STRING, 3)}, start_ns=10 * SECOND), "robot1", 0),
        "r1_1": (
            write_bag(tmp_path / "r1_1", {"/chatter": (STRING, 1), "/imu/data": (FLOAT, 2)}, start_ns=20 * SECOND),
            "robot1",
            1,
        ),
        "r2_0": (write_bag(tmp_path / "r2_0", {"/imu/data": (FLOAT, 4)}, start_ns=30 * SECOND), "robot2", 0),
    }
    for path, robot, split in bags.values():

        def build(data: bytes, *, filename: str, robot: str = robot) -> Upload:
            return robot_upload(data, filename=filename, robot=robot)

        upload_bag(build, jobs, path, robot_id=robot, split_index=split, recovered=path.name == "r2_0")
    return {name: path for name, (path, _, _) in bags.items()}


def names(client: FlaskClient, query: str = "", headers: dict[str, str] = ADMIN) -> list[str]:
    response = client.get(f"/bags{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [bag["name"] for bag in response.get_json()["bags"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["r2_0", "r1_1", "r1_0"]),
        ("?order=asc", ["r1_0", "r1_1", "r2_0"]),
        ("?robot=robot1", ["r1_1", "r1_0"]),
        ("?session=s1&robot=robot2", ["r2_0"]),
        (f"?since_ns={20 * SECOND + 1}&until_ns={30 * SECOND}", ["r2_0", "r1_1"]),
        ("?topic=/imu/data", ["r2_0", "r1_1"]),
        ("?topic=/imu&topic_prefix=true", ["r2_0", "r1_1"]),
        ("?topic=/imu", []),
        (f"?type={STRING}", ["r1_1", "r1_0"]),
        ("?recovered=true", ["r2_0"]),
        ("?recovered=false", ["r1_1", "r1_0"]),
        ("?limit=1&offset=1", ["r1_1"]),
    ],
)
def test_list_filters_and_sorts_by_start(
    client: FlaskClient, two_robots: dict[str, Path], query: str, expected: list[str]
) -> None:
    assert names(client, query) == expected


def test_a_robot_key_lists_only_its_own_bags(client: FlaskClient, two_robots: dict[str, Path]) -> None:
    assert names(client, headers=ROBOT2) == ["r2_0"]


@pytest.mark.parametrize(
    "query",
    [
        "?since_ns=yesterday",
        "?until_ns=-1",
        "?since_ns=",
        "?recovered=maybe",
        "?topic_prefix=",
        "?order=",
        "?limit=100000",
    ],
)
def test_bad_filters_are_a_clear_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/bags{query}", headers=ADMIN)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_field"


def test_list_reply_carries_the_total_and_topics(client: FlaskClient, two_robots: dict[str, Path]) -> None:
    body = client.get("/bags?robot=robot1&limit=1", headers=ADMIN).get_json()

    assert body["total"] == 2
    bag = body["bags"][0]
    assert bag["topics"] == [
        {"name": "/chatter", "type": STRING, "message_count": 1},
        {"name": "/imu/data", "type": FLOAT, "message_count": 2},
    ]
    assert (bag["start_ns"], bag["duration_ns"], bag["message_count"]) == (20 * SECOND, 2_000_000, 3)
    assert "files" not in bag


def test_detail_lists_the_files(client: FlaskClient, two_robots: dict[str, Path]) -> None:
    bag_id = bag_id_of("robot1", "r1_0")

    body = client.get(f"/bags/{bag_id}", headers=ROBOT1).get_json()

    assert [f["filename"] for f in body["files"]] == ["metadata.yaml", "r1_0.mcap"]
    assert all(f["parsed"] for f in body["files"])
    assert body["size"] == sum(p.stat().st_size for p in two_robots["r1_0"].iterdir())


@pytest.mark.parametrize("bag_id", [bag_id_of("robot1", "r1_0"), "0" * 32, "../etc"])
def test_foreign_and_unknown_bags_are_404(client: FlaskClient, two_robots: dict[str, Path], bag_id: str) -> None:
    assert client.get(f"/bags/{bag_id}", headers=ROBOT2).status_code == 404
    assert client.get(f"/bags/{bag_id}/download", headers=ROBOT2).status_code == 404


def test_download_streams_the_bag_folder_as_a_tar(client: FlaskClient, two_robots: dict[str, Path]) -> None:
    response = client.get(f"/bags/{bag_id_of('robot1', 'r1_1')}/download", headers=ROBOT1)

    assert response.status_code == 200
    assert response.mimetype == "application/x-tar"
    assert int(response.headers["Content-Length"]) == len(response.data)
    with tarfile.open(fileobj=io.BytesIO(response.data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert members == {f"r1_1/{p.name}": p.read_bytes() for p in two_robots["r1_1"].iterdir()}


def test_only_an_admin_deletes_a_bag(client: FlaskClient, two_robots: dict[str, Path]) -> None:
    bag_id = bag_id_of("robot1", "r1_0")

    response = client.delete(f"/bags/{bag_id}", headers=ROBOT1)

    assert response.status_code == 403
    assert names(client, "?robot=robot1") == ["r1_1", "r1_0"]


def test_admin_delete_removes_the_bag_and_its_stored_files(
    client: FlaskClient, two_robots: dict[str, Path], upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bag_id = bag_id_of("robot1", "r1_0")
    files = client.get(f"/bags/{bag_id}", headers=ADMIN).get_json()["files"]
    stored_before = sum(1 for p in (upload_dir / "store").rglob("*") if p.is_file())

    response = client.delete(f"/bags/{bag_id}", headers=ADMIN)

    assert response.status_code == 200
    assert client.get(f"/bags/{bag_id}", headers=ADMIN).status_code == 404
    for f in files:
        status = client.get(f"/upload/{f['upload_id']}", headers=ADMIN).get_json()
        assert status["state"] == "aborted"
        assert client.get(f"/uploads/{f['upload_id']}/file", headers=ADMIN).status_code == 409
    stored_after = sum(1 for p in (upload_dir / "store").rglob("*") if p.is_file())
    assert stored_after < stored_before
    assert f"Deleted bag {bag_id} (r1_0, robot robot1) by ops: 2 file(s)" in caplog.text
    assert names(client) == ["r2_0", "r1_1"]


def test_cli_deletes_a_bag_after_confirmation(app: Flask, client: FlaskClient, two_robots: dict[str, Path]) -> None:
    bag_id = bag_id_of("robot2", "r2_0")
    runner = app.test_cli_runner()

    refused = runner.invoke(args=["bags", "delete", bag_id], input="n\n")
    assert refused.exit_code == 1
    assert names(client, "?robot=robot2") == ["r2_0"]

    result = runner.invoke(args=["bags", "delete", bag_id], input="y\n")
    assert result.exit_code == 0, result.output
    assert f"deleted bag {bag_id} (r2_0): 2 file(s)" in result.output
    assert names(client, "?robot=robot2") == []
