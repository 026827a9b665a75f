"""The rclpy node layer: its decisions without ROS, its message without rclpy, real recording with ROS."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rosbags.interfaces import QosDurability, QosReliability
from rosbags.rosbag2 import Reader

from core.config import RecorderConfig
from ros_nodes.core.recorder import Recorder
from ros_nodes.core.topics import TopicSelection
from ros_nodes.node_logic import EXIT_NO_RCLPY, QosChoice, adapt_qos, new_subscriptions, recorded_qos
from tests.helpers.processes import REPO_ROOT, wait_until
from tests.ros_nodes.support import Sent, split_dirs

HAVE_RCLPY = importlib.util.find_spec("rclpy") is not None


@pytest.mark.skipif(HAVE_RCLPY, reason="rclpy is installed: the missing-rclpy path cannot be exercised")
def test_without_rclpy_the_node_exits_nonzero_with_a_one_line_explanation() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ros_nodes.recorder"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == EXIT_NO_RCLPY
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "needs rclpy" in lines[0]
    assert "ros_nodes.simulate" in lines[0]


def profile(reliability: str, durability: str) -> SimpleNamespace:
    # rclpy policies are enums; only their ``name`` is read.
    return SimpleNamespace(reliability=SimpleNamespace(name=reliability), durability=SimpleNamespace(name=durability))


@pytest.mark.parametrize(
    ("publishers", "expected"),
    [
        ([], QosChoice(reliable=True, transient_local=False)),
        ([profile("RELIABLE", "VOLATILE")], QosChoice(reliable=True, transient_local=False)),
        ([profile("BEST_EFFORT", "VOLATILE")], QosChoice(reliable=False, transient_local=False)),
        ([profile("RELIABLE", "VOLATILE"), profile("BEST_EFFORT", "VOLATILE")], QosChoice(False, False)),
        ([profile("RELIABLE", "TRANSIENT_LOCAL")], QosChoice(reliable=True, transient_local=True)),
        ([profile("RELIABLE", "TRANSIENT_LOCAL"), profile("RELIABLE", "VOLATILE")], QosChoice(True, False)),
    ],
)
def test_subscription_qos_adapts_to_every_publisher(publishers: list[SimpleNamespace], expected: QosChoice) -> None:
    assert adapt_qos(publishers) == expected


def test_discovery_subscribes_new_selected_single_type_topics_only() -> None:
    discovered = [
        ("/imu", ["sensor_msgs/msg/Imu"]),
        ("/odom", ["nav_msgs/msg/Odometry"]),
        ("/mixed", ["std_msgs/msg/String", "std_msgs/msg/Int32"]),
        ("/rosout", ["rcl_interfaces/msg/Log"]),
    ]
    selection = TopicSelection(exclude="^/rosout$")

    topics, ambiguous = new_subscriptions(discovered, {"/odom"}, selection)

    assert topics == [("/imu", "sensor_msgs/msg/Imu")]
    assert ambiguous == ["/mixed"]


@pytest.mark.parametrize("version", [8, 9])
def test_latched_topic_qos_is_written_into_the_bag(
    config: RecorderConfig, traffic: list[Sent], version: int, tmp_path: Path
) -> None:
    config = RecorderConfig(output_dir=tmp_path / "bags", min_free_disk=0, bag_version=version)
    recorder = Recorder(config)
    recorder.add_topic("/tf", "tf2_msgs/msg/TFMessage", qos=[recorded_qos(QosChoice(True, True))])
    recorder.start()
    tf = next(m for m in traffic if m.topic == "/tf")
    recorder.record(tf.topic, tf.msgtype, tf.data, tf.timestamp)
    recorder.stop()

    (bag,) = split_dirs(config.output_dir)
    with Reader(bag) as reader:
        (conn,) = reader.connections
        (qos,) = conn.ext.offered_qos_profiles
    assert qos.durability == QosDurability.TRANSIENT_LOCAL
    assert qos.reliability == QosReliability.RELIABLE


@pytest.mark.skipif(not HAVE_RCLPY, reason="rclpy is not installed here (needs a ROS 2 robot); real publisher test")
def test_records_a_real_ros2_publisher(tmp_path: Path) -> None:
    import rclpy
    from std_msgs.msg import String

    output = tmp_path / "bags"
    argv = [sys.executable, "-m", "ros_nodes.recorder", "--output", str(output), "--topics", "/chatter"]
    argv += ["--min-free-disk", "0"]
    node_proc = subprocess.Popen(argv, cwd=REPO_ROOT)
    rclpy.init()
    try:
        node = rclpy.create_node("chatter_publisher")
        publisher = node.create_publisher(String, "/chatter", 10)
        deadline = time.monotonic() + 20
        sent = 0
        while time.monotonic() < deadline and sent < 50:
            publisher.publish(String(data=f"hello {sent}"))
            sent += 1
            rclpy.spin_once(node, timeout_sec=0.1)
        node_proc.send_signal(signal.SIGINT)
        node_proc.wait(30)
    finally:
        node_proc.kill()
        rclpy.shutdown()

    wait_until(lambda: any((d / "metadata.yaml").exists() for d in split_dirs(output)), 10, what="a closed bag")
    (bag,) = split_dirs(output)
    with Reader(bag) as reader:
        assert reader.message_count > 0
        assert [c.topic for c in reader.connections] == ["/chatter"]
