"""Shared library of the ROS2 bag upload service: wire protocol, configuration and the robot-side client."""

__version__ = "2.1.0"
