"""Conversions between ROS messages and numpy: images in, depth/CameraInfo/Odometry/TF out.

Works on rclpy message classes and on rosbags message classes alike: reading uses only field access, and
building goes through ``MessageTypes``, which names the classes and how each kind of array field is filled
(rclpy wants ``array.array`` for sequences, rosbags wants numpy arrays). Only numpy and OpenCV here.
"""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from sfm_ros.camera import CameraModel
from sfm_ros.geometry import rotation_to_quaternion
from sfm_ros.odometry.estimate import UNKNOWN_TWIST_VARIANCE, Estimate

__all__ = [
    "CameraModel",
    "EstimateMessages",
    "ImageError",
    "MessageTypes",
    "camera_info_to_model",
    "compressed_to_rgb",
    "depth_to_image_msg",
    "estimate_messages",
    "image_to_rgb",
    "make_camera_info",
    "make_header",
    "make_odometry",
    "make_transform",
    "mask_to_image_msg",
    "rgb_to_image_msg",
    "stamp_to_ns",
]


class ImageError(ValueError):
    """An image or camera message cannot be converted (encoding, size, step, data length)."""


# encoding -> (channels, numpy dtype, channel order to reach RGB)
_ENCODINGS: dict[str, tuple[int, str, str]] = {
    "rgb8": (3, "u1", "rgb"), "bgr8": (3, "u1", "bgr"), "rgba8": (4, "u1", "rgba"), "bgra8": (4, "u1", "bgra"),
    "mono8": (1, "u1", "mono"), "8UC1": (1, "u1", "mono"), "8UC3": (3, "u1", "bgr"),
    "mono16": (1, "u2", "mono"), "16UC1": (1, "u2", "mono"),
    "rgb16": (3, "u2", "rgb"), "bgr16": (3, "u2", "bgr"), "rgba16": (4, "u2", "rgba"), "bgra16": (4, "u2", "bgra"),
}


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> uint8 RGB [H,W,3] (contiguous copy).

    Supports rgb8, bgr8, rgba8, bgra8, mono8 (and 8UC1/8UC3) and their 16-bit forms (scaled by 1/256).
    Honours ``step`` (row padding) and ``is_bigendian``. Raises ImageError naming what is wrong.
    """
    encoding = msg.encoding
    if encoding not in _ENCODINGS:
        raise ImageError(f"unsupported image encoding {encoding!r}; supported: {sorted(_ENCODINGS)}")
    channels, kind, order = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    itemsize = 2 if kind == "u2" else 1
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageError(f"image step {step} is smaller than width*channels*bytes = {row_bytes} ({encoding})")
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data, dtype=np.uint8)
    if data.size < step * (height - 1) + row_bytes:
        raise ImageError(f"image data has {data.size} bytes, {encoding} {width}x{height} with step {step} "
                         f"needs {step * height}")
    rows = np.lib.stride_tricks.as_strided(data, shape=(height, row_bytes), strides=(step, 1))
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if itemsize == 2:
        pixels = (pixels >> 8).astype(np.uint8)
    if order == "mono":
        return np.repeat(pixels, 3, axis=2)
    if order in ("bgr", "bgra"):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> uint8 RGB [H,W,3]."""
    buffer = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageError("compressed image has no data")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"compressed image (format {msg.format!r}, {buffer.size} bytes) could not be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def camera_info_to_model(msg: Any) -> CameraModel:
    """sensor_msgs/CameraInfo -> CameraModel, using the rectified projection P when set, else K; with the raw lens
    (K, D, R) for undistorting raw images."""
    P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    K = P[:, :3].copy() if P[0, 0] > 0 else np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(K).all():
        raise ImageError(f"CameraInfo has non-finite intrinsics (K = {K.ravel().tolist()})")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or int(msg.width) <= 0 or int(msg.height) <= 0:
        raise ImageError(f"CameraInfo has no usable intrinsics (fx={K[0, 0]}, fy={K[1, 1]}, "
                         f"size {msg.width}x{msg.height})")
    return CameraModel(K=K, height=int(msg.height), width=int(msg.width), frame_id=msg.header.frame_id,
                       distortion_model=msg.distortion_model, D=tuple(float(d) for d in msg.d),
                       K_raw=np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
                       R=np.asarray(msg.r, dtype=np.float64).reshape(3, 3))


