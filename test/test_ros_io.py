"""Message conversion on rosbags message classes, checked against rosbags-image and CDR round trips."""

from __future__ import annotations

import numpy as np
import pytest

from sfm_ros import ros_io
from sfm_ros.bags import open_typestore
from sfm_ros.geometry import pose_vec_to_mat

TYPESTORE = open_typestore("humble")
TYPES = ros_io.MessageTypes.from_rosbags(TYPESTORE)
RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


def raw_image(encoding: str, pixels: np.ndarray, step_padding: int = 0, bigendian: bool = False):
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    if bigendian:
        row = row.astype(row.dtype.newbyteorder(">"))
    row_bytes = row.view(np.uint8).reshape(height, -1)
    padded = np.concatenate([row_bytes, np.full((height, step_padding), 77, np.uint8)], axis=1)
    return TYPES.Image(header=ros_io.make_header(TYPES, 5, "cam"), height=height, width=width, encoding=encoding,
                       is_bigendian=int(bigendian), step=padded.shape[1], data=padded.reshape(-1).copy())


def cdr_round_trip(msg):
    kind = msg.__msgtype__
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, kind), kind)


@pytest.mark.parametrize(("encoding", "pixels", "expected"), [
    ("rgb8", RGB, RGB),
    ("bgr8", RGB[:, :, ::-1].copy(), RGB),
    ("rgba8", np.dstack([RGB, np.full((6, 5), 9, np.uint8)]), RGB),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full((6, 5), 9, np.uint8)]), RGB),
    ("mono8", RGB[:, :, :1].copy(), np.repeat(RGB[:, :, :1], 3, axis=2)),
    ("mono16", (RGB[:, :, :1].astype(np.uint16) << 8) | 0x55, np.repeat(RGB[:, :, :1], 3, axis=2)),
    ("16UC1", (RGB[:, :, :1].astype(np.uint16) << 8), np.repeat(RGB[:, :, :1], 3, axis=2)),
    ("rgb16", RGB.astype(np.uint16) << 8, RGB),
])
# 256: a driver's 256-byte row pitch, not a whole number of 3-byte pixels (cv_bridge shears such rows).
@pytest.mark.parametrize("padding", [0, 3, 256])
def test_image_to_rgb(encoding: str, pixels: np.ndarray, expected: np.ndarray, padding: int) -> None:
    msg = cdr_round_trip(raw_image(encoding, pixels, padding))
    np.testing.assert_array_equal(ros_io.image_to_rgb(msg), expected)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_conversion_agrees_with_rosbags_image(encoding: str) -> None:
    from rosbags.image import message_to_cvimage

    msg = cdr_round_trip(ros_io.rgb_to_image_msg(TYPES, RGB, ros_io.make_header(TYPES, 1, "cam"), encoding))
    reference = message_to_cvimage(msg, "rgb8")
    np.testing.assert_array_equal(ros_io.image_to_rgb(msg), reference)


def test_big_endian_16_bit() -> None:
    pixels = (RGB[:, :, :1].astype(np.uint16) << 8) | 0x12
    msg = raw_image("mono16", pixels, bigendian=True)
    np.testing.assert_array_equal(ros_io.image_to_rgb(msg), np.repeat(RGB[:, :, :1], 3, axis=2))


@pytest.mark.parametrize(("change", "message"), [
    ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
    ({"width": 0}, "zero size"),
    ({"step": 4}, "step 4 is smaller"),
    ({"height": 60}, "needs"),
])
def test_malformed_images_raise_clear_errors(change: dict, message: str) -> None:
    msg = raw_image("rgb8", RGB)
    fields = {name: getattr(msg, name) for name in ("header", "height", "width", "encoding", "is_bigendian", "step",
                                                    "data")}
    fields.update(change)
    with pytest.raises(ros_io.ImageError, match=message):
        ros_io.image_to_rgb(TYPES.Image(**fields))


def test_compressed_image_and_corrupt_data() -> None:
    import cv2

    ok, png = cv2.imencode(".png", RGB[:, :, ::-1])
    assert ok
    msg = TYPESTORE.types["sensor_msgs/msg/CompressedImage"](header=ros_io.make_header(TYPES, 0, "c"), format="png",
                                                                data=png.reshape(-1))
    np.testing.assert_array_equal(ros_io.compressed_to_rgb(cdr_round_trip(msg)), RGB)
    broken = TYPESTORE.types["sensor_msgs/msg/CompressedImage"](header=msg.header, format="jpeg",
                                                                   data=np.arange(50, dtype=np.uint8))
    with pytest.raises(ros_io.ImageError, match="could not be decoded"):
        ros_io.compressed_to_rgb(broken)


