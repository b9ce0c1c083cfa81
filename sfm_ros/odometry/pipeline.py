"""The visual-odometry core, ROS-free: frames in order -> metric depth, relative pose, odometry, covariance.

At frame t the depth net sees frame t; the pose net sees the window (t-2, t-1, t) with t-1 as target and
returns T(t-1 -> t) at once, so odometry has no frame of delay. The first full window after a (re)start also gives
the motion between its older frames (t-2 -> t-1), which is added then, so the trajectory does not lag by a step.
Monocular scale comes from ``sfm_ros.scale``: one factor scales depth and translation.
Tracking resets (first frame, time going backwards, a gap, a new image size, ``reset()``) restart the pose window
and inflate the covariance; they never zero it, and each is reported in ``Estimate.events``.

Two optional stages use the predicted depth (``sfm_ros.odometry.align``): ``refine_pose`` aligns each frame to the
previous one starting from the pose net's step; ``keyframes`` aligns it to the last keyframe instead, starting from the
keyframe's pose composed with the chain, so the pose and its covariance are the keyframe's plus one alignment and
do not grow while the camera stands still.

With ``scale.ground_motion`` each step's length is measured on the ground alone (``sfm_ros.odometry.align.
ground_translation``: the ground's depth from the camera's height and mounting, not from the network), against the
keyframe with keyframes, else against the previous frame; the steps it cannot measure get the recent ratio of
measured to aligned lengths (``sfm_ros.scale.StepLengthCorrection``). The depth's shape, not only its scale, sets an
alignment's length, so the published depth keeps the ground plane's scale and the steps take the ground's lengths.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import cv2
import numpy as np

from sfm_ros.backends import Backend, make_backend, preprocess
from sfm_ros.camera import CameraModel
from sfm_ros.config import PipelineConfig, ScaleConfig
from sfm_ros.geometry import (
    ground_normal_in_camera,
    invert_transform,
    orthonormalised,
    pose_vec_to_mat,
    quaternion_to_rotation,
    scale_intrinsics,
)
from sfm_ros.odometry.align import SideSlip, ground_translation, refine_pose
from sfm_ros.scale import (
    GROUND_MAX_JUMP,
    GROUND_MAX_LATERAL_M,
    TRAVEL_ELEVATION_WINDOW,
    TRAVEL_MAX_STEP_YAW_RAD,
    ScaleEstimate,
    ScaleObservation,
    StepLengthCorrection,
    ground_mask,
    make_scale_estimator,
    normal_along_travel,
    significant_travel_elevation,
    travel_elevation,
)

__all__ = ["Estimate", "FrameError", "Pipeline"]

# The pose covariance at a (re)start: never zero, so no estimator divides by it.
INITIAL_SIGMA_M, INITIAL_SIGMA_RAD = 1e-3, 1e-3
# A twist that is not known (no motion estimate yet): zero velocity with this variance, which an EKF ignores.
UNKNOWN_TWIST_VARIANCE = 1e6
# The shortest step the ground measures, as a share of the camera's height (shorter: the recent ratio applies): 3.3 cm
# at 1.65 m moves the ground 3-5 m ahead by 0.5-1.5 px at a 240 px focal length, too little to measure a length.
GROUND_MIN_STEP = 0.02
# Only the ground points that a step's translation moves at least this far (pixels) measure its length: those that move
# less pull it toward zero (resampling a fine texture blurs it), which made slow steps 4-11 % short on the rendered
# streets with the exact rotation and ground (RESULTS, "The ground's lengths from the points that move").
GROUND_MIN_PARALLAX_PX = 1.0
# The prior that holds the ground's translation to the alignment's direction: its std-dev across it, as a share of the
# step (at least 5 mm). Free, the search traded length for direction where the ground mask holds more than road
# (RESULTS, "The ground's lengths along the alignment").
GROUND_DIRECTION_SIGMA = 0.03


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
    keyframe: this frame became the keyframe (with pipeline.keyframes).
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


@dataclasses.dataclass(frozen=True)
class _Keyframe:
    """A frame that later frames are aligned to: grey [H,W], depth [H,W] in metres at its scale, its pose
    T_world_camera [4,4] and covariance [6,6] (camera axes, as the odometry accumulates them), and its ground pixels
    [H,W] bool (None without scale.ground_motion)."""

    grey: np.ndarray
    depth_m: np.ndarray
    median_depth_m: float
    T_world_camera: np.ndarray
    covariance: np.ndarray
    ground: np.ndarray | None = None


def _with_translation_scaled(T: np.ndarray, factor: float) -> np.ndarray:
    """A copy of T [4,4] with its translation times ``factor``."""
    scaled = np.array(T, dtype=np.float64)
    scaled[:3, 3] *= factor
    return scaled


def _base_camera_transform(values: tuple[float, ...]) -> np.ndarray:
    if len(values) != 7:
        raise ValueError(f"T_base_camera must be x y z qx qy qz qw, got {len(values)} values")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(np.asarray(values[3:]))
    T[:3, 3] = values[:3]
    return T


class Pipeline:
    """Stateful per-camera processing. Build once (loads the backend), then call ``process`` per frame."""

    def __init__(self, config: PipelineConfig, scale_config: ScaleConfig | None = None,
                 backend: Backend | None = None) -> None:
        self.config = config
        self.scale_config = scale_config or ScaleConfig()
        if backend is None:
            if not config.bundle:
                raise ValueError("pipeline.bundle is empty: give the model bundle folder")
            backend = make_backend(config.bundle, config.backend, device=config.device, precision=config.precision,
                                   threads=config.threads, engine_cache_dir=config.engine_cache_dir)
        self.backend = backend
        self.metadata = backend.metadata
        self.window_length = self.metadata.num_sources + 1
        self.scale_estimator = make_scale_estimator(self.scale_config)
        self.step_length = StepLengthCorrection(self.scale_config.smoothing, GROUND_MAX_JUMP)
        self._mounting_normal: np.ndarray | None = None
        self.T_base_camera = _base_camera_transform(config.T_base_camera)
        self.reset("start")

    # ---- state -----------------------------------------------------------------------------------------
    def reset(self, reason: str = "reset requested") -> None:
        """Forget the pose window and odometry (odometry restarts at the identity)."""
        self._window: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=self.window_length)
        self._window_complete = False  # has a full window been used since the last (re)start
        # grey, network depth and ground pixels (None without them) of t-1
        self._previous_view: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._keyframe: _Keyframe | None = None
        # the last frame aligned to the keyframe: its aligned translation [3] and the length factor it got
        self._last_on_keyframe: tuple[np.ndarray, float] | None = None
        self._T_world_camera = np.eye(4)
        self._covariance = np.diag([INITIAL_SIGMA_M**2] * 3 + [INITIAL_SIGMA_RAD**2] * 3)
        self._last_stamp: int | None = None
        self._input_size: tuple[int, int] | None = None
        self._pending_events = [f"reset: {reason}"]

    def configure(self, config: PipelineConfig, scale_config: ScaleConfig) -> None:
        """Apply changed settings from the next frame on. What loads the backend (bundle, backend, device,
        precision, threads, engine cache) cannot change here; changed scale settings start a new scale estimate."""
        fixed = ("bundle", "backend", "device", "precision", "threads", "engine_cache_dir")
        changed = [name for name in fixed if getattr(config, name) != getattr(self.config, name)]
        if changed:
            raise ValueError(f"pipeline settings {changed} load the model: restart to change them")
        if config.T_base_camera != self.config.T_base_camera:
            self.T_base_camera = _base_camera_transform(config.T_base_camera)
        if scale_config != self.scale_config:
            self.scale_estimator = make_scale_estimator(scale_config)
            self.step_length = StepLengthCorrection(scale_config.smoothing, GROUND_MAX_JUMP)
            self._ground_normal = self._mounting_normal  # the travel's tilt starts over too
            self._travel_elevations.clear()
            self.scale_config = scale_config
        if config.odometry != self.config.odometry:
            self._keyframe = None  # a keyframe kept while they were off would be stale
        self.config = config

    def set_extrinsic(self, T_base_camera: np.ndarray) -> None:
        """Camera optical frame in base_link (from TF), [4,4]."""
        self.T_base_camera = np.asarray(T_base_camera, dtype=np.float64)

    @property
    def T_base_camera(self) -> np.ndarray:
        """Camera optical frame in base_link [4,4]."""
        return self._T_base_camera

    @T_base_camera.setter
    def T_base_camera(self, T_base_camera: np.ndarray) -> None:
        self._T_base_camera = T_base_camera
        # The ground's unit normal in the camera's optical frame, pointing down: derived once per mounting, not per
        # frame (the scale and the ground's motion both need it); with scale.ground_pitch_from_travel, tilted by the
        # elevations of travel above the mounting's plane (radians, the latest steps).
        normal = ground_normal_in_camera(T_base_camera)
        if self._mounting_normal is None or not np.array_equal(normal, self._mounting_normal):
            self._mounting_normal = normal  # TF republishes it every frame: only a new mounting starts over
            self._ground_normal = normal
            self._travel_elevations: collections.deque[float] = collections.deque(maxlen=TRAVEL_ELEVATION_WINDOW)

    def set_speed(self, speed_mps: float) -> None:
        """Feed an external speed (m/s); only scale.source 'external_speed' uses it."""
        self.scale_estimator.observe_speed(speed_mps)

    def _restart_tracking(self, reason: str) -> None:
        """Keep the odometry pose, drop the window, and inflate the covariance (we lost continuity): every standard
        deviation times ``unscaled_sigma_factor``."""
        self._window.clear()
        self._window_complete = False
        self._previous_view = None
        self._keyframe = None
        self._last_on_keyframe = None
        self._covariance = self._covariance * self.config.unscaled_sigma_factor**2
        self._pending_events.append(f"tracking restarted: {reason}")

    # ---- per frame -------------------------------------------------------------------------------------
    def _check_frame(self, rgb: np.ndarray, camera: CameraModel) -> None:
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise FrameError(f"frame must be uint8 [H,W,3], got {getattr(rgb, 'dtype', type(rgb))} "
                             f"{getattr(rgb, 'shape', '')}")
        if rgb.shape[0] != camera.height or rgb.shape[1] != camera.width:
            raise FrameError(f"frame is {rgb.shape[1]}x{rgb.shape[0]} but its camera model is "
                             f"{camera.width}x{camera.height}")
        K = np.asarray(camera.K)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise FrameError(f"camera intrinsics are unusable: K = {K.tolist()}")

    def process(self, stamp_ns: int, rgb: np.ndarray, camera: CameraModel) -> Estimate:
        """Run one frame. ``rgb`` uint8 [H,W,3] of ``camera``'s size; stamps in ns, increasing."""
        tick = time.perf_counter()
        self._check_frame(rgb, camera)
        events = self._pending_events
        self._pending_events = []
        size = (camera.height, camera.width)
        if self._input_size is not None and size != self._input_size:
            self._restart_tracking(f"image size changed from {self._input_size[1]}x{self._input_size[0]} to "
                                   f"{size[1]}x{size[0]}")
        self._input_size = size
        if self._last_stamp is not None:
            if stamp_ns <= self._last_stamp:
                self._restart_tracking(f"time went backwards by {(self._last_stamp - stamp_ns) / 1e9:.3f} s "
                                       "(bag loop or clock reset)")
            elif (stamp_ns - self._last_stamp) / 1e9 > self.config.max_frame_gap_s:
                self._restart_tracking(f"gap of {(stamp_ns - self._last_stamp) / 1e9:.3f} s between frames")
        events += self._pending_events
        self._pending_events = []
        dt_s = (stamp_ns - self._last_stamp) / 1e9 if self._last_stamp is not None and self._window else None
        self._last_stamp = stamp_ns

        height, width = self.metadata.height, self.metadata.width
        K_net = scale_intrinsics(camera.K, width / camera.width, height / camera.height)
        image = preprocess(rgb, self.metadata)
        t_pre = time.perf_counter()
        disparity = self.backend.infer_depth(image)[0, 0]
        t_depth = time.perf_counter()
        depth_units = 1.0 / np.maximum(disparity, 1e-6)

        T_prev_current, T_catch_up, mask = None, None, None
        window_dt = (stamp_ns - self._window[-1][0]) / 1e9 if self._window else None
        previous_view, entered_window = self._previous_view, False
        if not self._window or window_dt >= self.config.min_pose_interval_s:
            self._window.append((stamp_ns, image))
            entered_window = True
            if len(self._window) == self.window_length:
                T_prev_current, T_catch_up, mask = self._relative_pose(first=not self._window_complete)
                self._window_complete = True
                dt_s = window_dt
        grey = None
        uses_grey = self.config.odometry != "chain" or self.scale_config.uses_ground_motion
        if uses_grey and entered_window:
            grey = self._grey(image)
        t_pose = time.perf_counter()

        translation_units = float(np.linalg.norm(T_prev_current[:3, 3])) if T_prev_current is not None else None
        normal = self._ground_normal
        scale = self.scale_estimator.update(ScaleObservation(depth=depth_units, K=K_net,
                                                             translation_units=translation_units, dt_s=dt_s,
                                                             ground_normal=normal))
        ground = scale.ground  # this frame's pixels on the mounting's ground plane
        if self.scale_config.uses_ground_motion:
            config = self.scale_config
            if ground is None:
                ground = ground_mask(depth_units, K_net, normal, config.camera_height_m, config.ground_region,
                                     config.ground_tolerance, GROUND_MAX_LATERAL_M)[0]
        if grey is not None:
            self._previous_view = (grey, depth_units, ground)
        carried = self._carried_step_factor()
        t_scale = time.perf_counter()
        if T_catch_up is not None:  # the window's older steps, before the newest one
            T_catch_up = T_catch_up.copy()
            T_catch_up[:3, 3] *= scale.factor * carried
            self._T_world_camera = self._T_world_camera @ T_catch_up
            self._covariance = self._covariance + self._step_covariance(T_catch_up, scale)
        twist, twist_covariance = None, np.eye(6) * UNKNOWN_TWIST_VARIANCE
        new_keyframe_reason: str | None = "first"
        made_keyframe = False
        t_refine = time.perf_counter()
        self._ground_ms = 0.0  # the ground's motion measured, within the refine stage's time
        if T_prev_current is not None:
            T_prev_current = T_prev_current.copy()
            T_prev_current[:3, 3] *= scale.factor  # metres by the depth's scale
            step_covariance = self._step_covariance(T_prev_current, scale)
            T_world_current = self._T_world_camera @ _with_translation_scaled(T_prev_current, carried)
            if self.config.odometry == "keyframes" and grey is not None and self._keyframe is not None:
                T_world_current, step_covariance, new_keyframe_reason = self._track_keyframe(
                    grey, K_net, T_world_current, step_covariance, scale, carried, events)
                if new_keyframe_reason and new_keyframe_reason.startswith("alignment"):
                    events.append(f"keyframe {new_keyframe_reason}")
            elif grey is not None and previous_view is not None:
                # The step to the previous frame: refined unless pipeline.odometry is chain (with keyframes, before
                # the first keyframe); its length measured on the ground with scale.ground_motion.
                T_current_previous = invert_transform(T_prev_current)
                if self.config.odometry != "chain":
                    refined = refine_pose(previous_view[0], previous_view[1] * scale.factor, grey, K_net,
                                          T_current_previous, **self._side_slip_prior(T_current_previous),
                                          relative_depth_sigma=self.config.alignment_depth_sigma)
                    if refined.accepted:
                        T_current_previous = refined.T_current_previous
                        if refined.covariance is not None:
                            step_covariance = self._refined_step_covariance(
                                refined.covariance, invert_transform(T_current_previous), scale)
                    else:
                        events.append(f"pose refinement not used: {refined.reason}")
                T_current_previous = _with_translation_scaled(T_current_previous, self._ground_length_factor(
                    previous_view[0], previous_view[2], grey, K_net, T_current_previous, carried, events))
                T_world_current = self._T_world_camera @ invert_transform(T_current_previous)
            T_prev_current = invert_transform(self._T_world_camera) @ T_world_current
            t_refine = time.perf_counter()
            self._T_world_camera = T_world_current
            if grey is not None and self.config.odometry != "chain":
                self._follow_travel(T_prev_current, events)
            if new_keyframe_reason is None:  # aligned to the keyframe: its covariance plus the alignment's
                self._covariance = self._keyframe.covariance + step_covariance
            else:
                self._covariance = self._covariance + step_covariance
            if self.config.odometry == "keyframes" and grey is not None and new_keyframe_reason:
                self._keyframe = _Keyframe(grey, depth_units * scale.factor,
                                           float(np.median(depth_units)) * scale.factor,
                                           self._T_world_camera.copy(), self._covariance.copy(),
                                           ground if self.scale_config.uses_ground_motion else None)
                self._last_on_keyframe = None
                made_keyframe = True
            if dt_s:
                twist, twist_covariance = self._twist(T_prev_current, step_covariance, dt_s)
        depth_m = (depth_units * scale.factor).astype(np.float32)
        depth_m[depth_m > self.config.max_depth_m] = np.inf
        info = CameraModel(K=K_net, height=height, width=width, frame_id=camera.frame_id)
        if self.config.depth_output_size == "input":
            depth_m = cv2.resize(depth_m, (camera.width, camera.height), interpolation=cv2.INTER_NEAREST)
            info = CameraModel(K=np.asarray(camera.K, dtype=np.float64), height=camera.height, width=camera.width,
                               frame_id=camera.frame_id)
        T_odom_base = self.T_base_camera @ self._T_world_camera @ invert_transform(self.T_base_camera)
        if not scale.healthy:
            events.append(f"scale unhealthy: {scale.reason}")
        timings = {"preprocess": (t_pre - tick) * 1e3, "depth": (t_depth - t_pre) * 1e3,
                   "pose": (t_pose - t_depth) * 1e3, "scale": (t_scale - t_pose) * 1e3,
                   "refine": max((t_refine - t_scale) * 1e3 - self._ground_ms, 0.0), "ground": self._ground_ms,
                   "total": (time.perf_counter() - tick) * 1e3}
        return Estimate(stamp_ns=stamp_ns, depth_m=depth_m, camera_info_scaled=info,
                        T_odom_camera=T_odom_base @ self.T_base_camera, T_odom_base=T_odom_base,
                        T_prev_current=T_prev_current, covariance=self._in_base_axes(self._covariance),
                        scale=scale, timings_ms=timings, mask=mask, events=tuple(events), twist=twist,
                        twist_covariance=twist_covariance, dt_s=dt_s if T_prev_current is not None else None,
                        keyframe=made_keyframe)

    def _follow_travel(self, T_prev_current: np.ndarray, events: list[str]) -> None:
        """With scale.ground_pitch_from_travel: note the elevation of an aligned step T_prev_current [4,4] (metres)
        above the mounting's plane, when it is long enough to measure and straight, and once enough are in tilt the
        ground's plane to their median where it stands out from their spread (an event says so the first time)."""
        config = self.scale_config
        translation = T_prev_current[:3, 3]
        if (not config.uses_ground_motion or config.ground_pitch_from_travel <= 0
                or np.linalg.norm(translation) < GROUND_MIN_STEP * config.camera_height_m):
            return
        # Turning steps' elevations come out up to 2.5 degrees off even with exact depth and poses: straight only.
        yaw = abs(float(cv2.Rodrigues(T_prev_current[:3, :3])[0].ravel() @ self._mounting_normal))
        if yaw > TRAVEL_MAX_STEP_YAW_RAD:
            return
        self._travel_elevations.append(travel_elevation(translation, self._mounting_normal))
        if len(self._travel_elevations) >= config.ground_pitch_from_travel:
            elevation = significant_travel_elevation(np.asarray(self._travel_elevations))
            if elevation == 0.0:
                self._ground_normal = self._mounting_normal
                return
            if self._ground_normal is self._mounting_normal:
                events.append(f"ground plane tilted {np.degrees(elevation):+.2f} deg about the camera's x axis to the "
                              f"direction of travel of {len(self._travel_elevations)} straight steps")
            self._ground_normal = normal_along_travel(self._mounting_normal, elevation)

    def _relative_pose(self, first: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Poses from the window (network units): frame t in frame t-1's camera; on the ``first`` full window also
        frame t-1 in the oldest frame's camera (the steps before the newest one), else None; frame t's mask."""
        frames = [image for _, image in self._window]
        center = self.window_length // 2
        target = frames[center]
        sources = np.stack([f[0] for i, f in enumerate(frames) if i != center])[None]
        poses, masks = self.backend.infer_pose(target, sources)
        # poses[i] = T_source_target for source i; sources are the window without its centre, in order.
        source_frames = [i for i in range(self.window_length) if i != center]
        T_source_target = {frame: pose_vec_to_mat(poses[k]) for k, frame in enumerate(source_frames)}
        T_source_target[center] = np.eye(4)
        last, previous = self.window_length - 1, self.window_length - 2
        # Points of frame t-1 into frame t: T_t_target @ T_target_(t-1); the pose of t in t-1 is its inverse.
        T_current_prev = T_source_target[last] @ invert_transform(T_source_target[previous])
        # Frame k in frame j's camera: T_j<-c @ inv(T_k<-c), with c the target.
        T_catch_up = T_source_target[0] @ invert_transform(T_source_target[previous]) if first else None
        mask = masks[source_frames.index(last)] if masks is not None else None
        return invert_transform(T_current_prev), T_catch_up, mask

    def _carried_step_factor(self) -> float:
        """The factor for a step the ground does not measure: the recent ratio of measured to aligned lengths with
        scale.ground_motion (1 before the first measurement), else 1."""
        return self.step_length.correct(None) if self.scale_config.uses_ground_motion else 1.0

    def _ground_length_factor(self, reference_grey: np.ndarray, reference_ground: np.ndarray | None,
                              grey: np.ndarray, K: np.ndarray, T_current_reference: np.ndarray, carried: float,
                              events: list[str]) -> float:
        """The factor that gives T_current_reference [4,4] (metres by the depth's scale) the length the reference
        frame's ground (pixels [H,W]) measures for it (scale.ground_motion), or ``carried`` (the recent ratio; 1
        without ground_motion) when the ground cannot measure it."""
        config = self.scale_config
        length = float(np.linalg.norm(T_current_reference[:3, 3]))
        if (not config.uses_ground_motion or reference_ground is None
                or length < GROUND_MIN_STEP * config.camera_height_m):
            return carried
        tick = time.perf_counter()
        # A local search: started at the length the recent ratio predicts, it does not settle in a nearer minimum
        # on a road whose mask holds more than road.
        # (Where a young model's depth makes the steps 1.5x short, a start at the aligned step settled 30-40 % short.)
        start = _with_translation_scaled(T_current_reference, carried)
        measured = ground_translation(reference_grey, grey, K, start, reference_ground,
                                      self._ground_normal, config.camera_height_m,
                                      min_parallax_px=GROUND_MIN_PARALLAX_PX, direction_sigma=GROUND_DIRECTION_SIGMA)
        self._ground_ms += (time.perf_counter() - tick) * 1e3
        if not measured.accepted:
            events.append(f"ground motion not measured: {measured.reason}")
            return carried
        return self.step_length.correct(float(np.linalg.norm(measured.translation)) / length)

    def _track_keyframe(self, grey: np.ndarray, K: np.ndarray, T_world_current: np.ndarray,
                        step_covariance: np.ndarray, scale: ScaleEstimate, carried: float, events: list[str]
                        ) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Align the frame to the keyframe, starting from the chain's pose T_world_current [4,4] (the previous
        frame's pose and the network's metric step, its length times ``carried``, the recent ratio of the ground's
        lengths to the aligned ones). Returns the frame's pose T_world_camera from the keyframe's and the
        alignment (kept rigid: it is composed through the keyframe's inverse, frame after frame; its length
        measured on the keyframe's ground with scale.ground_motion), the step's covariance for the twist, and why
        this frame must become the next keyframe (None: keep the keyframe). Without an accepted alignment the
        chained pose stands."""
        keyframe = self._keyframe
        T_keyframe_current = invert_transform(keyframe.T_world_camera) @ T_world_current
        start = _with_translation_scaled(invert_transform(T_keyframe_current), 1.0 / carried)
        aligned = refine_pose(keyframe.grey, keyframe.depth_m, grey, K, start, **self._side_slip_prior(start),
                              relative_depth_sigma=self.config.alignment_depth_sigma)
        if not aligned.accepted:
            # From the previous frame's pose instead (no motion since): a pose net that reports motion while the
            # camera stands still can start the alignment too far off.
            still = _with_translation_scaled(
                invert_transform(invert_transform(keyframe.T_world_camera) @ self._T_world_camera), 1.0 / carried)
            retried = refine_pose(keyframe.grey, keyframe.depth_m, grey, K, still, **self._side_slip_prior(still),
                                  relative_depth_sigma=self.config.alignment_depth_sigma)
            aligned = retried if retried.accepted else aligned
        if not aligned.accepted:
            return T_world_current, step_covariance, f"alignment not used (a new keyframe): {aligned.reason}"
        aligned_translation = invert_transform(aligned.T_current_previous)[:3, 3]
        last = self._last_on_keyframe
        if last is not None and (np.linalg.norm(aligned_translation - last[0])
                                 < GROUND_MIN_STEP * self.scale_config.camera_height_m):
            # No step since the last frame long enough to measure: its length factor stands, so a camera standing
            # still one step from its keyframe does not jitter with each measurement's noise.
            factor = last[1]
        else:
            factor = self._ground_length_factor(keyframe.grey, keyframe.ground, grey, K, aligned.T_current_previous,
                                                carried, events)
        self._last_on_keyframe = (aligned_translation, factor)
        T_keyframe_current = invert_transform(_with_translation_scaled(aligned.T_current_previous, factor))
        alignment_covariance = (self._refined_step_covariance(aligned.covariance, T_keyframe_current, scale)
                                if aligned.covariance is not None else self._step_covariance(T_keyframe_current, scale))
        baseline = float(np.linalg.norm(T_keyframe_current[:3, 3]))
        reason = None
        if aligned.in_view_share < self.config.keyframe_min_overlap:
            reason = f"overlap {aligned.in_view_share:.2f}"
        elif baseline > self.config.keyframe_max_baseline * keyframe.median_depth_m:
            reason = f"baseline {baseline:.2f} m"
        return orthonormalised(keyframe.T_world_camera @ T_keyframe_current), alignment_covariance, reason

    def _side_slip_prior(self, T_current_reference: np.ndarray) -> dict:
        """refine_pose's side-slip arguments (pipeline.side_slip_sigma, at least 1 mm); none when off."""
        fraction = self.config.side_slip_sigma
        if fraction <= 0:
            return {}
        length = float(np.linalg.norm(T_current_reference[:3, 3]))
        return {"side_slip": SideSlip(self.T_base_camera, max(fraction * length, 0.001))}

    def _step_covariance(self, T_step: np.ndarray, scale: ScaleEstimate) -> np.ndarray:
        """Covariance [6,6] of one step's error (camera axes): translation std ``translation_sigma`` x its length,
        rotation std ``rotation_sigma_rad_per_m`` x its length + ``rotation_sigma`` x its angle; both times
        ``unscaled_sigma_factor`` when the scale is unhealthy or not metric. A step of no motion adds nothing."""
        config = self.config
        length = float(np.linalg.norm(T_step[:3, 3]))
        angle = float(np.linalg.norm(cv2.Rodrigues(T_step[:3, :3])[0]))
        inflation = 1.0 if scale.healthy and scale.metric else config.unscaled_sigma_factor
        sigma_t = config.translation_sigma * length * inflation
        sigma_r = (config.rotation_sigma_rad_per_m * length + config.rotation_sigma * angle) * inflation
        return np.diag([sigma_t**2] * 3 + [sigma_r**2] * 3)

    def _grey(self, image: np.ndarray) -> np.ndarray:
        """The preprocessed [1,3,H,W] frame as grey float32 [H,W] in [0, 1] (the alignment's input)."""
        mean = np.asarray(self.metadata.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.metadata.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((image[0] * std + mean).mean(axis=0), dtype=np.float32)

    def _refined_step_covariance(self, increment_covariance: np.ndarray, T_step: np.ndarray,
                                 scale: ScaleEstimate) -> np.ndarray:
        """The alignment's covariance of a step (its Hessian's sigma^2 H^-1 for the increment in the current camera's
        axes), in the previous camera's axes as the odometry accumulates it; inflated like any step when the scale
        is unhealthy or not metric."""
        rotation = np.zeros((6, 6))
        rotation[:3, :3] = rotation[3:, 3:] = T_step[:3, :3]
        inflation = 1.0 if scale.healthy and scale.metric else self.config.unscaled_sigma_factor
        return rotation @ increment_covariance @ rotation.T * inflation**2

    def _twist(self, T_step_camera: np.ndarray, step_covariance: np.ndarray, dt_s: float
               ) -> tuple[np.ndarray, np.ndarray]:
        """Velocity of base_link in its own frame from the last step, and its covariance: the step's, over dt^2,
        with the floors ``min_velocity_sigma_mps`` and ``min_angular_velocity_sigma_radps``."""
        T_step = self.T_base_camera @ T_step_camera @ invert_transform(self.T_base_camera)
        rotation = T_step[:3, :3]
        linear = rotation.T @ T_step[:3, 3] / dt_s  # the step's displacement, in the frame it ends in
        angular = cv2.Rodrigues(rotation)[0].ravel() / dt_s
        covariance = self._in_base_axes(step_covariance) / dt_s**2
        floors = [self.config.min_velocity_sigma_mps**2] * 3 + [self.config.min_angular_velocity_sigma_radps**2] * 3
        covariance[np.diag_indices(6)] = np.maximum(np.diag(covariance), floors)
        return np.concatenate([linear, angular]), covariance

    def _in_base_axes(self, covariance: np.ndarray) -> np.ndarray:
        """A [6,6] covariance in camera axes, rotated into base_link axes."""
        rotation = np.zeros((6, 6))
        rotation[:3, :3] = rotation[3:, 3:] = self.T_base_camera[:3, :3]
        return rotation @ covariance @ rotation.T