@dataclasses.dataclass(frozen=True)
class MessageTypes:
    """The message classes to build with, and how array fields are filled for that flavour."""

    Time: Any
    Header: Any
    Image: Any
    CameraInfo: Any
    RegionOfInterest: Any
    Odometry: Any
    PoseWithCovariance: Any
    Pose: Any
    Point: Any
    Quaternion: Any
    TwistWithCovariance: Any
    Twist: Any
    Vector3: Any
    TransformStamped: Any
    Transform: Any
    TFMessage: Any
    byte_sequence: Callable[[bytes], Any]
    double_sequence: Callable[[np.ndarray], Any]
    double_array: Callable[[np.ndarray], Any]

    @classmethod
    def from_rosbags(cls, typestore: Any) -> MessageTypes:
        """Classes from a rosbags typestore (``get_typestore(Stores.ROS2_HUMBLE)``)."""
        t = typestore.types
        return cls(Time=t["builtin_interfaces/msg/Time"], Header=t["std_msgs/msg/Header"],
                   Image=t["sensor_msgs/msg/Image"], CameraInfo=t["sensor_msgs/msg/CameraInfo"],
                   RegionOfInterest=t["sensor_msgs/msg/RegionOfInterest"], Odometry=t["nav_msgs/msg/Odometry"],
                   PoseWithCovariance=t["geometry_msgs/msg/PoseWithCovariance"], Pose=t["geometry_msgs/msg/Pose"],
                   Point=t["geometry_msgs/msg/Point"], Quaternion=t["geometry_msgs/msg/Quaternion"],
                   TwistWithCovariance=t["geometry_msgs/msg/TwistWithCovariance"],
                   Twist=t["geometry_msgs/msg/Twist"], Vector3=t["geometry_msgs/msg/Vector3"],
                   TransformStamped=t["geometry_msgs/msg/TransformStamped"],
                   Transform=t["geometry_msgs/msg/Transform"], TFMessage=t["tf2_msgs/msg/TFMessage"],
                   byte_sequence=lambda b: np.frombuffer(b, dtype=np.uint8),
                   double_sequence=lambda a: np.asarray(a, dtype=np.float64),
                   double_array=lambda a: np.asarray(a, dtype=np.float64))

    @classmethod
    def from_rclpy(cls) -> MessageTypes:  # pragma: no cover - needs a ROS 2 installation
        """Classes from the ROS 2 Python message packages."""
        from builtin_interfaces.msg import Time
        from geometry_msgs.msg import (
            Point,
            Pose,
            PoseWithCovariance,
            Quaternion,
            Transform,
            TransformStamped,
            Twist,
            TwistWithCovariance,
            Vector3,
        )
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
        from std_msgs.msg import Header

        try:  # only bag writing builds TFMessage; the node broadcasts through tf2_ros
            from tf2_msgs.msg import TFMessage
        except ImportError:
            TFMessage = None

        return cls(Time=Time, Header=Header, Image=Image, CameraInfo=CameraInfo, RegionOfInterest=RegionOfInterest,
                   Odometry=Odometry, PoseWithCovariance=PoseWithCovariance, Pose=Pose, Point=Point,
                   Quaternion=Quaternion, TwistWithCovariance=TwistWithCovariance, Twist=Twist, Vector3=Vector3,
                   TransformStamped=TransformStamped, Transform=Transform, TFMessage=TFMessage,
                   byte_sequence=lambda b: array.array("B", b),
                   double_sequence=lambda a: array.array("d", np.asarray(a, dtype=np.float64).tolist()),
                   double_array=lambda a: np.asarray(a, dtype=np.float64))


