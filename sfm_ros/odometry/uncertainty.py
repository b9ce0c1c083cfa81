"""The odometry's uncertainty: each step's covariance, the pose's at a start and after a restart, and the twist with
its covariance.

Each step's error grows with the distance and rotation of that step and not with time, so a camera standing still
keeps its uncertainty. An alignment's step has the covariance its Hessian gives. Steps whose scale is unhealthy or not
metric count ``pipeline.unscaled_sigma_factor`` times less certain.

Frames: a step's covariance is in the previous camera's axes (translation error dt, rotation error dphi on the left,
R_step_true = exp(dphi) R_step). The pose's covariance is in the odometry's world axes (position error dp, heading
error dtheta on the left, R_true = exp(dtheta) R), so ``composed_covariance`` rotates each step into them and lets the
heading's error move the position by the lever of the step (first order). ``in_odom_frame`` gives the published
covariance of base_link's pose in odom; ``in_base_axes`` turns a step's (the twist's) into base_link's axes.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from sfm_ros.config import PipelineConfig
from sfm_ros.geometry import cross_matrix, invert_transform
from sfm_ros.scale import ScaleEstimate

__all__ = ["INITIAL_SIGMA_M", "INITIAL_SIGMA_RAD", "LOST_SIGMA_M", "LOST_SIGMA_RAD", "Twist", "alignment_covariance",
           "composed_covariance", "in_base_axes", "in_odom_frame", "initial_covariance", "lost_covariance",
           "step_covariance", "twist"]

# The pose covariance at a start or reset: never zero, so no estimator divides by it.
INITIAL_SIGMA_M, INITIAL_SIGMA_RAD = 1e-3, 1e-3
# After a tracking restart (a gap, time going backwards) where the camera went is unknown: a fixed value a filter
# weighs as "no information" (metres beyond any gap a robot drives, a heading that can be anything), never a
# multiple of the last one, so thousands of restarts stay finite.
LOST_SIGMA_M, LOST_SIGMA_RAD = 100.0, np.pi


def initial_covariance() -> np.ndarray:
    """The pose's covariance [6,6] at a start or reset."""
    return np.diag([INITIAL_SIGMA_M**2] * 3 + [INITIAL_SIGMA_RAD**2] * 3)


def lost_covariance(covariance: np.ndarray) -> np.ndarray:
    """The pose's covariance [6,6] after a tracking restart: diagonal, each variance the larger of the lost value's
    and ``covariance``'s own (a long drive may already be less certain than "lost"), so a restart never lowers the
    uncertainty and repeated restarts do not compound."""
    lost = np.array([LOST_SIGMA_M**2] * 3 + [LOST_SIGMA_RAD**2] * 3)
    return np.diag(np.maximum(np.diag(covariance), lost))


def _inflation(scale: ScaleEstimate, config: PipelineConfig) -> float:
    """1, or pipeline.unscaled_sigma_factor when the scale is unhealthy or not metric (a std-dev factor)."""
    return 1.0 if scale.healthy and scale.metric else config.unscaled_sigma_factor


def step_covariance(T_step: np.ndarray, scale: ScaleEstimate, config: PipelineConfig) -> np.ndarray:
    """Covariance [6,6] of one step's error (camera axes): translation std ``translation_sigma`` x its length,
    rotation std ``rotation_sigma_rad_per_m`` x its length + ``rotation_sigma`` x its angle; both times
    ``unscaled_sigma_factor`` when the scale is unhealthy or not metric. A step of no motion adds nothing."""
    length = float(np.linalg.norm(T_step[:3, 3]))
    angle = float(np.linalg.norm(cv2.Rodrigues(T_step[:3, :3])[0]))
    inflation = _inflation(scale, config)
    sigma_t = config.translation_sigma * length * inflation
    sigma_r = (config.rotation_sigma_rad_per_m * length + config.rotation_sigma * angle) * inflation
    return np.diag([sigma_t**2] * 3 + [sigma_r**2] * 3)


def alignment_covariance(increment_covariance: np.ndarray, T_step: np.ndarray, scale: ScaleEstimate,
                         config: PipelineConfig, length_factor: float = 1.0) -> np.ndarray:
    """The alignment's covariance of a step T_step [4,4] (its Hessian's sigma^2 H^-1 [6,6] for the increment in the
    current camera's axes), in the previous camera's axes as the odometry carries it; its translation's std-devs
    times length_factor (the ground's length, which multiplied the aligned translation); inflated like any step when
    the scale is unhealthy or not metric. The length's own measurement error is not in it."""
    transform = _rotated(T_step[:3, :3])
    transform[:3, :3] *= length_factor
    return transform @ increment_covariance @ transform.T * _inflation(scale, config)**2


