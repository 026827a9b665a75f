"""The rclpy node's decisions, kept free of rclpy so they are tested on machines without ROS.

Adaptive QoS follows ``ros2 bag record``: subscribe reliable only if every
publisher is reliable (a reliable subscription receives nothing from a
best-effort publisher), and transient-local only if every publisher is (so
latched topics like ``/tf_static`` deliver their last message to a late recorder).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from ros_nodes.core.topics import TopicSelection

RCLPY_MISSING = (
    "ros_nodes.recorder needs rclpy: source your ROS 2 setup first (e.g. `source /opt/ros/humble/setup.bash`); "
    "without ROS, record with `python -m ros_nodes.simulate` or upload `ros2 bag record` output with "
    "`python -m ros_nodes.watch`"
)
EXIT_NO_RCLPY = 3
# Depth of the subscription queue; rosbag2 uses 10 as well, the recorder's buffer is behind it.
SUBSCRIPTION_DEPTH = 10


@dataclass(frozen=True)
class QosChoice:
    reliable: bool
    transient_local: bool


def _name(value: Any) -> str:
    """Enum name of an rclpy QoS policy (``ReliabilityPolicy.RELIABLE``) or a plain string."""
    return str(getattr(value, "name", value)).upper()


def adapt_qos(publisher_profiles: Sequence[Any]) -> QosChoice:
    """The subscription QoS matching every publisher's offer (no publishers yet: reliable, volatile)."""
    if not publisher_profiles:
        return QosChoice(reliable=True, transient_local=False)
    reliable = all(_name(p.reliability) == "RELIABLE" for p in publisher_profiles)
    latched = all(_name(p.durability) == "TRANSIENT_LOCAL" for p in publisher_profiles)
    return QosChoice(reliable=reliable, transient_local=latched)


def recorded_qos(choice: QosChoice) -> Qos:
    """The QoS written into the bag's metadata, so ``ros2 bag play`` republishes latched topics as latched."""
    never = QosTime(0, 0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=SUBSCRIPTION_DEPTH,
        reliability=QosReliability.RELIABLE if choice.reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if choice.transient_local else QosDurability.VOLATILE,
        deadline=never,
        lifespan=never,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=never,
        avoid_ros_namespace_conventions=False,
    )


def new_subscriptions(
    discovered: Iterable[tuple[str, Sequence[str]]], subscribed: set[str], selection: TopicSelection
) -> tuple[list[tuple[str, str]], list[str]]:
    """(topics to subscribe with their type, topics skipped because they carry several types)."""
    to_subscribe, ambiguous = [], []
    for topic, types in discovered:
        if topic in subscribed or not selection.accepts(topic):
            continue
        if len(types) != 1:
            ambiguous.append(topic)
            continue
        to_subscribe.append((topic, types[0]))
    return to_subscribe, ambiguous