def make_header(types: MessageTypes, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header at ``stamp_ns``."""
    return types.Header(stamp=types.Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)),
                        frame_id=frame_id)


def rgb_to_image_msg(types: MessageTypes, rgb: np.ndarray, header: Any, encoding: str = "rgb8") -> Any:
    """uint8 RGB [H,W,3] -> sensor_msgs/Image in rgb8, bgr8 or mono8."""
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        raise ImageError(f"cannot encode RGB as {encoding!r}; use rgb8, bgr8 or mono8")
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    return types.Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                       step=pixels.strides[0], data=types.byte_sequence(pixels.tobytes()))


def depth_to_image_msg(types: MessageTypes, depth_m: np.ndarray, header: Any) -> Any:
    """Depth [H,W] metres -> sensor_msgs/Image 32FC1 (REP 118: +inf = too far, NaN = no estimate)."""
    depth = np.ascontiguousarray(depth_m, dtype="<f4")
    height, width = depth.shape
    return types.Image(header=header, height=height, width=width, encoding="32FC1", is_bigendian=0,
                       step=width * 4, data=types.byte_sequence(depth.tobytes()))


def mask_to_image_msg(types: MessageTypes, mask: np.ndarray, header: Any) -> Any:
    """Explainability mask [H,W] in [0,1] -> mono8 image (255 = fully explainable)."""
    pixels = np.ascontiguousarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    height, width = pixels.shape
    return types.Image(header=header, height=height, width=width, encoding="mono8", is_bigendian=0, step=width,
                       data=types.byte_sequence(pixels.tobytes()))


def make_camera_info(types: MessageTypes, camera: CameraModel, header: Any) -> Any:
    """sensor_msgs/CameraInfo for a rectified pinhole camera (no distortion) of ``camera``'s size."""
    K = np.asarray(camera.K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = types.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types.CameraInfo(header=header, height=camera.height, width=camera.width, distortion_model="plumb_bob",
                            d=types.double_sequence(np.zeros(5)), k=types.double_array(K.reshape(-1)),
                            r=types.double_array(np.eye(3).reshape(-1)), p=types.double_array(P.reshape(-1)),
                            binning_x=0, binning_y=0, roi=roi)


def _pose_msg(types: MessageTypes, T: np.ndarray) -> Any:
    q = rotation_to_quaternion(T[:3, :3])
    return types.Pose(position=types.Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                      orientation=types.Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def make_odometry(types: MessageTypes, header: Any, child_frame_id: str, T_odom_base: np.ndarray,
                  covariance: np.ndarray, velocity: np.ndarray | None = None,
                  twist_covariance: np.ndarray | None = None) -> Any:
    """nav_msgs/Odometry: pose of ``child_frame_id`` in ``header.frame_id`` with a 6x6 covariance
    (x y z roll pitch yaw); twist [vx vy vz wx wy wz] in the child frame. Without a velocity the twist is zero with
    the unknown-twist variance (1e6) on its diagonal, never the pose's covariance."""
    velocity = np.zeros(6) if velocity is None else np.asarray(velocity, dtype=np.float64)
    twist_cov = np.asarray(np.eye(6) * UNKNOWN_TWIST_VARIANCE if twist_covariance is None else twist_covariance,
                           dtype=np.float64)
    twist = types.Twist(linear=types.Vector3(x=float(velocity[0]), y=float(velocity[1]), z=float(velocity[2])),
                        angular=types.Vector3(x=float(velocity[3]), y=float(velocity[4]), z=float(velocity[5])))
    return types.Odometry(
        header=header, child_frame_id=child_frame_id,
        pose=types.PoseWithCovariance(pose=_pose_msg(types, T_odom_base),
                                      covariance=types.double_array(np.asarray(covariance).reshape(-1))),
        twist=types.TwistWithCovariance(twist=twist, covariance=types.double_array(twist_cov.reshape(-1))),
    )


def make_transform(types: MessageTypes, header: Any, child_frame_id: str, T_parent_child: np.ndarray) -> Any:
    """geometry_msgs/TransformStamped of ``child_frame_id`` in ``header.frame_id``."""
    q = rotation_to_quaternion(T_parent_child[:3, :3])
    translation = types.Vector3(x=float(T_parent_child[0, 3]), y=float(T_parent_child[1, 3]),
                                z=float(T_parent_child[2, 3]))
    rotation = types.Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return types.TransformStamped(header=header, child_frame_id=child_frame_id,
                                  transform=types.Transform(translation=translation, rotation=rotation))


@dataclasses.dataclass(frozen=True)
class EstimateMessages:
    """What one frame's ``Estimate`` becomes, for the node to publish and replay to record alike."""

    depth: Any  # sensor_msgs/Image 32FC1, the input's header
    depth_info: Any  # sensor_msgs/CameraInfo of the depth's size
    odometry: Any  # nav_msgs/Odometry odom -> base_link, pose and twist with covariances
    transform: Any | None  # geometry_msgs/TransformStamped odom -> base_link, when TF is published
    mask: Any | None  # sensor_msgs/Image mono8 explainability, when asked for and available


def estimate_messages(types: MessageTypes, estimate: Estimate, header: Any, odom_frame: str, base_frame: str, *,
                      with_transform: bool = True, with_mask: bool = False) -> EstimateMessages:
    """The messages of one frame: depth and its CameraInfo in the input's header; Odometry (pose covariance, and the
    body-frame twist with its own covariance, REP 105) and TF stamped like the input in ``odom_frame``."""
    odom_header = types.Header(stamp=header.stamp, frame_id=odom_frame)
    odometry = make_odometry(types, odom_header, base_frame, estimate.T_odom_base, estimate.covariance,
                             velocity=estimate.twist, twist_covariance=estimate.twist_covariance)
    transform = make_transform(types, odom_header, base_frame, estimate.T_odom_base) if with_transform else None
    mask = (mask_to_image_msg(types, estimate.mask, header) if with_mask and estimate.mask is not None else None)
    return EstimateMessages(depth=depth_to_image_msg(types, estimate.depth_m, header),
                            depth_info=make_camera_info(types, estimate.camera_info_scaled, header),
                            odometry=odometry, transform=transform, mask=mask)
