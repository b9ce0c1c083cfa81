"""The rclpy node on real KITTI frames, through real ROS 2 topics, a service and parameters.

Runs wherever rclpy imports: a ROS 2 installation, or the ROS 2 Jazzy wheels that `make test` installs from PyPI
(rclpy, FastDDS and the message packages). tf2_ros is not among them: there the TF test stands in for its three
names (broadcaster, buffer, listener) and checks what the node sends and reads; ROS machines run the real one.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.rclpy, pytest.mark.skipif(
    importlib.util.find_spec("rclpy") is None,
    reason="rclpy is not installed (make test installs the ROS 2 Jazzy wheels; or source a ROS 2 installation)")]


def spin_until(executor, condition, timeout_s: float = 20.0) -> bool:  # pragma: no cover
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return condition()


def start_node(ros_context, bundle: Path, *, tf: bool, extra: tuple = ()):  # pragma: no cover - rclpy machines
    """The sfm node on ``bundle`` (onnxruntime, reliable QoS, no scale, and the ``extra`` parameter overrides) plus a
    helper node, on one executor."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from sfm_ros.node import SfmNode

    overrides = [Parameter("pipeline.bundle", value=str(bundle)),
                 Parameter("pipeline.backend", value="onnxruntime"), Parameter("publish_tf", value=tf),
                 Parameter("lookup_extrinsic_from_tf", value=tf), Parameter("qos_reliability", value="reliable"),
                 Parameter("scale.source", value="none"), *extra]
    node = SfmNode(context=ros_context, parameter_overrides=overrides)
    helper = Node("sfm_test_helper", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(helper)
    return node, helper, executor


def camera_publishers(helper, executor):  # pragma: no cover - rclpy machines
    """The camera's Image and CameraInfo publishers on the helper node, once the node under test subscribes."""
    from sensor_msgs.msg import CameraInfo, Image

    image_publisher = helper.create_publisher(Image, "image", 10)
    info_publisher = helper.create_publisher(CameraInfo, "camera_info", 10)
    assert spin_until(executor, lambda: image_publisher.get_subscription_count() > 0)
    return image_publisher, info_publisher


def test_node_on_real_frames(small_bundle: Path, ros_context) -> None:  # pragma: no cover - rclpy machines
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image
    from std_srvs.srv import Trigger

    from sfm_ros import kitti
    from sfm_ros.ros_io import CameraModel, MessageTypes, make_camera_info, make_header, rgb_to_image_msg
    from test.conftest import ODOMETRY_06

    node, helper, executor = start_node(ros_context, small_bundle, tf=False)
    depth, depth_info, odometry, diagnostics = [], [], [], []
    helper.create_subscription(Image, "depth/image", depth.append, 10)
    helper.create_subscription(CameraInfo, "depth/camera_info", depth_info.append, 10)
    helper.create_subscription(Odometry, "sfm/odom", odometry.append, 10)
    helper.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    image_publisher, info_publisher = camera_publishers(helper, executor)
    types = MessageTypes.from_rclpy()
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    camera = CameraModel(K=sequence.K, height=sequence.size[0], width=sequence.size[1], frame_id="camera")
    stamps = []
    try:
        for i in range(4):
            stamp = int(sequence.stamps_ns[i]) + 1_000_000_000
            header = make_header(types, stamp, "camera")
            info_publisher.publish(make_camera_info(types, camera, header))
            assert spin_until(executor, lambda: node.camera is not None)
            image_publisher.publish(rgb_to_image_msg(types, kitti.load_rgb(sequence.image_paths[i]), header, "bgr8"))
            assert spin_until(executor, lambda n=i: len(depth) > n), f"no depth for frame {i}"
            stamps.append(stamp)
        # A malformed image (step smaller than a row) is counted and skipped; the node goes on.
        bad = Image(header=header, height=2, width=2, encoding="rgb8", step=1, data=bytes(12))
        image_publisher.publish(bad)
        assert spin_until(executor, lambda: sum(node.worker.errors.values()) == 1)
        good_header = make_header(types, stamps[-1] + 100_000_000, "camera")
        image_publisher.publish(rgb_to_image_msg(types, kitti.load_rgb(sequence.image_paths[4]), good_header))
        assert spin_until(executor, lambda: len(depth) == 5)
        assert spin_until(executor, lambda: len(odometry) == 5 and len(depth_info) == 5)

        received = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in depth[:4]]
        assert received == stamps
        assert depth[0].encoding == "32FC1" and (depth[0].height, depth[0].width) == (64, 208)
        assert depth[0].header.frame_id == "camera"
        values = np.frombuffer(bytes(depth[0].data), "<f4")
        assert np.isfinite(values).any() and (values[np.isfinite(values)] > 0).all()
        assert (depth_info[0].height, depth_info[0].width) == (64, 208)
        assert depth_info[0].k[0] == pytest.approx(sequence.K[0, 0] * 208 / 1226)
        assert odometry[0].header.frame_id == "sfm_odom" and odometry[0].child_frame_id == "base_link"
        assert np.trace(np.reshape(odometry[-1].pose.covariance, (6, 6))) > 0

        client = helper.create_client(Trigger, "reset")
        assert client.wait_for_service(timeout_sec=5)
        future = client.call_async(Trigger.Request())
        assert spin_until(executor, future.done)
        assert future.result().success

        refused = node.set_parameters([Parameter("scale.camera_height_m", value=-1.0)])[0]
        assert not refused.successful and "camera_height_m" in refused.reason
        read_only = node.set_parameters([Parameter("pipeline.backend", value="torch")])[0]
        assert not read_only.successful

        def latest_pipeline_status() -> dict[str, str]:
            statuses = [s for d in diagnostics for s in d.status if s.name.endswith("pipeline")]
            return {kv.key: kv.value for kv in statuses[-1].values} if statuses else {}

        # Diagnostics are periodic: one published while the frames were still arriving counts fewer; wait for the
        # count of all six rather than taking the first report.
        assert spin_until(executor, lambda: latest_pipeline_status().get("frames_processed") == "6", timeout_s=15)
        keys = latest_pipeline_status()
        assert keys["frames_processed"] == "6" and "onnxruntime" in keys["backend"] and "ImageError" in keys["errors"]
        # rclpy's own parameters are not ours to validate (and sim time stops wall timers: set it last).
        assert node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful
    finally:
        node.destroy_node()
        helper.destroy_node()


