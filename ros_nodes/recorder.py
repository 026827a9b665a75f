"""``python -m ros_nodes.recorder``: the rclpy recorder node, a thin source feeding the recording core.

It discovers topics periodically, subscribes to the selected ones with raw
(serialized) subscriptions and adaptive QoS, passes every message's bytes to
``Recorder.record``, offers ``~/start``, ``~/stop``, ``~/pause``, ``~/resume``,
``~/split`` (std_srvs/Trigger) and publishes the status as JSON on ``~/status``.
Like the simulator, it reports to the server by heartbeat (``--heartbeat-url`` or
``--upload-url``), so the robot shows on the dashboard and takes operator commands.
rclpy is imported only in ``main``; without it the command explains and exits.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from core.config import ConfigError
from ros_nodes.cli import (
    EXIT_USAGE,
    add_recorder_options,
    config_from_args,
    make_heartbeat,
    make_recorder_uploader,
    setup_logging,
)
from ros_nodes.core.errors import RecorderError
from ros_nodes.core.malloc import tune_malloc
from ros_nodes.core.msgdefs import installed_definition
from ros_nodes.core.recorder import Recorder
from ros_nodes.node_logic import (
    EXIT_NO_RCLPY,
    RCLPY_MISSING,
    SUBSCRIPTION_DEPTH,
    adapt_qos,
    new_subscriptions,
    recorded_qos,
)

log = logging.getLogger("ros_nodes.recorder")
CONTROL_SERVICES = ("start", "stop", "pause", "resume", "split")


def load_rclpy() -> ModuleType | None:
    try:
        return importlib.import_module("rclpy")
    except ImportError:
        return None


def interface_show(msgtype: str) -> str | None:
    """``ros2 interface show`` output, or None when the CLI is missing or does not know the type."""
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv, the type name is one argument
            ["ros2", "interface", "show", msgtype],  # noqa: S607 - the sourced ROS environment's ros2
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout


def ros_type_lookup() -> functools.partial[str | None]:
    """Finds custom message definitions in the ROS installation (ament index first, then the CLI)."""
    from ament_index_python.packages import get_package_share_directory

    return functools.partial(
        installed_definition, share_directory=get_package_share_directory, interface_show=interface_show
    )


def build_node(rclpy: ModuleType, recorder: Recorder, discovery_interval: float) -> Any:
    """The ROS node; every decision it takes is in ``node_logic`` or the core."""
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosidl_runtime_py.utilities import get_message
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    class RecorderNode(Node):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("bag_recorder")
            self.subscribed: dict[str, Any] = {}
            self.status_pub = self.create_publisher(String, "~/status", 10)
            for name in CONTROL_SERVICES:
                self.create_service(Trigger, f"~/{name}", self._control(name))
            self.create_timer(discovery_interval, self.discover)
            self.create_timer(1.0, self.publish_status)
            self.discover()

        def discover(self) -> None:
            topics, ambiguous = new_subscriptions(
                self.get_topic_names_and_types(), set(self.subscribed), recorder.selection
            )
            for topic in ambiguous:
                self.get_logger().warning(f"not recording {topic}: it carries more than one message type")
            for topic, msgtype in topics:
                choice = adapt_qos([info.qos_profile for info in self.get_publishers_info_by_topic(topic)])
                reliable, latched = choice.reliable, choice.transient_local
                qos = QoSProfile(
                    depth=SUBSCRIPTION_DEPTH,
                    reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
                )
                recorder.add_topic(topic, msgtype, qos=[recorded_qos(choice)])
                self.subscribed[topic] = self.create_subscription(
                    get_message(msgtype), topic, self._receiver(topic, msgtype), qos, raw=True
                )
                self.get_logger().info(f"recording {topic} ({msgtype}, {choice})")

        def _receiver(self, topic: str, msgtype: str) -> Any:
            def receive(data: bytes) -> None:
                recorder.record(topic, msgtype, data)

            return receive

        def _control(self, name: str) -> Any:
            def handle(_request: Any, response: Any) -> Any:
                try:
                    recorder.command(name)
                except RecorderError as err:
                    response.success, response.message = False, str(err)
                else:
                    response.success, response.message = True, recorder.status().state
                return response

            return handle

        def publish_status(self) -> None:
            self.status_pub.publish(String(data=json.dumps(recorder.status().to_dict())))

    return RecorderNode()


def main(argv: Sequence[str] | None = None) -> int:
    rclpy = load_rclpy()
    if rclpy is None:
        print(RCLPY_MISSING, file=sys.stderr)
        return EXIT_NO_RCLPY
    setup_logging()
    tune_malloc()
    parser = argparse.ArgumentParser(prog="python -m ros_nodes.recorder", description=__doc__.splitlines()[0])
    add_recorder_options(parser)
    args, ros_args = parser.parse_known_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"ros_nodes.recorder: {err}", file=sys.stderr)
        return EXIT_USAGE
    manager = make_recorder_uploader(args, config)
    recorder = Recorder(config, uploader=manager, type_lookup=ros_type_lookup())
    heartbeat = make_heartbeat(args, recorder, manager)
    if manager is not None:
        manager.start()
    rclpy.init(args=ros_args)
    try:
        recorder.start()
        node = build_node(rclpy, recorder, config.discovery_interval)
        if heartbeat is not None:
            heartbeat.start()
        rclpy.spin(node)
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        recorder.close()
        if manager is not None:
            manager.stop()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
