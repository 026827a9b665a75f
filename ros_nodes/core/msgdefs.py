"""Teach the typestore a robot's custom message types from their ``.msg`` definitions instead of dropping them.

The recorder writes each connection's full message definition and type hash
into the bag, which it generates from rosbags' pinned typestore. A robot's own
packages (``my_robot_msgs/msg/Battery``) are not in it. On a robot the ROS
installation has their ``.msg`` files, so the rclpy node looks each unknown type
up (``lookup``: a type name to its ``.msg`` text) and registers it, and every
type it refers to that the typestore lacks, before recording the topic.
Parsing and dependency resolution live here, free of ROS, so they are tested
without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rosbags.typesys import TypesysError, get_types_from_msg
from rosbags.typesys.base import Nodetype
from rosbags.typesys.store import Typestore

from ros_nodes.core.errors import RecorderError

# A type name ("pkg/msg/Name") to its .msg text, or None when the installation does not have it.
MsgLookup = Callable[[str], "str | None"]


class MessageTypeError(RecorderError):
    """A message type, or one it refers to, has no usable definition."""


def dependencies(fields: list[tuple[str, Any]]) -> list[str]:
    """The message types named by ``fields`` (rosbags' parsed field list), nested arrays included."""
    names = []
    for _name, desc in fields:
        while desc[0] in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            desc = desc[1][0]
        if desc[0] == Nodetype.NAME:
            names.append(desc[1])
    return names


def register_message_type(typestore: Typestore, msgtype: str, lookup: MsgLookup) -> list[str]:
    """Make ``msgtype`` known to ``typestore``; returns the type names it registered (none if already known).

    Nothing is registered unless every needed definition was found and parsed,
    so a failed lookup leaves the typestore as it was.
    """
    found: dict[str, Any] = {}
    pending = [msgtype]
    while pending:
        name = pending.pop()
        if name in found or name in typestore.types:
            continue
        text = lookup(name)
        if text is None:
            needed = "" if name == msgtype else f" (used by {msgtype})"
            msg = f"no message definition for {name}{needed}: is its package built and sourced?"
            raise MessageTypeError(msg)
        try:
            parsed = get_types_from_msg(text, name)
        except TypesysError as err:
            msg = f"cannot parse the definition of {name}: {err}"
            raise MessageTypeError(msg) from err
        found.update(parsed)
        pending.extend(dependencies(parsed[name][1]))
    if found:
        typestore.register(found)
    return sorted(found)


def top_level_definition(interface_show: str) -> str:
    """The type's own ``.msg`` text from ``ros2 interface show`` output, which indents nested types' fields."""
    return "\n".join(line for line in interface_show.splitlines() if not line[:1].isspace())


def installed_definition(
    msgtype: str,
    *,
    share_directory: Callable[[str], str],
    interface_show: Callable[[str], str | None],
) -> str | None:
    """The ``.msg`` text of an installed type: its file in the package's share folder, else ``ros2 interface show``.

    ``share_directory`` is ament's ``get_package_share_directory`` (raising
    ``LookupError`` for an unknown package); ``interface_show`` runs the CLI and
    returns its output or None. Both are passed in so this runs without ROS.
    """
    package, _, relative = msgtype.partition("/")
    try:
        return (Path(share_directory(package)) / f"{relative}.msg").read_text()
    except (LookupError, OSError, ValueError):
        pass
    shown = interface_show(msgtype)
    return top_level_definition(shown) if shown else None
