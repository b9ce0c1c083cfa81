"""What the odometry gives for one frame (``Estimate``), and the error for a frame it cannot take (``FrameError``).

Imports no run time (no backend, no alignment), so that the message conversions (``sfm_ros.ros_io``) and the bag
tools that use them can name an estimate without loading the pipeline.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sfm_ros.camera import CameraModel
    from sfm_ros.scale import ScaleEstimate

__all__ = ["UNKNOWN_TWIST_VARIANCE", "Estimate", "FrameError"]

# A twist that is not known (no motion estimate yet): zero velocity with this variance, which an EKF ignores.
UNKNOWN_TWIST_VARIANCE = 1e6


class FrameError(ValueError):
    """A frame cannot be processed (shape, dtype, intrinsics); the pipeline state is unchanged."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What the pipeline gives for one frame.

    depth_m: [h,w] float32 metres (+inf beyond max_depth_m; up-to-scale units when scale.metric is False);
    camera_info_scaled: the camera model matching depth_m's size; T_odom_camera / T_odom_base: [4,4] poses in
    the odom frame; T_prev_current: [4,4] motion of this frame in the previous pose frame (None without a
    pose yet); covariance: [6,6] of T_odom_base (x y z roll pitch yaw), never zero; twist: [6] velocity of
    base_link in its own frame (vx vy vz wx wy wz: the last step over its time) or None before the first step;
    twist_covariance: [6,6] (UNKNOWN_TWIST_VARIANCE on the diagonal without a twist); dt_s: time of the last step;
    mask: explainability of this frame w.r.t. the previous one [h,w] or None; events: resets and warnings;
    keyframe: this frame became the keyframe (pipeline.odometry keyframes).
    """

    stamp_ns: int
    depth_m: np.ndarray
    camera_info_scaled: CameraModel
    T_odom_camera: np.ndarray
    T_odom_base: np.ndarray
    T_prev_current: np.ndarray | None
    covariance: np.ndarray
    scale: ScaleEstimate
    timings_ms: dict[str, float]
    mask: np.ndarray | None = None
    events: tuple[str, ...] = ()
    twist: np.ndarray | None = None
    twist_covariance: np.ndarray = dataclasses.field(
        default_factory=lambda: np.eye(6) * UNKNOWN_TWIST_VARIANCE)
    dt_s: float | None = None
    keyframe: bool = False

    @property
    def scale_source(self) -> str:
        return self.scale.source.value
