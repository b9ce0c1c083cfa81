"""The ROS 2 node: parameters -> NodeConfig, camera messages -> Pipeline (on a worker thread) -> messages.

Subscribes: ``image`` (sensor_msgs/Image, or ``image/compressed`` CompressedImage with image_transport
compressed), ``camera_info`` (sensor_msgs/CameraInfo), optionally a speed topic (nav_msgs/Odometry or
geometry_msgs/TwistStamped).
Publishes: ``depth/image`` (32FC1 metres, the input header) with ``depth/camera_info`` beside it (the names
depth_image_proc and image_transport expect), ``sfm/odom`` (nav_msgs/Odometry, non-zero covariance), TF
``odom_frame -> base_frame`` (sfm_odom -> base_link; only with ``publish_tf``), ``explainability`` (mono8,
``publish_mask``), and ``/diagnostics``. Service: ``reset`` (std_srvs/Trigger). The defaults never contest a
mobile base's wheel odometry (``/odom``, ``odom -> base_link``): the topic is namespaced, and nothing goes on TF
unless asked, since base_link can have one parent only.

Parameters are declared from the ``NodeConfig`` dataclass (description, range, choices, read-only) and validated
before anything heavy loads. A writable parameter set at run time is validated the same way and then applied from
the next frame on (frame ids, publish_tf, publish_mask, the pipeline's and the scale's settings); the rest are
read-only, each saying why. Images are subscribed with the sensor-data QoS at depth 1 (overridable through ROS QoS
overrides); the callback only hands the newest message to the worker thread, and everything that touches the
pipeline (frames, resets, speeds, new settings) runs on that one thread.
"""

from __future__ import annotations

import collections
import importlib
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger

from sfm_ros.backends import BackendError, check_mask_output
from sfm_ros.bundle import BundleError
from sfm_ros.camera import CameraModel, Rectifier
from sfm_ros.config import ConfigError, NodeConfig, ScaleSource, from_dict, nest, parameter_table
from sfm_ros.errors import error_kind
from sfm_ros.geometry import quaternion_to_rotation
from sfm_ros.odometry.pipeline import Pipeline
from sfm_ros.ros_io import (
    ImageError,
    MessageTypes,
    camera_info_to_model,
    compressed_to_rgb,
    estimate_messages,
    image_to_rgb,
    stamp_to_ns,
)
from sfm_ros.worker import LatestFrameWorker

__all__ = ["DEPTH_INFO_TOPIC", "DEPTH_TOPIC", "ODOM_TOPIC", "SfmNode", "main", "validate_node_config"]

RESET_TIMEOUT_S = 2.0
# TF's static transforms arrive a moment after the start: warn about a missing camera mounting only after this many
# frames in a row without it (a second at 30 Hz).
EXTRINSIC_LOOKUP_PATIENCE_FRAMES = 30
# Output topics, relative to the node's namespace: depth_image_proc's names for a depth image and its CameraInfo,
# and an odometry topic that cannot be a mobile base's /odom.
DEPTH_TOPIC, DEPTH_INFO_TOPIC, ODOM_TOPIC = "depth/image", "depth/camera_info", "sfm/odom"


def _descriptor(spec: Any) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = f"one of {list(spec.choices)}"
    if spec.range and isinstance(spec.default, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                              to_value=float(spec.range[1]), step=0.0)]
    elif spec.range and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        descriptor.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return descriptor


def _tf2_ros() -> Any:
    """tf2_ros, needed only for publish_tf and the TF extrinsic lookup (a clear error where it is missing)."""
    try:
        return importlib.import_module("tf2_ros")
    except ImportError as exc:
        raise ConfigError(f"publish_tf and lookup_extrinsic_from_tf need the ROS package tf2_ros ({exc}); install "
                          "it or set both parameters to false") from None


