"""Custom message types (not in the pinned typestore) are registered from their .msg definitions, not dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import RecorderConfig
from ros_nodes.core.bag_writer import typestore_for
from ros_nodes.core.msgdefs import (
    MessageTypeError,
    MsgLookup,
    installed_definition,
    register_message_type,
    top_level_definition,
)
from ros_nodes.core.recorder import Recorder
from tests.ros_nodes.support import START_NS, Sent, mcap_rows, rosbags_rows, split_dirs

BATTERY = "my_robot_msgs/msg/Battery"
CELL = "my_robot_msgs/msg/Cell"
DEFINITIONS = {
    BATTERY: """\
# State of the robot's battery pack (a robot's own package: not in any rosbags typestore).
std_msgs/Header header
uint8 STATUS_CHARGING=1
uint8 status
Cell[] cells          # same-package reference, resolved to my_robot_msgs/msg/Cell
float32[4] temperatures
""",
    CELL: """\
float32 voltage
builtin_interfaces/Duration since_balanced
""",
}


def lookup(definitions: dict[str, str]) -> MsgLookup:
    """Stands in for the ROS installation: type name to .msg text."""
    return definitions.get


def test_a_custom_type_and_its_custom_dependencies_are_registered() -> None:
    typestore = typestore_for("humble")
    assert BATTERY not in typestore.types

    added = register_message_type(typestore, BATTERY, lookup(DEFINITIONS))

    assert added == [BATTERY, CELL]  # std_msgs/Header and Duration come from the typestore
    assert "my_robot_msgs/Cell[] cells" in typestore.generate_msgdef(BATTERY)[0]
    assert typestore.hash_rihs01(BATTERY).startswith("RIHS01_")
    assert register_message_type(typestore, BATTERY, lookup({})) == []  # known now: nothing to look up


def test_a_missing_dependency_fails_cleanly_and_registers_nothing() -> None:
    typestore = typestore_for("humble")
    with pytest.raises(MessageTypeError, match=f"no message definition for {CELL} \\(used by {BATTERY}\\)"):
        register_message_type(typestore, BATTERY, lookup({BATTERY: DEFINITIONS[BATTERY]}))
    assert BATTERY not in typestore.types


def battery_message(recorder: Recorder, stamp: int) -> bytes:
    types = recorder.typestore.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="base"
    )
    cell = types[CELL](voltage=3.7, since_balanced=types["builtin_interfaces/msg/Duration"](sec=60, nanosec=0))
    message = types[BATTERY](
        header=header, status=1, cells=[cell, cell], temperatures=np.array([20, 21, 22, 23], dtype=np.float32)
    )
    return bytes(recorder.typestore.serialize_cdr(message, BATTERY))


def test_recorder_records_a_custom_type_that_other_tools_can_decode(config: RecorderConfig) -> None:
    recorder = Recorder(config, type_lookup=lookup(DEFINITIONS))
    recorder.add_topic("/battery", BATTERY)  # what the rclpy node does on discovery
    recorder.start()
    sent = [(START_NS + i * 10**8, battery_message(recorder, START_NS + i * 10**8)) for i in range(5)]
    for stamp, data in sent:
        assert recorder.record("/battery", BATTERY, data, stamp)
    recorder.stop()

    status = recorder.status()
    assert (status.messages_written, status.dropped_messages, status.last_error) == (5, 0, None)
    (bag,) = split_dirs(config.output_dir)
    expected = [("/battery", stamp, data) for stamp, data in sent]
    assert rosbags_rows(bag) == expected
    assert mcap_rows(bag) == expected  # mcap-ros2-support decodes it from the definition in the bag
    recorder.close()


@pytest.mark.parametrize("with_lookup", [True, False], ids=["definition-not-found", "no-lookup"])
def test_without_a_definition_the_topic_is_dropped_and_reported_and_the_rest_recorded(
    config: RecorderConfig, traffic: list[Sent], with_lookup: bool
) -> None:
    recorder = Recorder(config, type_lookup=lookup({}) if with_lookup else None)
    recorder.add_topic("/battery", BATTERY)
    recorder.start()
    recorder.record("/battery", BATTERY, b"\x00\x01\x00\x00", START_NS)
    for msg in traffic[:10]:
        recorder.record(msg.topic, msg.msgtype, msg.data, msg.timestamp)
    recorder.stop()

    status = recorder.status()
    assert (status.state, status.stop_reason) == ("stopped", "requested")
    assert (status.dropped_messages, status.messages_written) == (1, 10)
    assert BATTERY in (status.last_error or "")
    recorder.close()


INTERFACE_SHOW = """\
# State of the robot's battery pack
std_msgs/Header header
\tbuiltin_interfaces/Time stamp
\t\tint32 sec
\t\tuint32 nanosec
\tstring frame_id
uint8 status
Cell[] cells
\tfloat32 voltage
"""


def test_interface_show_output_is_reduced_to_the_types_own_fields() -> None:
    assert top_level_definition(INTERFACE_SHOW).splitlines() == [
        "# State of the robot's battery pack",
        "std_msgs/Header header",
        "uint8 status",
        "Cell[] cells",
    ]


def test_installed_definitions_come_from_the_share_folder_then_the_cli(tmp_path: Path) -> None:
    share = tmp_path / "share" / "my_robot_msgs"
    (share / "msg").mkdir(parents=True)
    (share / "msg" / "Cell.msg").write_text(DEFINITIONS[CELL])

    def share_directory(package: str) -> str:
        if package != "my_robot_msgs":
            raise LookupError(package)  # ament's PackageNotFoundError is a KeyError
        return str(share)

    shown: list[str] = []

    def interface_show(msgtype: str) -> str | None:
        shown.append(msgtype)
        return INTERFACE_SHOW if msgtype == BATTERY else None

    def find(msgtype: str) -> str | None:
        return installed_definition(msgtype, share_directory=share_directory, interface_show=interface_show)

    assert find(CELL) == DEFINITIONS[CELL]
    assert find(BATTERY) == top_level_definition(INTERFACE_SHOW)  # no Battery.msg file: the CLI answered
    assert find("other_msgs/msg/Thing") is None
    assert shown == [BATTERY, "other_msgs/msg/Thing"]
