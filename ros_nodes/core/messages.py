"""Realistic robot traffic as CDR bytes, serialized by rosbags' typestore (what a ROS 2 publisher would send)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rosbags.typesys.store import Typestore

from ros_nodes.core.splitting import NS_PER_S

IMU = "sensor_msgs/msg/Imu"
ODOMETRY = "nav_msgs/msg/Odometry"
TF = "tf2_msgs/msg/TFMessage"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
POINT_CLOUD = "sensor_msgs/msg/PointCloud2"


@dataclass(frozen=True)
class Stream:
    topic: str
    msgtype: str
    rate_hz: float


def default_streams(*, pointcloud: bool = False, image_rate: float = 30.0) -> list[Stream]:
    """The issue's mix: IMU 200 Hz, odometry 50 Hz, TF 100 Hz, ~100 KB images at 30 Hz, optional 10 Hz clouds."""
    streams = [
        Stream("/imu/data", IMU, 200.0),
        Stream("/odom", ODOMETRY, 50.0),
        Stream("/tf", TF, 100.0),
        Stream("/camera/image_raw/compressed", COMPRESSED_IMAGE, image_rate),
    ]
    if pointcloud:
        streams.append(Stream("/lidar/points", POINT_CLOUD, 10.0))
    return streams


class MessageFactory:
    """Builds a message of each type for a given time; payload bytes vary so compression is honest."""

    def __init__(self, typestore: Typestore, *, seed: int = 0, image_bytes: int = 100_000, cloud_points: int = 20_000):
        self.ts = typestore
        self.rng = random.Random(seed)  # noqa: S311 - simulated sensor noise, not security
        # Every frame and cloud is drawn afresh: repeated payloads let zstd match whole earlier frames and
        # report ratios (x111) no real camera gives. JPEG-like images are incompressible random bytes.
        self._np_rng = np.random.default_rng(seed)
        self.image_bytes = image_bytes
        self.cloud_points = cloud_points
        self._build: dict[str, Callable[[int, int], Any]] = {
            IMU: self._imu,
            ODOMETRY: self._odometry,
            TF: self._tf,
            COMPRESSED_IMAGE: self._image,
            POINT_CLOUD: self._pointcloud,
        }

    def serialize(self, msgtype: str, stamp_ns: int, seq: int) -> bytes:
        return bytes(self.ts.serialize_cdr(self._build[msgtype](stamp_ns, seq), msgtype))

    def _t(self, name: str) -> Any:
        return self.ts.types[name]

    def _header(self, stamp_ns: int, frame: str) -> Any:
        time = self._t("builtin_interfaces/msg/Time")(sec=stamp_ns // NS_PER_S, nanosec=stamp_ns % NS_PER_S)
        return self._t("std_msgs/msg/Header")(stamp=time, frame_id=frame)

    def _vec(self, x: float, y: float, z: float) -> Any:
        return self._t("geometry_msgs/msg/Vector3")(x=x, y=y, z=z)

    def _quat(self, yaw: float) -> Any:
        return self._t("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))

    def _noise(self) -> float:
        return self.rng.gauss(0.0, 0.01)

    def _imu(self, stamp_ns: int, seq: int) -> Any:
        cov = np.full(9, 1e-4)
        return self._t(IMU)(
            header=self._header(stamp_ns, "imu_link"),
            orientation=self._quat(seq * 1e-3),
            orientation_covariance=cov,
            angular_velocity=self._vec(self._noise(), self._noise(), 0.2 + self._noise()),
            angular_velocity_covariance=cov,
            linear_acceleration=self._vec(self._noise(), self._noise(), 9.81 + self._noise()),
            linear_acceleration_covariance=cov,
        )

    def _pose(self, seq: int) -> Any:
        point = self._t("geometry_msgs/msg/Point")(x=seq * 0.01, y=math.sin(seq * 0.01), z=0.0)
        return self._t("geometry_msgs/msg/Pose")(position=point, orientation=self._quat(seq * 0.01))

    def _odometry(self, stamp_ns: int, seq: int) -> Any:
        cov = np.zeros(36)
        twist = self._t("geometry_msgs/msg/Twist")(
            linear=self._vec(0.5 + self._noise(), 0.0, 0.0), angular=self._vec(0.0, 0.0, 0.1)
        )
        return self._t(ODOMETRY)(
            header=self._header(stamp_ns, "odom"),
            child_frame_id="base_link",
            pose=self._t("geometry_msgs/msg/PoseWithCovariance")(pose=self._pose(seq), covariance=cov),
            twist=self._t("geometry_msgs/msg/TwistWithCovariance")(twist=twist, covariance=cov),
        )

    def _tf(self, stamp_ns: int, seq: int) -> Any:
        transforms = []
        for parent, child in (("odom", "base_link"), ("base_link", "imu_link"), ("base_link", "camera_link")):
            pose = self._pose(seq)
            transform = self._t("geometry_msgs/msg/Transform")(
                translation=self._vec(pose.position.x, pose.position.y, 0.0), rotation=pose.orientation
            )
            transforms.append(
                self._t("geometry_msgs/msg/TransformStamped")(
                    header=self._header(stamp_ns, parent), child_frame_id=child, transform=transform
                )
            )
        return self._t(TF)(transforms=transforms)

    def _image(self, stamp_ns: int, seq: int) -> Any:
        data = np.frombuffer(self._np_rng.bytes(self.image_bytes), dtype=np.uint8)
        return self._t(COMPRESSED_IMAGE)(header=self._header(stamp_ns, "camera_link"), format="jpeg", data=data)

    def _lidar_sweep(self, points: int, seq: int) -> np.ndarray:
        """x, y, z, intensity of a 16-ring sweep: structured like a lidar's, never equal to an earlier one."""
        ring = np.arange(points) % 16
        elevation = np.radians(-15.0 + 2.0 * ring)
        azimuth = np.linspace(0.0, 2 * math.pi, points, endpoint=False)
        # A smooth scene drifting with seq, 2 cm of sensor noise, millimetre resolution.
        noise = self._np_rng.normal(0.0, 0.02, points)
        ranges = np.round(8.0 + 3.0 * np.sin(3 * azimuth + seq * 0.05) + noise, 3)
        cloud = np.empty((points, 4), dtype=np.float32)
        cloud[:, 0] = ranges * np.cos(elevation) * np.cos(azimuth)
        cloud[:, 1] = ranges * np.cos(elevation) * np.sin(azimuth)
        cloud[:, 2] = ranges * np.sin(elevation)
        cloud[:, 3] = self._np_rng.integers(0, 256, points)
        return cloud

    def _pointcloud(self, stamp_ns: int, seq: int) -> Any:
        field = self._t("sensor_msgs/msg/PointField")
        fields = [field(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyzi")]
        points = self.cloud_points
        cloud = self._lidar_sweep(points, seq)
        return self._t(POINT_CLOUD)(
            header=self._header(stamp_ns, "lidar_link"),
            height=1,
            width=points,
            fields=fields,
            is_bigendian=False,
            point_step=16,
            row_step=16 * points,
            data=cloud.view(np.uint8).reshape(-1),
            is_dense=True,
        )


def schedule(streams: list[Stream], start_ns: int, duration_s: float) -> Iterator[tuple[int, Stream, int]]:
    """(time, stream, sequence) of every message in ``duration_s``, merged in time order."""
    events = []
    for stream in streams:
        period = NS_PER_S / stream.rate_hz
        count = int(duration_s * stream.rate_hz)
        events.extend((start_ns + int(i * period), stream, i) for i in range(count))
    events.sort(key=lambda event: event[0])
    return iter(events)