def test_missing_bundle_is_a_configuration_error(ros_context) -> None:  # pragma: no cover - rclpy machines
    from rclpy.parameter import Parameter

    from sfm_ros.bundle import BundleError
    from sfm_ros.node import SfmNode

    with pytest.raises(BundleError, match="does not exist"):
        SfmNode(context=ros_context, parameter_overrides=[Parameter("pipeline.bundle", value="/nonexistent/bundle"),
                                                          Parameter("publish_tf", value=False),
                                                          Parameter("lookup_extrinsic_from_tf", value=False)])


class _StandInTf2:  # pragma: no cover - rclpy machines
    """The three tf2_ros names the node uses, only for machines whose ROS 2 has no tf2_ros (the PyPI wheels);
    wherever tf2_ros imports the test uses it.

    The broadcaster records what the node sends; the buffer answers base_link <- camera from the second lookup on
    (the first raises, as tf2 does before the static transform arrives). On a full ROS 2 install the real
    tf2_ros is there and `.github/workflows/ros2.yml` runs the node with it.
    """

    class TransformException(Exception):  # noqa: N818 - tf2_ros's name
        pass

    def __init__(self, extrinsic_msg) -> None:
        self.sent, self.lookups, self.extrinsic_msg = [], [], extrinsic_msg
        stand_in = self

        class TransformBroadcaster:
            def __init__(self, node) -> None:
                pass

            def sendTransform(self, transform) -> None:
                stand_in.sent.append(transform)

        class Buffer:
            def lookup_transform(self, target, source, time):
                stand_in.lookups.append((target, source))
                if len(stand_in.lookups) == 1:
                    raise stand_in.TransformException("not yet")
                return stand_in.extrinsic_msg

        self.TransformBroadcaster, self.Buffer = TransformBroadcaster, Buffer
        self.TransformListener = lambda buffer, node: (buffer, node)