def validate_node_config(values: dict[str, Any]) -> NodeConfig:
    """The node's configuration from flat parameter values: the dataclass checks, then what only the node knows
    (a speed topic for external speed, tf2_ros for TF). Raises ConfigError naming the problem."""
    config = from_dict(NodeConfig, nest(values))
    if not config.pipeline.bundle:
        raise ConfigError("pipeline.bundle is empty: give the model bundle folder (launch argument bundle:=, or "
                          "-p pipeline.bundle:=/path/to/bundle)")
    if config.scale.source == ScaleSource.EXTERNAL_SPEED and not config.speed_topic:
        raise ConfigError("scale.source external_speed needs speed_topic (set at start-up: the subscription is "
                          "created then)")
    if config.publish_tf or config.lookup_extrinsic_from_tf:
        _tf2_ros()
    return config


class SfmNode(Node):
    """Monocular depth and visual odometry from one camera."""

    def __init__(self, **node_options: Any) -> None:
        super().__init__("sfm", **node_options)
        specs = parameter_table(NodeConfig)
        for spec in specs:
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            self.declare_parameter(spec.name, default, _descriptor(spec))
        self._parameter_names = {spec.name for spec in specs}
        values = {spec.name: self.get_parameter(spec.name).value for spec in specs}
        self.config: NodeConfig = validate_node_config(values)  # before loading models
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pipeline = Pipeline(self.config.pipeline, self.config.scale)
        check_mask_output(self.pipeline.backend, self.config.publish_mask)
        self.types = MessageTypes.from_rclpy()
        self.get_logger().info(f"backend: {self.pipeline.backend.description}")

        config = self.config
        image_qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=config.qos_depth,
                               reliability=QoSReliabilityPolicy.BEST_EFFORT if config.qos_reliability == "best_effort"
                               else QoSReliabilityPolicy.RELIABLE)
        overrides = QoSOverridingOptions.with_default_policies()
        if config.image_transport == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", self._on_image, image_qos,
                                     qos_overriding_options=overrides)
        else:
            self.create_subscription(Image, "image", self._on_image, image_qos, qos_overriding_options=overrides)
        self.camera: CameraModel | None = None
        self.rectifier = Rectifier()  # used by the worker only
        self.message_errors: collections.Counter[str] = collections.Counter()
        if config.use_camera_info:  # else NodeConfig has checked the intrinsics
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data)
        if config.speed_topic:
            speed_type = Odometry if config.speed_topic_type == "odometry" else TwistStamped
            self.create_subscription(speed_type, config.speed_topic, self._on_speed, 10)
        self.depth_publisher = self.create_publisher(Image, DEPTH_TOPIC, 10)
        self.info_publisher = self.create_publisher(CameraInfo, DEPTH_INFO_TOPIC, 10)
        self.odom_publisher = self.create_publisher(Odometry, ODOM_TOPIC, 10)
        self.mask_publisher = None
        self.tf_broadcaster = None
        self._create_optional_publishers(config)
        tf2 = _tf2_ros() if config.lookup_extrinsic_from_tf else None
        self.tf_buffer = tf2.Buffer() if config.lookup_extrinsic_from_tf else None
        self.tf_listener = tf2.TransformListener(self.tf_buffer, self) if config.lookup_extrinsic_from_tf else None
        self._transform_exception = tf2.TransformException if tf2 is not None else Exception
        self.extrinsic_lookup_failures = 0  # frames whose base -> camera transform TF did not give
        self._failed_lookups_in_a_row = 0
        self.create_service(Trigger, "reset", self._on_reset)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.worker = LatestFrameWorker(self._process, self._on_new_error)
        self._last_estimate: Any = None
        self._last_stamp_ns: int | None = None
        self._started = time.monotonic()

    def _create_optional_publishers(self, config: NodeConfig) -> None:
        """The TF broadcaster and mask publisher, once first wanted (never destroyed: the worker may be using one;
        turning the option off stops publishing)."""
        if config.publish_tf and self.tf_broadcaster is None:
            self.tf_broadcaster = _tf2_ros().TransformBroadcaster(self)
        if config.publish_mask and self.mask_publisher is None:
            self.mask_publisher = self.create_publisher(Image, "explainability", 10)

    # ---- callbacks (cheap: the worker does the work) ----------------------------------------------------
    def _on_image(self, msg: Any) -> None:
        self.worker.submit(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self.camera = camera_info_to_model(msg)
            if self.camera.distorted and not self.config.rectify:  # said once: the pinhole model needs rectified
                self.get_logger().warning(
                    f"the camera has lens distortion ({self.camera.distortion_model}, D={list(self.camera.D)}): "
                    "if the image topic carries raw images, set rectify: true (or subscribe to image_proc's "
                    "image_rect); the node reads images through the rectified projection P", once=True)
        except (ImageError, ValueError) as exc:  # counted like the frames' errors, in the diagnostics
            self._count_message_error(f"CameraInfo {error_kind(exc)}", exc)

    def _on_speed(self, msg: Any) -> None:
        v = msg.twist.twist.linear if isinstance(msg, Odometry) else msg.twist.linear
        speed = float(np.linalg.norm([v.x, v.y, v.z]))
        if not np.isfinite(speed):  # the last good speed stays
            self._count_message_error("speed not finite", ValueError(f"speed message with velocity {v.x, v.y, v.z}"))
            return
        self.worker.call(lambda: self.pipeline.set_speed(speed))

    def _count_message_error(self, kind: str, exc: BaseException) -> None:
        """Count a skipped CameraInfo or speed message in the diagnostics; log each kind of error once."""
        self.message_errors[kind] += 1
        if self.message_errors[kind] == 1:
            self.get_logger().warning(f"ignoring messages with a new kind of error ({kind}): {exc}")

    def _reset_on_worker(self) -> int | None:
        self.pipeline.reset("reset service called")
        return self._last_stamp_ns

    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            last = self.worker.call(self._reset_on_worker, timeout_s=RESET_TIMEOUT_S)
        except TimeoutError:
            response.success = False
            response.message = (f"the inference thread is busy for over {RESET_TIMEOUT_S} s; the reset is queued and "
                                "applies before its next frame")
            return response
        after = f" after the frame stamped {last} ns" if last is not None else ""
        response.success, response.message = True, f"odometry and pose window reset{after}"
        return response

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        ours = [p for p in parameters if p.name in self._parameter_names]
        if not ours:  # use_sim_time and the like belong to rclpy
            return SetParametersResult(successful=True)
        values = {name: self.get_parameter(name).value for name in self._parameter_names}
        values.update({p.name: p.value for p in ours})
        try:
            config = validate_node_config(values)
            check_mask_output(self.pipeline.backend, config.publish_mask)
            self._create_optional_publishers(config)
        except (ConfigError, BackendError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if config.pipeline != self.config.pipeline or config.scale != self.config.scale:
            self.worker.call(lambda: self.pipeline.configure(config.pipeline, config.scale))
        self.config = config  # frame ids and publishing options: read once per frame by the worker
        self.get_logger().info(f"parameters set: {', '.join(f'{p.name}={p.value!r}' for p in ours)}")
        return SetParametersResult(successful=True)

    def _on_new_error(self, kind: str, exc: BaseException) -> None:
        self.get_logger().error(f"skipping frames with a new kind of error ({kind}): {exc}")

    # ---- the worker ---------------------------------------------------------------------------------------
    def _camera_for(self, msg: Any, height: int, width: int) -> CameraModel:
        config = self.config
        if not config.use_camera_info:
            return CameraModel(K=config.camera_matrix(), height=height, width=width, frame_id=msg.header.frame_id)
        if self.camera is None:
            raise ImageError("no CameraInfo received yet")
        return self.camera

    def _update_extrinsic(self, camera_frame: str) -> None:
        if self.tf_listener is None:
            return
        reason = "the image has no frame_id and camera_frame is empty"
        if camera_frame:
            try:
                transform = self.tf_buffer.lookup_transform(self.config.base_frame, camera_frame, Time())
            except self._transform_exception as exc:
                reason = str(exc)
            else:
                self._failed_lookups_in_a_row = 0
                self._set_extrinsic_from(transform)
                return
        # Keep the last extrinsic (at first the parameter's) until TF has it, and say so: a wrong frame id would
        # otherwise tilt the ground plane, and the scale with it, without a word.
        self.extrinsic_lookup_failures += 1
        self._failed_lookups_in_a_row += 1
        if self._failed_lookups_in_a_row >= EXTRINSIC_LOOKUP_PATIENCE_FRAMES:
            self.get_logger().warning(
                f"no {self.config.base_frame} -> {camera_frame or '(no frame)'} transform from TF for "
                f"{self._failed_lookups_in_a_row} frames ({reason}); keeping the last extrinsic (at first "
                "pipeline.T_base_camera)", throttle_duration_sec=10.0)

    def _set_extrinsic_from(self, transform: Any) -> None:
        """The pipeline's camera mounting from a base -> camera TransformStamped."""
        t, q = transform.transform.translation, transform.transform.rotation
        T = np.eye(4)
        T[:3, :3] = quaternion_to_rotation(np.array([q.x, q.y, q.z, q.w]))
        T[:3, 3] = (t.x, t.y, t.z)
        self.pipeline.set_extrinsic(T)

    def _process(self, msg: Any) -> None:
        config = self.config  # one snapshot per frame: a parameter change applies from the next frame on
        rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        camera = self._camera_for(msg, *rgb.shape[:2])
        if config.rectify:
            rgb = self.rectifier(rgb, camera)
        camera_frame = config.camera_frame or msg.header.frame_id
        self._update_extrinsic(camera_frame)
        stamp_ns = stamp_to_ns(msg.header.stamp)
        estimate = self.pipeline.process(stamp_ns, rgb, camera)
        self._last_stamp_ns = stamp_ns
        for event in estimate.events:
            self.get_logger().info(event, throttle_duration_sec=2.0)
        messages = estimate_messages(self.types, estimate, msg.header, config.odom_frame, config.base_frame,
                                     with_transform=config.publish_tf and self.tf_broadcaster is not None,
                                     with_mask=config.publish_mask and self.mask_publisher is not None)
        self.depth_publisher.publish(messages.depth)
        self.info_publisher.publish(messages.depth_info)
        self.odom_publisher.publish(messages.odometry)
        if messages.transform is not None:
            self.tf_broadcaster.sendTransform(messages.transform)
        if messages.mask is not None:
            self.mask_publisher.publish(messages.mask)
        self._last_estimate = estimate

    def diagnostic_status(self) -> DiagnosticStatus:
        """Rate, latency, dropped frames, errors, tracking restarts, backend and scale health: one DiagnosticStatus."""
        worker, estimate = self.worker, self._last_estimate
        elapsed = max(time.monotonic() - self._started, 1e-9)
        level, message = DiagnosticStatus.OK, "tracking"
        if estimate is None:
            level, message = DiagnosticStatus.WARN, "no frame processed yet"
        elif not estimate.scale.healthy or not estimate.scale.metric:
            level, message = DiagnosticStatus.WARN, f"scale: {estimate.scale.reason}"
        errors = {**dict(worker.errors), **dict(self.message_errors)}
        restarts = dict(self.pipeline.restarts)  # one copy: the worker thread may add a cause while this runs
        if errors:
            level = max(level, DiagnosticStatus.WARN)
            message += f"; {sum(errors.values())} messages skipped for errors"
        values = {"backend": self.pipeline.backend.description, "scale_source": self.config.scale.source,
                  "frames_processed": worker.processed, "frames_dropped": worker.dropped,
                  "rate_hz": f"{worker.processed / elapsed:.2f}", "latency_ms": f"{worker.last_latency_s * 1e3:.1f}",
                  "errors": errors, "tracking_restarts": sum(restarts.values()),
                  "restart_causes": {cause.value: n for cause, n in restarts.items()},
                  "extrinsic_lookup_failures": self.extrinsic_lookup_failures}
        if estimate is not None:
            values["scale_factor"] = f"{estimate.scale.factor:.4f}"
        key_values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return DiagnosticStatus(level=level, name=f"{self.get_name()}: pipeline", message=message,
                                hardware_id="sfm_ros", values=key_values)

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray(status=[self.diagnostic_status()])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def destroy_node(self) -> None:
        self.worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = SfmNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as exc:
        rclpy.logging.get_logger("sfm").fatal(f"invalid configuration: {exc}")
        raise SystemExit(2) from None
    except (BundleError, BackendError) as exc:  # one line naming the problem and the fix, not a traceback
        rclpy.logging.get_logger("sfm").fatal(f"cannot load the model bundle: {exc} (pipeline.bundle must be a "
                                              "folder made by `sfm train` and exported with `sfm export`)")
        raise SystemExit(2) from None
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()

