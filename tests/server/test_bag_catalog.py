"""The bag catalogue: files grouped into bags, facts read from the bags themselves, queries on both engines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from flask import Flask

from core.protocol import Codec
from core.server.catalog import BagIdentity, BagQuery, FileFacts, TopicFacts, bag_facts, bag_id_of
from core.server.state_store import SQLStateStore, StateStore
from tests.helpers.bags import FLOAT, STRING, write_bag
from tests.helpers.state import open_engine
from tests.server.uploads import Upload

NOW = 1_000.0
SECOND = 1_000_000_000


@pytest.fixture
def store(state_store_uri: str, tmp_path: Path) -> Iterator[StateStore]:
    opened = SQLStateStore(open_engine(tmp_path, state_store_uri))
    yield opened
    opened.close()


def identity(name: str = "run_0", **fields: Any) -> BagIdentity:
    values: dict[str, Any] = {
        "owner": "robot1",
        "name": name,
        "robot_id": "robot1",
        "session": "s1",
        "split_index": 0,
        "storage": "mcap",
        "recovered": False,
        **fields,
    }
    return BagIdentity(bag_id=bag_id_of(values["owner"], name), **values)


def storage_file(upload_id: str, start_s: int, end_s: int, *topics: TopicFacts, size: int = 100) -> FileFacts:
    return FileFacts(
        upload_id=upload_id,
        filename=f"{upload_id}.mcap",
        kind="storage",
        size=size,
        stored_size=size // 2,
        sha256="0" * 64,
        parsed=True,
        start_ns=start_s * SECOND,
        end_ns=end_s * SECOND,
        message_count=sum(t.message_count for t in topics),
        topics=topics,
    )


def metadata_file(upload_id: str, *topics: TopicFacts) -> FileFacts:
    counts = sum(t.message_count for t in topics)
    return FileFacts(upload_id, "metadata.yaml", "metadata", 10, 10, None, True, 0, 99 * SECOND, counts, topics)


CHATTER = TopicFacts("/chatter", STRING, 3)
IMU = TopicFacts("/imu/data", FLOAT, 2)
CAMERA = TopicFacts("/camera/image_raw", "sensor_msgs/msg/Image", 7)


def names(page: tuple[list[Any], int]) -> list[str]:
    return [bag.name for bag in page[0]]


def test_files_of_a_bag_combine_into_one_bag(store: StateStore) -> None:
    store.record_bag_file(identity(), metadata_file("m" * 32, CHATTER), NOW)
    bag = store.record_bag_file(identity(), storage_file("a" * 32, 10, 20, CHATTER, IMU), NOW)

    assert bag.start_ns == 10 * SECOND
    assert bag.end_ns == 20 * SECOND
    assert bag.duration_ns == 10 * SECOND
    assert bag.message_count == 5  # the storage file's messages, not added to metadata.yaml's
    assert bag.size == 110
    assert bag.stored_size == 60
    assert bag.topics == (CHATTER, IMU)
    assert [f.filename for f in bag.files] == ["a" * 32 + ".mcap", "metadata.yaml"]
    assert store.get_bag(bag.bag_id) == bag


def test_metadata_yaml_describes_a_bag_whose_storage_file_was_unreadable(store: StateStore) -> None:
    unreadable = FileFacts("a" * 32, "x.mcap", "storage", 100, 100, None)
    store.record_bag_file(identity(), unreadable, NOW)
    bag = store.record_bag_file(identity(), metadata_file("m" * 32, CHATTER), NOW)

    assert bag.topics == (CHATTER,)
    assert bag.message_count == 3


def test_refiling_a_file_replaces_it(store: StateStore) -> None:
    store.record_bag_file(identity(), storage_file("a" * 32, 10, 20, CHATTER), NOW)
    bag = store.record_bag_file(identity(), storage_file("a" * 32, 10, 30, IMU), NOW)

    assert len(bag.files) == 1
    assert bag.topics == (IMU,)
    assert bag.end_ns == 30 * SECOND


def test_one_recovered_file_makes_the_bag_recovered(store: StateStore) -> None:
    store.record_bag_file(identity(recovered=True), storage_file("a" * 32, 1, 2, CHATTER), NOW)
    bag = store.record_bag_file(identity(), metadata_file("m" * 32, CHATTER), NOW)

    assert bag.recovered


@pytest.fixture
def fleet(store: StateStore) -> StateStore:
    """Four bags: two robots, two sessions, different topics, one recovered."""
    store.record_bag_file(identity("a", session="s1"), storage_file("1" * 32, 0, 10, CHATTER), NOW)
    store.record_bag_file(
        identity("b", session="s1", split_index=1), storage_file("2" * 32, 10, 20, CHATTER, CAMERA), NOW
    )
    store.record_bag_file(
        identity("c", owner="robot2", robot_id="robot2", session="s2"), storage_file("3" * 32, 5, 15, IMU), NOW
    )
    store.record_bag_file(
        identity("d", owner="robot2", robot_id="robot2", session="s2", recovered=True),
        storage_file("4" * 32, 30, 40, IMU, CAMERA),
        NOW,
    )
    return store


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (BagQuery(), ["d", "b", "c", "a"]),
        (BagQuery(ascending=True), ["a", "c", "b", "d"]),
        (BagQuery(robot_id="robot2"), ["d", "c"]),
        (BagQuery(owner="robot1"), ["b", "a"]),
        (BagQuery(session="s1"), ["b", "a"]),
        (BagQuery(since_ns=12 * SECOND, until_ns=16 * SECOND), ["b", "c"]),  # overlap, not containment
        (BagQuery(since_ns=20 * SECOND, until_ns=29 * SECOND), ["b"]),  # touching the end counts
        (BagQuery(until_ns=4 * SECOND), ["a"]),
        (BagQuery(topic="/camera/image_raw"), ["d", "b"]),
        (BagQuery(topic="/camera"), []),  # exact unless prefix
        (BagQuery(topic="/camera", topic_prefix=True), ["d", "b"]),
        (BagQuery(topic="/imu_", topic_prefix=True), []),  # _ and % are literal in a prefix
        (BagQuery(message_type=FLOAT), ["d", "c"]),
        (BagQuery(topic="/chatter", message_type=FLOAT), []),  # both on the same topic
        (BagQuery(recovered=True), ["d"]),
        (BagQuery(recovered=False, robot_id="robot2"), ["c"]),
        (BagQuery(limit=2, offset=1), ["b", "c"]),
    ],
)
def test_queries_filter_and_sort_by_start(fleet: StateStore, query: BagQuery, expected: list[str]) -> None:
    found, total = fleet.list_bags(query)

    assert [bag.name for bag in found] == expected
    assert total == (4 if query.limit == 2 else len(expected))  # the total ignores the page


def test_listed_bags_carry_topics_but_not_files(fleet: StateStore) -> None:
    found, _ = fleet.list_bags(BagQuery(robot_id="robot1"))

    assert found[0].topics == (CAMERA, CHATTER)
    assert found[0].files == ()


def test_delete_forgets_the_bag_its_files_and_topics(fleet: StateStore) -> None:
    bag_id = bag_id_of("robot2", "d")

    gone = fleet.delete_bag(bag_id)

    assert gone is not None
    assert gone.files[0].upload_id == "4" * 32
    assert fleet.get_bag(bag_id) is None
    assert names(fleet.list_bags(BagQuery(topic="/camera/image_raw"))) == ["b"]
    assert fleet.delete_bag(bag_id) is None


def test_same_bag_name_from_two_keys_is_two_bags() -> None:
    assert bag_id_of("robot1", "run_0") != bag_id_of("robot2", "run_0")


# --- facts read from real bags -----------------------------------------------------------------
@pytest.fixture
def real_bag(tmp_path: Path) -> Path:
    return write_bag(tmp_path / "run_0", {"/chatter": (STRING, 3), "/imu/data": (FLOAT, 2)}, start_ns=10 * SECOND)


def facts_of(path: Path, codec: Codec = Codec.NONE, stored: Path | None = None) -> FileFacts:
    size = path.stat().st_size
    return bag_facts(
        upload_id="a" * 32,
        filename=path.name,
        open_stored=lambda: (stored or path).open("rb"),
        codec=codec,
        size=size,
        stored_size=1,
        sha256=None,
    )


EXPECTED_TOPICS = (TopicFacts("/chatter", STRING, 3), TopicFacts("/imu/data", FLOAT, 2))


def test_mcap_summary_gives_times_counts_and_types(real_bag: Path) -> None:
    facts = facts_of(real_bag / "run_0.mcap")

    assert facts.parsed
    assert (facts.start_ns, facts.end_ns, facts.message_count) == (10 * SECOND, 10 * SECOND + 4_000_000, 5)
    assert facts.topics == EXPECTED_TOPICS


def test_metadata_yaml_gives_the_same_facts(real_bag: Path) -> None:
    facts = facts_of(real_bag / "metadata.yaml")

    assert facts.kind == "metadata"
    assert (facts.start_ns, facts.message_count, facts.topics) == (10 * SECOND, 5, EXPECTED_TOPICS)


def test_a_compressed_blob_is_read_as_a_stream(real_bag: Path, tmp_path: Path) -> None:
    original = real_bag / "run_0.mcap"
    stored = tmp_path / "blob.zst"
    stored.write_bytes(zstandard.ZstdCompressor().compress(original.read_bytes()))

    facts = facts_of(original, Codec.ZSTD, stored)

    assert facts.topics == EXPECTED_TOPICS
    assert facts.message_count == 5


def test_a_split_cut_short_counts_the_messages_it_still_holds(real_bag: Path, tmp_path: Path) -> None:
    original = (real_bag / "run_0.mcap").read_bytes()
    torn = tmp_path / "run_0.mcap"
    torn.write_bytes(original[:-1])  # the footer is gone, the data chunk is intact

    facts = facts_of(torn)

    assert facts.parsed
    assert facts.topics == EXPECTED_TOPICS
    assert (facts.start_ns, facts.end_ns) == (10 * SECOND, 10 * SECOND + 4_000_000)


@pytest.mark.parametrize("content", [b"", b"not: [yaml", b"rosbag2_bagfile_information: 3\n"])
def test_an_unreadable_metadata_yaml_is_listed_unparsed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "metadata.yaml"
    path.write_bytes(content)

    facts = facts_of(path)

    assert facts.kind == "metadata"
    assert not facts.parsed


def test_a_garbage_mcap_is_listed_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "x.mcap"
    path.write_bytes(b"\x89MCAP0\r\n" + b"junk" * 100)

    assert not facts_of(path).parsed


# --- finalize files verified uploads of a bag --------------------------------------------------
def upload_bag(new_upload: Callable[..., Upload], jobs: Any, bag: Path, **metadata: Any) -> list[str]:
    """Every file of ``bag`` uploaded as the recorder does: storage first, ``metadata.yaml`` last."""
    declared = {"bag": bag.name, "robot_id": "robot1", "session": "s1", "split_index": 0, **metadata}
    ids = []
    for file in sorted(bag.iterdir(), key=lambda p: p.name == "metadata.yaml"):
        upload = new_upload(file.read_bytes(), filename=file.name)
        assert upload.init(metadata={**declared, "part": file.name}).status_code == 201
        upload.send_all()
        assert upload.finalize().status_code == 202
        assert jobs.run_once()
        ids.append(upload.upload_id)
    return ids


def test_finalize_files_both_uploads_of_a_bag_under_one_bag(
    new_upload: Callable[..., Upload], jobs: Any, app: Flask, real_bag: Path
) -> None:
    # The client's topics and counts are wrong on purpose: the catalogue reads the bag.
    ids = upload_bag(new_upload, jobs, real_bag, topics={"/fake": 99}, message_count=99)

    bag = app.extensions["state_store"].get_bag(bag_id_of("anonymous", "run_0"))

    assert bag is not None
    assert sorted(f.upload_id for f in bag.files) == sorted(ids)
    assert bag.topics == EXPECTED_TOPICS
    assert bag.message_count == 5
    assert (bag.robot_id, bag.session, bag.split_index) == ("robot1", "s1", 0)
    assert bag.size == sum(p.stat().st_size for p in real_bag.iterdir())


def test_an_upload_without_a_bag_is_not_catalogued(new_upload: Callable[..., Upload], jobs: Any, app: Flask) -> None:
    upload = new_upload(b"x" * 100)
    upload.init()
    upload.send_all()
    upload.finalize()
    assert jobs.run_once()

    assert app.extensions["state_store"].list_bags(BagQuery()) == ([], 0)


def test_a_deduplicated_upload_is_catalogued_too(
    new_upload: Callable[..., Upload], jobs: Any, app: Flask, real_bag: Path
) -> None:
    upload_bag(new_upload, jobs, real_bag)
    for file in sorted(real_bag.iterdir()):  # the same bytes again, declared as another bag
        upload = new_upload(file.read_bytes(), filename=file.name)
        assert upload.init(metadata={"bag": "copy_of_run_0", "robot_id": "robot1"}).get_json()["deduplicated"]

    copy = app.extensions["state_store"].get_bag(bag_id_of("anonymous", "copy_of_run_0"))

    assert copy is not None
    assert copy.topics == EXPECTED_TOPICS
    assert len(copy.files) == 2