def test_node_broadcasts_tf_and_reads_the_extrinsic_from_tf(  # pragma: no cover - rclpy machines
        small_bundle: Path, ros_context, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from nav_msgs.msg import Odometry

    from sfm_ros import kitti
    from sfm_ros.camera import CameraModel
    from sfm_ros.geometry import quaternion_to_rotation
    from sfm_ros.ros_io import MessageTypes, make_camera_info, make_header, make_transform, rgb_to_image_msg
    from test.conftest import ODOMETRY_06

    types = MessageTypes.from_rclpy()
    # KITTI's camera in the car's base_link: optical z forward -> base x forward, 1.65 m up, 0.27 m ahead.
    T_base_camera = np.array([[0, 0, 1, 0.27], [-1, 0, 0, 0.0], [0, -1, 0, 1.65], [0, 0, 0, 1.0]])
    extrinsic = make_transform(types, make_header(types, 0, "base_link"), "camera", T_base_camera)
    real_tf2 = importlib.util.find_spec("tf2_ros") is not None
    if not real_tf2:  # the PyPI wheels: a stand-in records what the node sends and answers its lookups
        stand_in = _StandInTf2(extrinsic)
        monkeypatch.setitem(sys.modules, "tf2_ros", stand_in)
    node, helper, executor = start_node(ros_context, small_bundle, tf=True)
    sent, lookups = (stand_in.sent, stand_in.lookups) if not real_tf2 else ([], None)
    if real_tf2:  # a ROS 2 installation: the real broadcaster, buffer and listener, over /tf and /tf_static
        import tf2_ros
        from tf2_msgs.msg import TFMessage

        static_broadcaster = tf2_ros.StaticTransformBroadcaster(helper)
        helper.create_subscription(TFMessage, "/tf", lambda msg: sent.extend(
            t for t in msg.transforms if t.child_frame_id == "base_link"), 10)
    odometry = []
    helper.create_subscription(Odometry, "sfm/odom", odometry.append, 10)
    image_publisher, info_publisher = camera_publishers(helper, executor)
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    camera = CameraModel(K=sequence.K, height=sequence.size[0], width=sequence.size[1], frame_id="camera")
    default_extrinsic = node.pipeline.T_base_camera.copy()
    try:
        for i in range(3):
            header = make_header(types, int(sequence.stamps_ns[i]) + 1_000_000_000, "camera")
            info_publisher.publish(make_camera_info(types, camera, header))
            assert spin_until(executor, lambda: node.camera is not None)
            image_publisher.publish(rgb_to_image_msg(types, kitti.load_rgb(sequence.image_paths[i]), header))
            assert spin_until(executor, lambda n=i: len(odometry) > n), f"no odometry for frame {i}"
            if i == 0:  # TF had no extrinsic yet: the parameter's stays
                np.testing.assert_array_equal(node.pipeline.T_base_camera, default_extrinsic)
                if real_tf2:
                    static_broadcaster.sendTransform(extrinsic)
                    spin_until(executor, lambda: False, timeout_s=0.5)
        if lookups is not None:
            assert lookups[0] == ("base_link", "camera")
        np.testing.assert_allclose(node.pipeline.T_base_camera, T_base_camera, atol=1e-12)
        assert spin_until(executor, lambda: len(sent) == 3, timeout_s=5)
        for transform, odom in zip(sent, odometry, strict=True):
            assert (transform.header.frame_id, transform.child_frame_id) == ("sfm_odom", "base_link")
            assert transform.header.stamp == odom.header.stamp
            t, q = transform.transform.translation, transform.transform.rotation
            p, o = odom.pose.pose.position, odom.pose.pose.orientation
            np.testing.assert_allclose([t.x, t.y, t.z], [p.x, p.y, p.z], atol=1e-9)
            np.testing.assert_allclose(quaternion_to_rotation(np.array([q.x, q.y, q.z, q.w])),
                                       quaternion_to_rotation(np.array([o.x, o.y, o.z, o.w])), atol=1e-9)
    finally:
        node.destroy_node()
        helper.destroy_node()


def _frames_and_camera():  # pragma: no cover - rclpy machines
    from sfm_ros import kitti
    from sfm_ros.camera import CameraModel
    from test.conftest import ODOMETRY_06

    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    camera = CameraModel(K=sequence.K, height=sequence.size[0], width=sequence.size[1], frame_id="camera")
    return [kitti.load_rgb(p) for p in sequence.image_paths[:12]], camera


def test_parameters_apply_live_or_are_refused_with_the_reason(small_bundle: Path,
                                                             ros_context) -> None:  # pragma: no cover - rclpy
    from nav_msgs.msg import Odometry
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from sfm_ros.ros_io import MessageTypes, make_camera_info, make_header, rgb_to_image_msg

    node, helper, executor = start_node(ros_context, small_bundle, tf=False)
    depth, odometry = [], []
    helper.create_subscription(Image, "depth/image", depth.append, 10)
    helper.create_subscription(Odometry, "sfm/odom", odometry.append, 10)
    image_publisher, info_publisher = camera_publishers(helper, executor)
    types = MessageTypes.from_rclpy()
    frames, camera = _frames_and_camera()

    def send(i: int) -> None:
        header = make_header(types, 1_000_000_000 + i * 100_000_000, "camera")
        info_publisher.publish(make_camera_info(types, camera, header))
        image_publisher.publish(rgb_to_image_msg(types, frames[i], header))
        assert spin_until(executor, lambda: len(odometry) > i and len(depth) > i), f"no output for frame {i}"

    try:
        send(0)
        assert odometry[0].header.frame_id == "sfm_odom"
        assert np.isfinite(np.frombuffer(bytes(depth[0].data), "<f4")).any()
        accepted = node.set_parameters([Parameter("odom_frame", value="odom_camera"),
                                        Parameter("pipeline.max_depth_m", value=0.1)])
        assert all(result.successful for result in accepted)
        send(1)
        assert odometry[1].header.frame_id == "odom_camera"  # applied from the next frame on
        assert np.isinf(np.frombuffer(bytes(depth[1].data), "<f4")).all()  # every depth beyond 0.1 units
        # Values only the node's own validation refuses (rclpy checks ranges, not these).
        for name, value, reason in (("pipeline.depth_output_size", "huge", "depth_output_size"),
                                    ("scale.source", "external_speed", "speed_topic"),
                                    ("pipeline.T_base_camera", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "quaternion")):
            refused = node.set_parameters([Parameter(name, value=value)])[0]
            assert not refused.successful and reason in refused.reason, (name, refused.reason)
        assert node.get_parameter("pipeline.depth_output_size").value == "network"
        descriptor = node.describe_parameter("lookup_extrinsic_from_tf")
        assert descriptor.read_only and "start" in descriptor.description
        # As `ros2 param set` and rqt set it: through the parameter service, whose double arrays arrive as
        # array.array, not as a list (the camera 1.2 m up and 0.3 m ahead of base_link, optical axes).
        from rcl_interfaces.msg import Parameter as ParameterMessage
        from rcl_interfaces.msg import ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        client = helper.create_client(SetParameters, f"{node.get_fully_qualified_name()}/set_parameters")
        assert spin_until(executor, client.service_is_ready)
        mounting = [0.3, 0.0, 1.2, -0.5, 0.5, -0.5, 0.5]
        future = client.call_async(SetParameters.Request(parameters=[ParameterMessage(
            name="pipeline.T_base_camera", value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY,
                                                                double_array_value=mounting))]))
        assert spin_until(executor, future.done)
        result = future.result().results[0]
        assert result.successful, result.reason
        assert spin_until(executor, lambda: np.allclose(node.pipeline.T_base_camera[:3, 3], mounting[:3]))
        np.testing.assert_allclose(node.pipeline.T_base_camera[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]],
                                   atol=1e-12)
    finally:
        node.destroy_node()
        helper.destroy_node()