def _rotated(rotation: np.ndarray) -> np.ndarray:
    """[6,6] diag(R, R) of a rotation R [3,3]: turns a (translation, rotation) covariance into other axes."""
    block = np.zeros((6, 6))
    block[:3, :3] = block[3:, 3:] = rotation
    return block


def _lever_factors(heading_variance: np.ndarray) -> np.ndarray:
    """Per heading axis [3], sigma_swing / sigma: what a Gaussian heading error of variance sigma^2 swings a lever by
    is its sine, Var(sin theta) = (1 - exp(-2 sigma^2)) / 2. About 1 for small errors (first order); for a lost
    heading (pi) the swing saturates at the lever's length instead of growing to pi times it."""
    sigma2 = np.maximum(heading_variance, 1e-300)
    return np.sqrt(-np.expm1(-2.0 * sigma2) / 2.0 / sigma2)


def composed_covariance(covariance: np.ndarray, T_world_previous: np.ndarray, T_step: np.ndarray,
                        step_covariance: np.ndarray) -> np.ndarray:
    """The covariance [6,6] (world axes) of the pose T_world_previous @ T_step: the previous pose's covariance [6,6]
    (world axes) carried along the step, the heading's error swinging the position by the step's translation (its
    lever), plus the step's own covariance [6,6] (previous camera's axes) rotated into world axes.

    Sigma' = J Sigma J^T + G Sigma_step G^T, J = [[I, -[R_wp t_step]x F], [0, I]], G = diag(R_wp, R_wp): first order,
    with F (``_lever_factors``, 1 for small heading errors) keeping a lost heading's swing within the lever."""
    rotation = T_world_previous[:3, :3]
    carried = np.eye(6)
    carried[:3, 3:] = -cross_matrix(rotation @ T_step[:3, 3]) * _lever_factors(np.diag(covariance)[3:])
    into_world = _rotated(rotation)
    return carried @ covariance @ carried.T + into_world @ step_covariance @ into_world.T


def in_odom_frame(covariance: np.ndarray, T_world_camera: np.ndarray, T_base_camera: np.ndarray) -> np.ndarray:
    """The covariance [6,6] of base_link's pose in odom (odom axes, as nav_msgs/Odometry carries it) from the camera's
    pose T_world_camera [4,4] and its covariance [6,6] (world axes); odom is the world turned by T_base_camera [4,4].
    A heading error swings base_link about the camera, so the mounting's offset is a lever too."""
    camera_to_base = T_world_camera[:3, :3] @ invert_transform(T_base_camera)[:3, 3]  # world axes
    lever = np.eye(6)
    lever[:3, 3:] = -cross_matrix(camera_to_base)
    return in_base_axes(lever @ covariance @ lever.T, T_base_camera)


def in_base_axes(covariance: np.ndarray, T_base_camera: np.ndarray) -> np.ndarray:
    """A [6,6] covariance in camera (or world) axes, rotated into base_link (or odom) axes (T_base_camera [4,4])."""
    rotation = _rotated(T_base_camera[:3, :3])
    return rotation @ covariance @ rotation.T


@dataclasses.dataclass(frozen=True)
class Twist:
    """Velocity [6] of base_link in its own frame (vx vy vz wx wy wz) and its covariance [6,6]."""

    velocity: np.ndarray
    covariance: np.ndarray


def twist(T_step_camera: np.ndarray, step_covariance: np.ndarray, dt_s: float, T_base_camera: np.ndarray,
          config: PipelineConfig) -> Twist:
    """Velocity of base_link in its own frame from the last step T_step_camera [4,4] (the camera's motion in the
    previous camera's frame) over dt_s, and its covariance: the step's [6,6] (camera axes), over dt^2, with the
    floors ``min_velocity_sigma_mps`` and ``min_angular_velocity_sigma_radps``."""
    T_step = T_base_camera @ T_step_camera @ invert_transform(T_base_camera)
    rotation = T_step[:3, :3]
    linear = rotation.T @ T_step[:3, 3] / dt_s  # the step's displacement, in the frame it ends in
    angular = cv2.Rodrigues(rotation)[0].ravel() / dt_s
    covariance = in_base_axes(step_covariance, T_base_camera) / dt_s**2
    floors = [config.min_velocity_sigma_mps**2] * 3 + [config.min_angular_velocity_sigma_radps**2] * 3
    covariance[np.diag_indices(6)] = np.maximum(np.diag(covariance), floors)
    return Twist(np.concatenate([linear, angular]), covariance)
