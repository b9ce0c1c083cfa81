"""The rclpy node on real frames: runs where ROS 2 is installed, skipped with the reason elsewhere."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.rclpy, pytest.mark.skipif(
    importlib.util.find_spec("rclpy") is None,
    reason="rclpy is not installed (ROS 2 Humble/Jazzy cannot be installed on this machine); "
           "the ROS 2 CI workflow in .github/workflows runs these")]


def test_node_publishes_depth_and_odometry_for_real_frames(small_bundle: Path) -> None:  # pragma: no cover
    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image

    from sfm_ros import kitti
    from sfm_ros.node import SfmNode
    from sfm_ros.ros_io import CameraModel, MessageTypes, make_camera_info, make_header, rgb_to_image_msg
    from test.conftest import ODOMETRY_06

    rclpy.init()
    try:
        node_args = ["--ros-args", "-p", f"pipeline.bundle:={small_bundle}", "-p", "pipeline.backend:=onnxruntime",
                     "-p", "qos_reliability:=reliable", "-p", "qos_depth:=10"]
        rclpy.shutdown()
        rclpy.init(args=node_args)
        node = SfmNode()
        helper = rclpy.create_node("sfm_test_helper")
        types = MessageTypes.from_rclpy()
        depth_messages, odometry_messages = [], []
        helper.create_subscription(Image, "depth", depth_messages.append, 10)
        helper.create_subscription(Odometry, "odom", odometry_messages.append, 10)
        image_pub = helper.create_publisher(Image, "image", 10)
        info_pub = helper.create_publisher(CameraInfo, "camera_info", 10)
        sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
        camera = CameraModel(sequence.K, *sequence.size, frame_id="camera")
        executor = rclpy.executors.MultiThreadedExecutor()
        executor.add_node(node)
        executor.add_node(helper)
        for i in range(4):
            header = make_header(types, int(sequence.stamps_ns[i]) + 1, "camera")
            info_pub.publish(make_camera_info(types, camera, header))
            executor.spin_once(timeout_sec=0.1)
            image_pub.publish(rgb_to_image_msg(types, kitti.load_rgb(sequence.image_paths[i]), header))
            deadline = time.monotonic() + 10
            while len(depth_messages) <= i and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
        malformed = Image(header=header, height=2, width=2, encoding="rgb8", step=1, data=bytes(12))
        image_pub.publish(malformed)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.05)
        assert len(depth_messages) >= 3 and depth_messages[0].encoding == "32FC1"
        assert depth_messages[0].header.stamp.nanosec == (int(sequence.stamps_ns[0]) + 1) % 1_000_000_000
        assert odometry_messages and np.trace(np.reshape(odometry_messages[-1].pose.covariance, (6, 6))) > 0
        assert sum(node.worker.errors.values()) >= 1  # the malformed message was counted, the node lives
        del Parameter
    finally:
        rclpy.try_shutdown()