def test_depth_message_is_32fc1_metres_with_the_input_header() -> None:
    depth = RNG.uniform(1, 80, size=(4, 7)).astype(np.float32)
    depth[0, 0] = np.inf
    header = ros_io.make_header(TYPES, 1_500_000_123, "camera_optical")
    msg = cdr_round_trip(ros_io.depth_to_image_msg(TYPES, depth, header))
    assert (msg.encoding, msg.step, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("32FC1", 28, 1, 500_000_123)
    np.testing.assert_array_equal(np.frombuffer(msg.data.tobytes(), "<f4").reshape(4, 7), depth)


def test_camera_info_round_trip() -> None:
    K = np.array([[100.0, 0, 50.5], [0, 110.0, 30.25], [0, 0, 1]])
    camera = ros_io.CameraModel(K=K, height=64, width=208, frame_id="cam")
    msg = cdr_round_trip(ros_io.make_camera_info(TYPES, camera, ros_io.make_header(TYPES, 0, "cam")))
    back = ros_io.camera_info_to_model(msg)
    np.testing.assert_allclose(back.K, K)
    assert (back.height, back.width, back.frame_id) == (64, 208, "cam")
    empty = TYPES.CameraInfo(**{**{f: getattr(msg, f) for f in msg.__dataclass_fields__},
                                "k": np.zeros(9), "p": np.zeros(12)})
    with pytest.raises(ros_io.ImageError, match="no usable intrinsics"):
        ros_io.camera_info_to_model(empty)
    assert not back.distorted  # D all zero: a pinhole camera
    lens = TYPES.CameraInfo(**{**{f: getattr(msg, f) for f in msg.__dataclass_fields__},
                               "d": np.array([-0.3, 0.1, 0.0, 0.0, 0.0])})
    assert ros_io.camera_info_to_model(lens).distorted  # the node then asks for rectified images


def test_odometry_and_transform_carry_pose_and_covariance() -> None:
    T = pose_vec_to_mat(np.array([1.0, -2.0, 0.5, 0.1, -0.2, 0.3]))
    covariance = np.diag(np.arange(1, 7, dtype=np.float64))
    header = ros_io.make_header(TYPES, 7, "odom")
    odom = cdr_round_trip(ros_io.make_odometry(TYPES, header, "base_link", T, covariance))
    from sfm_ros.geometry import quaternion_to_rotation

    q = odom.pose.pose.orientation
    np.testing.assert_allclose(quaternion_to_rotation(np.array([q.x, q.y, q.z, q.w])), T[:3, :3], atol=1e-12)
    p = odom.pose.pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], T[:3, 3])
    np.testing.assert_allclose(odom.pose.covariance.reshape(6, 6), covariance)
    tf = cdr_round_trip(ros_io.make_transform(TYPES, header, "base_link", T))
    assert (tf.header.frame_id, tf.child_frame_id) == ("odom", "base_link")
    assert tf.transform.translation.x == pytest.approx(1.0)


def test_an_estimate_becomes_the_messages_node_and_replay_share() -> None:
    from sfm_ros.camera import CameraModel
    from sfm_ros.odometry.estimate import Estimate
    from sfm_ros.scale import ScaleEstimate, ScaleSource

    T = pose_vec_to_mat(np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.3]))
    covariance = np.diag([1e-4, 2e-4, 3e-4, 1e-6, 2e-6, 3e-6])
    twist_covariance = np.diag([0.01, 0.02, 0.03, 1e-4, 2e-4, 3e-4])
    estimate = Estimate(stamp_ns=5, depth_m=np.full((4, 6), 7.0, np.float32),
                        camera_info_scaled=CameraModel(K=np.diag([10.0, 10.0, 1.0]), height=4, width=6, frame_id="c"),
                        T_odom_camera=T, T_odom_base=T, T_prev_current=np.eye(4), covariance=covariance,
                        scale=ScaleEstimate(1.0, True, ScaleSource.FIXED), timings_ms={},
                        mask=np.full((4, 6), 0.5), twist=np.array([2.0, 0.0, 0.0, 0.0, 0.0, 0.5]),
                        twist_covariance=twist_covariance, dt_s=0.1)
    header = ros_io.make_header(TYPES, 5, "camera_optical")
    messages = ros_io.estimate_messages(TYPES, estimate, header, "odom", "base_link", with_mask=True)
    odometry = cdr_round_trip(messages.odometry)
    assert (odometry.header.frame_id, odometry.child_frame_id) == ("odom", "base_link")
    assert (odometry.twist.twist.linear.x, odometry.twist.twist.angular.z) == (2.0, 0.5)
    np.testing.assert_array_equal(np.reshape(odometry.pose.covariance, (6, 6)), covariance)
    np.testing.assert_array_equal(np.reshape(odometry.twist.covariance, (6, 6)), twist_covariance)
    assert (odometry.pose.pose.position.x, odometry.pose.pose.position.y) == (1.0, 2.0)
    assert messages.depth.header.frame_id == messages.depth_info.header.frame_id == "camera_optical"
    assert messages.depth.encoding == "32FC1" and messages.mask.encoding == "mono8"
    assert messages.transform.header.frame_id == "odom" and messages.transform.header.stamp == header.stamp
    none = ros_io.estimate_messages(TYPES, estimate, header, "odom", "base_link", with_transform=False)
    assert none.transform is None and none.mask is None
    # No twist yet: zero velocity with the unknown-twist variance, never the pose covariance.
    unknown = ros_io.make_odometry(TYPES, header, "base_link", T, covariance)
    np.testing.assert_array_equal(np.reshape(unknown.twist.covariance, (6, 6)), np.eye(6) * 1e6)