def test_bad_stamps_are_dropped_or_restart_and_the_diagnostics_count_them(
        small_bundle: Path, ros_context) -> None:  # pragma: no cover - rclpy
    """Over real DDS: a repeated stamp publishes nothing, time going backwards and a gap restart tracking with the
    "lost" covariance, and /diagnostics counts each."""
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry

    from sfm_ros.ros_io import MessageTypes, make_camera_info, make_header, rgb_to_image_msg

    node, helper, executor = start_node(ros_context, small_bundle, tf=False)
    odometry, diagnostics = [], []
    helper.create_subscription(Odometry, "sfm/odom", odometry.append, 10)
    helper.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    image_publisher, info_publisher = camera_publishers(helper, executor)
    types = MessageTypes.from_rclpy()
    frames, camera = _frames_and_camera()
    stamps_s = [1.0, 1.1, 1.1, 1.05, 9.0]  # a repeat, time going backwards, a gap of 7.95 s

    class NoMountingInTF:  # tf2_ros's Buffer where the camera's frame is not in the tree (tf2_ros: not here)
        def lookup_transform(self, *_args):
            raise node._transform_exception("camera does not exist")

    node.tf_listener, node.tf_buffer = object(), NoMountingInTF()
    mounting = node.pipeline.T_base_camera.copy()
    try:
        # A wheel-odometry message with a NaN twist is counted and skipped (it used to make the scale NaN for good).
        nan_speed = Odometry()
        nan_speed.twist.twist.linear.x = float("nan")
        node._on_speed(nan_speed)
        for i, stamp_s in enumerate(stamps_s):
            header = make_header(types, int(stamp_s * 1e9), "camera")
            info_publisher.publish(make_camera_info(types, camera, header))
            image_publisher.publish(rgb_to_image_msg(types, frames[i], header))
            # Each frame is taken (published or counted as an error) before the next is sent.
            assert spin_until(executor, lambda taken=i + 1: node.worker.processed >= taken)
        assert spin_until(executor, lambda: len(odometry) >= 4, timeout_s=5)
        published = [m.header.stamp.sec + m.header.stamp.nanosec / 1e9 for m in odometry]
        assert published == pytest.approx([1.0, 1.1, 1.05, 9.0])  # the repeat published nothing
        for message in odometry[2:]:
            np.testing.assert_allclose(np.diag(np.reshape(message.pose.covariance, (6, 6))),
                                       [1e4] * 3 + [np.pi**2] * 3, rtol=1e-9)
        diagnostics.clear()
        assert spin_until(executor, lambda: bool(diagnostics), timeout_s=5)
        status = next(s for s in diagnostics[-1].status if s.name.endswith("pipeline"))
        values = {kv.key: kv.value for kv in status.values}
        assert values["tracking_restarts"] == "2"
        assert "time went backwards': 1" in values["restart_causes"], values["restart_causes"]
        assert "gap between frames': 1" in values["restart_causes"], values["restart_causes"]
        assert "FrameError: repeated stamp': 1" in values["errors"], values["errors"]
        assert "speed not finite': 1" in values["errors"], values["errors"]
        assert values["extrinsic_lookup_failures"] == str(len(stamps_s))  # every frame looked, none found
        np.testing.assert_array_equal(node.pipeline.T_base_camera, mounting)  # the parameter's mounting kept
    finally:
        node.destroy_node()
        helper.destroy_node()


def test_resets_during_a_30_hz_stream(small_bundle: Path, ros_context) -> None:  # pragma: no cover - rclpy
    from nav_msgs.msg import Odometry
    from std_srvs.srv import Trigger

    from sfm_ros.ros_io import MessageTypes, make_camera_info, make_header, rgb_to_image_msg

    node, helper, executor = start_node(ros_context, small_bundle, tf=False)
    odometry = []
    helper.create_subscription(Odometry, "sfm/odom", odometry.append, 100)
    image_publisher, info_publisher = camera_publishers(helper, executor)
    client = helper.create_client(Trigger, "reset")
    assert client.wait_for_service(timeout_sec=5)
    types = MessageTypes.from_rclpy()
    frames, camera = _frames_and_camera()
    images = [rgb_to_image_msg(types, f, make_header(types, 0, "camera")) for f in frames]
    responses = []
    try:
        # The intrinsics first: the first image must not race its CameraInfo to the inference thread (a frame
        # before any CameraInfo is skipped and counted, which is not what this test is about).
        info_publisher.publish(make_camera_info(types, camera, make_header(types, 1_000_000_000, "camera")))
        assert spin_until(executor, lambda: node.camera is not None)
        for i in range(90):  # three seconds of a 30 Hz camera, a reset every 0.4 s
            header = make_header(types, 1_000_000_000 + i * 33_333_333, "camera")
            info_publisher.publish(make_camera_info(types, camera, header))
            image = images[i % len(images)]
            image.header = header
            image_publisher.publish(image)
            if i % 12 == 6:
                future = client.call_async(Trigger.Request())
                assert spin_until(executor, future.done, timeout_s=10)
                responses.append(future.result())
            deadline = time.monotonic() + 1 / 30
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.005)
        assert node.worker.wait_idle(10)
        spin_until(executor, lambda: False, timeout_s=0.5)
        assert not node.worker.errors, dict(node.worker.errors)
        assert len(responses) == 7 and all(r.success for r in responses)
        stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in odometry]
        assert stamps == sorted(stamps)
        checked = 0
        for response in responses:
            if "after the frame stamped" not in response.message:
                continue
            last = int(response.message.rsplit("stamped ", 1)[1].split()[0])
            first_after = next((m for m, s in zip(odometry, stamps, strict=True) if s > last), None)
            if first_after is None:
                continue
            p, q = first_after.pose.pose.position, first_after.pose.pose.orientation
            assert (p.x, p.y, p.z, q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
            np.testing.assert_allclose(np.reshape(first_after.pose.covariance, (6, 6)), np.eye(6) * 1e-6, atol=1e-18)
            checked += 1
        assert checked >= 5
    finally:
        node.destroy_node()
        helper.destroy_node()


def test_without_tf2_ros_publishing_tf_is_a_clear_error(small_bundle: Path, ros_context,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # pragma: no cover
    import sys

    from rclpy.parameter import Parameter

    from sfm_ros.config import ConfigError
    from sfm_ros.node import SfmNode

    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # import fails, as on a machine without it
    base = [Parameter("pipeline.bundle", value=str(small_bundle)), Parameter("pipeline.backend", value="onnxruntime")]
    with pytest.raises(ConfigError, match="need the ROS package tf2_ros"):
        SfmNode(context=ros_context, parameter_overrides=[*base, Parameter("publish_tf", value=True)])
    node = SfmNode(context=ros_context, parameter_overrides=[*base, Parameter("publish_tf", value=False),
                                                             Parameter("lookup_extrinsic_from_tf", value=False)])
    try:
        refused = node.set_parameters([Parameter("publish_tf", value=True)])[0]
        assert not refused.successful and "tf2_ros" in refused.reason
    finally:
        node.destroy_node()


def test_malformed_message_storm_at_30_hz(small_bundle: Path, ros_context) -> None:  # pragma: no cover - rclpy
    """Hundreds of bad Images and CameraInfos over real DDS: the node stays up, counts each kind in its
    diagnostics, and publishes again on the next good frame."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import CameraInfo, Image

    from sfm_ros.ros_io import MessageTypes, make_camera_info, make_header, rgb_to_image_msg

    node, helper, executor = start_node(ros_context, small_bundle, tf=False)
    depth, diagnostics = [], []
    helper.create_subscription(Image, "depth/image", depth.append, 10)
    helper.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    image_publisher, info_publisher = camera_publishers(helper, executor)
    types = MessageTypes.from_rclpy()
    frames, camera = _frames_and_camera()
    rng = np.random.default_rng(7)

    def bad_image(kind: str, header) -> Image:
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        data = bytes(rng.integers(0, 256, height * width * 3, dtype=np.uint8))
        if kind == "encoding":
            return Image(header=header, height=height, width=width, encoding="yuv422", step=width * 2, data=data)
        if kind == "step":
            return Image(header=header, height=height, width=width, encoding="rgb8", step=width, data=data)
        if kind == "truncated":
            return Image(header=header, height=height, width=width, encoding="bgr8", step=width * 3,
                         data=data[: len(data) // 2])
        if kind == "zero":
            return Image(header=header, height=0, width=width, encoding="rgb8", step=width * 3, data=b"")
        return Image(header=header, height=height, width=width, encoding="rgb8", step=width * 3, data=data)  # size

    def bad_info(kind: str, header) -> CameraInfo:
        info = make_camera_info(types, camera, header)
        k = list(info.k)
        k[0] = float("nan") if kind == "nan" else -5.0
        info.k = k
        info.p = [0.0] * 12
        return info

    kinds = ["encoding", "step", "truncated", "zero", "size", "nan", "negative"]
    try:
        info_publisher.publish(make_camera_info(types, camera, make_header(types, 0, "camera")))
        assert spin_until(executor, lambda: node.camera is not None)
        for i in range(240):
            header = make_header(types, 1_000_000_000 + i * 33_333_333, "camera")
            kind = kinds[i % len(kinds)] if i < 210 else str(rng.choice(kinds))
            if kind in ("nan", "negative"):
                info_publisher.publish(bad_info(kind, header))
            else:
                image_publisher.publish(bad_image(kind, header))
            deadline = time.monotonic() + 1 / 30
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.005)
        assert node.worker.wait_idle(10)
        good = make_header(types, 20_000_000_000, "camera")
        info_publisher.publish(make_camera_info(types, camera, good))
        image_publisher.publish(rgb_to_image_msg(types, frames[0], good))
        assert spin_until(executor, lambda: any(m.header.stamp.sec == 20 for m in depth)), "no depth after the storm"
        diagnostics.clear()
        assert spin_until(executor, lambda: bool(diagnostics), timeout_s=5)
        status = next(s for s in diagnostics[-1].status if s.name.endswith("pipeline"))
        errors = next(kv.value for kv in status.values if kv.key == "errors")
        for expected in ("unsupported image encoding", "image step", "image data has", "zero size",
                         "camera model is", "non-finite intrinsics", "no usable intrinsics"):
            assert expected.split()[0] in errors, (expected, errors)
        assert "CameraInfo" in errors and status.level == DiagnosticStatus.WARN  # messages were skipped
        assert node.worker.call(lambda: "alive", timeout_s=5.0) == "alive"  # its thread still runs commands
    finally:
        node.destroy_node()
        helper.destroy_node()


def test_the_node_rectifies_raw_images_when_asked(small_bundle: Path, ros_context) -> None:  # pragma: no cover
    """``rectify`` (read-only): raw frames of a plumb_bob lens reach the pipeline undistorted, as ``Rectifier`` makes
    them from the CameraInfo; a lens model the node cannot undistort is counted in the diagnostics, frame by frame;
    the parameter cannot change while frames flow (raw and rectified frames would mix in one odometry)."""
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from sfm_ros import kitti
    from sfm_ros.camera import Rectifier
    from sfm_ros.ros_io import (
        CameraModel,
        MessageTypes,
        camera_info_to_model,
        make_camera_info,
        make_header,
        rgb_to_image_msg,
    )
    from test.conftest import ODOMETRY_06

    node, helper, executor = start_node(ros_context, small_bundle, tf=False, extra=(Parameter("rectify", value=True),))
    depth, seen = [], []
    helper.create_subscription(Image, "depth/image", depth.append, 10)
    image_publisher, info_publisher = camera_publishers(helper, executor)
    process = node.pipeline.process
    node.pipeline.process = lambda stamp, rgb, camera: (seen.append(rgb), process(stamp, rgb, camera))[1]
    types = MessageTypes.from_rclpy()
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    camera = CameraModel(K=sequence.K, height=sequence.size[0], width=sequence.size[1], frame_id="camera")
    rgb = kitti.load_rgb(sequence.image_paths[0])

    def send(i: int, model: str, D: list[float]):
        header = make_header(types, 1_000_000_000 + i * 100_000_000, "camera")
        info = make_camera_info(types, camera, header)
        info.distortion_model, info.d = model, D
        info_publisher.publish(info)
        assert spin_until(executor, lambda: node.camera is not None and node.camera.distortion_model == model)
        image_publisher.publish(rgb_to_image_msg(types, rgb, header))
        return info

    try:
        info = send(0, "plumb_bob", [-0.37, 0.2, 1e-3, -5e-4, -0.07])
        assert spin_until(executor, lambda: len(depth) == 1)
        expected = Rectifier()(rgb, camera_info_to_model(info))
        assert not np.array_equal(expected, rgb) and np.array_equal(seen[0], expected)
        send(1, "fov", [0.9])
        assert spin_until(executor, lambda: sum(node.worker.errors.values()) == 1)
        assert "LensError" in next(iter(node.worker.errors)) and len(depth) == 1 and len(seen) == 1
        assert not node.set_parameters([Parameter("rectify", value=False)])[0].successful
    finally:
        node.destroy_node()
        helper.destroy_node()
