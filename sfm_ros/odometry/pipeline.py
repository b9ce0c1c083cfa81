"""The visual-odometry pipeline for one camera: frames in order -> metric depth, relative pose, odometry, covariance.

``Pipeline.process`` runs a frame through its stages, top to bottom:

1. admission (``_admit``): a frame with its predecessor's stamp is dropped (``FrameError``); one that breaks the
   stream (time going backwards, a gap, a new image size) restarts tracking, which keeps the pose and sets its
   covariance to at least the "lost" value (``uncertainty.lost_covariance``), so restarts never compound;
2. the network's step (``network.network_step``): the depth of the frame, and the pose net's motion over the window
   (t-2, t-1, t) with t-1 as target, which gives T(t-1 -> t) at once, so odometry has no frame of delay. The first
   full window after a (re)start also gives the motion between its older frames (t-2 -> t-1), added then, so the
   trajectory does not lag by a step;
3. scale (``_scale``, ``sfm_ros.scale``): one factor scales depth and translation; with scale.ground_motion also the
   frame's ground pixels, which later frames measure their step lengths on;
4. tracking (``tracking.Tracker``): the chain's step, or the photometric alignment to the keyframe or the previous
   frame (pipeline.odometry), each step's length the ground's (``ground.StepLength``);
5. the ground plane's tilt from the direction of travel (``ground.GroundPlane``) and the keyframe's renewal;
6. uncertainty (``uncertainty``): the pose's covariance and the twist;
7. the finite check: a frame whose pose, covariance or twist is not finite is dropped (``FrameError``), the odometry
   keeps the previous frame's pose and restarts tracking, so nothing non-finite is published or carried on.

State: one camera's odometry lives in ``_CameraState``, which ``reset`` replaces whole; what tracking carries from
frame to frame lives in its ``_TrackState``, which a tracking restart replaces whole. The scale estimate, the ground's
step-length ratio and the ground plane follow the camera's scene and mounting, not the stream: a reset keeps them,
a change of the scale settings (``configure``) or of the mounting starts them over. Tracking resets and warnings
are reported in ``Estimate.events``; ``restarts`` counts the tracking restarts by cause since the pipeline was built
(the node's diagnostics report it).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import time

import cv2
import numpy as np

from sfm_ros.backends import Backend, make_backend
from sfm_ros.camera import CameraModel
from sfm_ros.config import OdometryMode, PipelineConfig, ScaleConfig
from sfm_ros.geometry import (
    ground_normal_in_camera,
    invert_transform,
    transform_from_xyz_quaternion,
    with_translation_scaled,
)
from sfm_ros.odometry import uncertainty
from sfm_ros.odometry.estimate import UNKNOWN_TWIST_VARIANCE, Estimate, FrameError
from sfm_ros.odometry.ground import GroundPlane, StepLength
from sfm_ros.odometry.network import NetworkStep, PoseWindow, network_step
from sfm_ros.odometry.tracking import Chain, Decision, Keyframe, OnKeyframe, PreviousView, Tracked, Tracker
from sfm_ros.scale import (
    GROUND_MAX_LATERAL_M,
    GROUND_TOLERANCE,
    ScaleEstimate,
    ScaleObservation,
    ground_mask,
    make_scale_estimator,
)

__all__ = ["Estimate", "FrameError", "Pipeline", "RestartCause"]


class RestartCause(str, enum.Enum):
    """Why tracking restarted: the keys of ``Pipeline.restarts``."""

    BACKWARDS = "time went backwards"
    GAP = "gap between frames"
    SIZE_CHANGED = "image size changed"
    NOT_FINITE = "estimate not finite"


@dataclasses.dataclass
class _TrackState:
    """What tracking carries from frame to frame; a tracking restart replaces it whole. window: the pose net's frames;
    previous: frame t-1 as the next frame is aligned to it; keyframe and the last frame on it."""

    window: PoseWindow
    previous: PreviousView | None = None
    keyframe: Keyframe | None = None
    on_keyframe: OnKeyframe | None = None


@dataclasses.dataclass
class _CameraState:
    """One camera's odometry; a reset replaces it whole. T_world_camera [4,4] and its covariance [6,6] in world axes
    (``uncertainty``; odometry restarts at the identity), the last stamp and input size (to notice a broken stream),
    and the events to report with the next frame."""

    track: _TrackState
    T_world_camera: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(4))
    covariance: np.ndarray = dataclasses.field(default_factory=uncertainty.initial_covariance)
    last_stamp: int | None = None
    input_size: tuple[int, int] | None = None
    pending_events: list[str] = dataclasses.field(default_factory=list)


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
        self.step_length = StepLength(self.scale_config)
        self._T_base_camera = transform_from_xyz_quaternion(config.T_base_camera)
        self._ground = GroundPlane(ground_normal_in_camera(self._T_base_camera))
        self.restarts: collections.Counter[RestartCause] = collections.Counter()  # a reset does not clear it
        self.reset("start")

    # ---- state -----------------------------------------------------------------------------------------
    def reset(self, reason: str = "reset requested") -> None:
        """Forget the pose window and odometry (odometry restarts at the identity)."""
        self._state = _CameraState(self._new_track(), pending_events=[f"reset: {reason}"])
        self.step_length.forget_speed()

    def _new_track(self) -> _TrackState:
        return _TrackState(PoseWindow(self.window_length))

    def configure(self, config: PipelineConfig, scale_config: ScaleConfig) -> None:
        """Apply changed settings from the next frame on. What loads the backend (bundle, backend, device,
        precision, threads, engine cache) cannot change here; changed scale settings start a new scale estimate."""
        fixed = ("bundle", "backend", "device", "precision", "threads", "engine_cache_dir")
        changed = [name for name in fixed if getattr(config, name) != getattr(self.config, name)]
        if changed:
            raise ValueError(f"pipeline settings {changed} load the model: restart to change them")
        if config.T_base_camera != self.config.T_base_camera:
            self.set_extrinsic(transform_from_xyz_quaternion(config.T_base_camera))
        if scale_config != self.scale_config:
            self.scale_estimator = make_scale_estimator(scale_config)
            self.step_length = StepLength(scale_config)
            self._ground = GroundPlane(self._ground.mounting_normal)  # the travel's tilt starts over too
            self.scale_config = scale_config
        if config.odometry != self.config.odometry:
            # A keyframe kept from another mode would be stale.
            self._state.track.keyframe = None
            self._state.track.on_keyframe = None
        self.config = config

    def set_extrinsic(self, T_base_camera: np.ndarray) -> None:
        """Camera optical frame in base_link (from TF), [4,4]. TF republishes it every frame: only a new mounting of
        the ground (another rotation) starts the ground plane over."""
        self._T_base_camera = np.asarray(T_base_camera, dtype=np.float64)
        normal = ground_normal_in_camera(self._T_base_camera)
        if not np.array_equal(normal, self._ground.mounting_normal):
            self._ground = GroundPlane(normal)

    @property
    def T_base_camera(self) -> np.ndarray:
        """Camera optical frame in base_link [4,4]."""
        return self._T_base_camera

    @property
    def ground_normal(self) -> np.ndarray:
        """The ground's unit normal [3] in the camera's optical frame, pointing down, that the scale and the ground's
        lengths use now: the mounting's, or tilted to the direction of travel (scale.ground_pitch_from_travel)."""
        return self._ground.normal

    def set_speed(self, speed_mps: float) -> None:
        """Feed an external speed (m/s); only scale.source 'external_speed' uses it. A speed that is not finite raises
        ValueError, and the last one stays."""
        if not np.isfinite(speed_mps):
            raise ValueError(f"speed must be finite, got {speed_mps}")
        self.scale_estimator.observe_speed(speed_mps)

    def _restart_tracking(self, cause: RestartCause, detail: str) -> None:
        """Keep the odometry pose, drop what tracking carries, and raise the covariance to the "lost" value (where
        the camera went while continuity was lost is unknown); count the restart by its cause."""
        state = self._state
        state.track = self._new_track()
        state.covariance = uncertainty.lost_covariance(state.covariance)
        self.step_length.forget_speed()
        self.restarts[cause] += 1
        state.pending_events.append(f"tracking restarted: {detail}")

    # ---- per frame -------------------------------------------------------------------------------------
    def process(self, stamp_ns: int, rgb: np.ndarray, camera: CameraModel) -> Estimate:
        """Run one frame. ``rgb`` uint8 [H,W,3] of ``camera``'s size; stamps in ns, increasing. Raises FrameError
        for a frame it does not take (see ``FrameError``): nothing is to be published for it."""
        tick = time.perf_counter()
        _check_frame(rgb, camera)
        events, dt_s = self._admit(stamp_ns, camera)
        state = self._state
        pose_before, covariance_before = state.T_world_camera.copy(), state.covariance.copy()
        needs_grey = self.config.odometry != OdometryMode.CHAIN or self.scale_config.uses_ground_motion
        if not needs_grey:
            # The chain alone keeps no views: one kept from before it would be stale once views are measured again.
            state.track.previous = None
        previous = state.track.previous  # frame t-1, before this frame takes its place
        network, timings, depth_end = network_step(self.backend, state.track.window, stamp_ns, rgb, camera, dt_s,
                                        self.config.min_pose_interval_s, needs_grey)
        t_pose = time.perf_counter()
        scale, ground = self._scale(network)
        carried = self.step_length.carried()
        t_scale = time.perf_counter()
        if network.T_catch_up is not None:  # the window's older steps, before the newest one
            T_catch_up = with_translation_scaled(network.T_catch_up, scale.factor * carried)
            state.covariance = uncertainty.composed_covariance(state.covariance, state.T_world_camera, T_catch_up,
                                                               uncertainty.step_covariance(T_catch_up, scale,
                                                                                           self.config))
            state.T_world_camera = state.T_world_camera @ T_catch_up
        tracked, twist = None, None
        if network.T_prev_current is not None:
            tracked = self._track(network, previous, scale, carried)
            events += tracked.events
            T_prev_current = invert_transform(state.T_world_camera) @ tracked.T_world_camera
            t_refine = time.perf_counter()
            made_keyframe = self._advance(network, tracked, T_prev_current, scale, ground, events)
            if network.dt_s:
                twist = uncertainty.twist(T_prev_current, tracked.step_covariance, network.dt_s, self.T_base_camera,
                                          self.config)
        else:
            T_prev_current, made_keyframe, t_refine = None, False, time.perf_counter()
        ground_ms = tracked.ground_ms if tracked is not None else 0.0
        timings.update({"pose": (t_pose - depth_end) * 1e3, "scale": (t_scale - t_pose) * 1e3,
                        "refine": max((t_refine - t_scale) * 1e3 - ground_ms, 0.0), "ground": ground_ms})
        estimate = self._estimate(stamp_ns, camera, network, scale, T_prev_current, twist, made_keyframe, events,
                                  timings, tick)
        self._check_finite(estimate, pose_before, covariance_before)
        return estimate

    def _check_finite(self, estimate: Estimate, pose_before: np.ndarray, covariance_before: np.ndarray) -> None:
        """Raise FrameError when the estimate's pose, covariance or twist is not finite (a diverged alignment, a
        model that gave NaN), after putting the odometry back at the previous frame's pose and restarting tracking."""
        parts = {"pose": estimate.T_odom_base, "covariance": estimate.covariance,
                 "twist": estimate.twist if estimate.twist is not None else np.zeros(6),
                 "twist covariance": estimate.twist_covariance}
        broken = [name for name, value in parts.items() if not np.isfinite(value).all()]
        if not broken:
            return
        self._state.T_world_camera, self._state.covariance = pose_before, covariance_before
        named = ", ".join(broken[:-1]) + " and " + broken[-1] if len(broken) > 1 else broken[0]
        self._restart_tracking(RestartCause.NOT_FINITE, f"the previous frame's {named} not finite")
        raise FrameError(f"non-finite estimate: the frame's {named} not finite; nothing is published for it, the "
                         "odometry keeps the previous pose and restarts tracking")

    def _admit(self, stamp_ns: int, camera: CameraModel) -> tuple[list[str], float | None]:
        """Drop a frame with the previous frame's stamp (FrameError); restart tracking where the stream breaks: a new
        image size, time going backwards, a gap of more than pipeline.max_frame_gap_s. Returns the events to report
        with this frame (the pending ones first) and the time since the last frame (None after a (re)start)."""
        state = self._state
        if stamp_ns == state.last_stamp:  # before any state changes: the dropped frame leaves no trace
            raise FrameError(f"repeated stamp: {stamp_ns} ns is the previous frame's; the frame is dropped (does the "
                             "camera driver set header.stamp?)")
        events, state.pending_events = state.pending_events, []
        size = (camera.height, camera.width)
        if state.input_size is not None and size != state.input_size:
            self._restart_tracking(RestartCause.SIZE_CHANGED, f"image size changed from {state.input_size[1]}x"
                                   f"{state.input_size[0]} to {size[1]}x{size[0]}")
        state.input_size = size
        if state.last_stamp is not None:
            if stamp_ns < state.last_stamp:
                self._restart_tracking(RestartCause.BACKWARDS, f"time went backwards by "
                                       f"{(state.last_stamp - stamp_ns) / 1e9:.3f} s (bag loop or clock reset)")
            elif (stamp_ns - state.last_stamp) / 1e9 > self.config.max_frame_gap_s:
                self._restart_tracking(RestartCause.GAP, f"gap of {(stamp_ns - state.last_stamp) / 1e9:.3f} s "
                                       "between frames")
        events += state.pending_events
        state.pending_events = []
        follows_a_frame = state.last_stamp is not None and len(state.track.window.frames) > 0
        dt_s = (stamp_ns - state.last_stamp) / 1e9 if follows_a_frame else None
        state.last_stamp = stamp_ns
        return events, dt_s

    def _scale(self, network: NetworkStep) -> tuple[ScaleEstimate, np.ndarray | None]:
        """This frame's scale, from its depth and the ground plane (and the network's step for external_speed), and
        with scale.ground_motion its ground pixels [h,w] bool (else None), which the next frames measure their steps
        on: kept with its grey as the previous view."""
        translation_units = (float(np.linalg.norm(network.T_prev_current[:3, 3]))
                             if network.T_prev_current is not None else None)
        normal = self._ground.normal
        scale = self.scale_estimator.update(ScaleObservation(depth=network.depth_units, K=network.K,
                                                             translation_units=translation_units, dt_s=network.dt_s,
                                                             ground_normal=normal))
        config, ground = self.scale_config, None
        if config.uses_ground_motion:
            ground = scale.ground  # the pixels on the mounting's ground plane the scale measured, if it did
            if ground is None:
                ground = ground_mask(network.depth_units, network.K, normal, config.camera_height_m,
                                     config.ground_region, GROUND_TOLERANCE, GROUND_MAX_LATERAL_M)[0]
        if network.grey is not None:
            self._state.track.previous = PreviousView(network.grey, network.depth_units, ground)
        return scale, ground

    def _track(self, network: NetworkStep, previous: PreviousView | None, scale: ScaleEstimate, carried: float
               ) -> Tracked:
        """Where the frame is: the chain's prediction (the network's step, metres by the depth's scale, its length
        times the recent ratio ``carried``), aligned to the keyframe or the previous frame (pipeline.odometry)."""
        state = self._state
        T_prev_current = with_translation_scaled(network.T_prev_current, scale.factor)  # metres by the depth's scale
        T_chain_step = with_translation_scaled(T_prev_current, carried)
        chain = Chain(state.T_world_camera, state.T_world_camera @ T_chain_step, carried, network.dt_s)
        tracker = Tracker(self.config, self.T_base_camera, self.step_length)
        grey, keyframe = network.grey, state.track.keyframe
        if grey is None or previous is None:  # the chain alone, or the first frame aligned after it
            return Tracked(chain.T_world_current, uncertainty.step_covariance(T_chain_step, scale, self.config),
                           Decision.NO_KEYFRAME)
        if self.config.odometry == OdometryMode.KEYFRAMES and keyframe is not None:
            return tracker.to_keyframe(keyframe, state.track.on_keyframe, grey, network.K, chain, scale,
                                       self._ground.normal, previous, T_prev_current)
        return tracker.to_previous(previous, grey, network.K, chain, T_prev_current, scale, self._ground.normal)

    def _advance(self, network: NetworkStep, tracked: Tracked, T_prev_current: np.ndarray, scale: ScaleEstimate,
                 ground: np.ndarray | None, events: list[str]) -> bool:
        """Move the odometry to the tracked pose: follow the travel's direction with the ground plane, carry the
        covariance along the step (aligned to the keyframe: the keyframe's along the alignment), and renew the
        keyframe (with the frame's ground pixels). Returns whether the frame became the keyframe."""
        state = self._state
        if tracked.on_keyframe is not None:  # aligned to the keyframe: its pose and covariance carry the step
            keyframe = state.track.keyframe
            state.covariance = uncertainty.composed_covariance(
                keyframe.covariance, keyframe.T_world_camera,
                invert_transform(keyframe.T_world_camera) @ tracked.T_world_camera, tracked.step_covariance)
        else:
            state.covariance = uncertainty.composed_covariance(state.covariance, state.T_world_camera, T_prev_current,
                                                               tracked.step_covariance)
        state.T_world_camera = tracked.T_world_camera
        if network.grey is not None and self.config.odometry != OdometryMode.CHAIN:
            tilted = self._ground.follow(T_prev_current, self.scale_config)
            events += [tilted] if tilted else []
        state.track.on_keyframe = tracked.on_keyframe
        if self.config.odometry != OdometryMode.KEYFRAMES or network.grey is None or not tracked.decision.new_keyframe:
            return False
        state.track.keyframe = Keyframe(network.grey, network.depth_units * scale.factor,
                                        float(np.median(network.depth_units)) * scale.factor,
                                        state.T_world_camera.copy(), state.covariance.copy(), ground)
        state.track.on_keyframe = None
        return True

    def _estimate(self, stamp_ns: int, camera: CameraModel, network: NetworkStep, scale: ScaleEstimate,
                  T_prev_current: np.ndarray | None, twist: uncertainty.Twist | None, made_keyframe: bool,
                  events: list[str], timings: dict[str, float], tick: float) -> Estimate:
        """The frame's outputs: metric depth (at the network's size or the input's), the poses in the odom frame and
        base_link's pose covariance in odom axes (``uncertainty.in_odom_frame``), the twist."""
        state = self._state
        height, width = self.metadata.height, self.metadata.width
        depth_m = (network.depth_units * scale.factor).astype(np.float32)
        depth_m[depth_m > self.config.max_depth_m] = np.inf
        info = CameraModel(K=network.K, height=height, width=width, frame_id=camera.frame_id)
        if self.config.depth_output_size == "input":
            depth_m = cv2.resize(depth_m, (camera.width, camera.height), interpolation=cv2.INTER_NEAREST)
            info = CameraModel(K=np.asarray(camera.K, dtype=np.float64), height=camera.height, width=camera.width,
                               frame_id=camera.frame_id)
        T_odom_base = self.T_base_camera @ state.T_world_camera @ invert_transform(self.T_base_camera)
        if not scale.healthy:
            events.append(f"scale unhealthy: {scale.reason}")
        timings["total"] = (time.perf_counter() - tick) * 1e3
        return Estimate(stamp_ns=stamp_ns, depth_m=depth_m, camera_info_scaled=info,
                        T_odom_camera=T_odom_base @ self.T_base_camera, T_odom_base=T_odom_base,
                        T_prev_current=T_prev_current,
                        covariance=uncertainty.in_odom_frame(state.covariance, state.T_world_camera,
                                                             self.T_base_camera),
                        scale=scale, timings_ms=timings, mask=network.mask, events=tuple(events),
                        twist=twist.velocity if twist is not None else None,
                        twist_covariance=(twist.covariance if twist is not None
                                          else np.eye(6) * UNKNOWN_TWIST_VARIANCE),
                        dt_s=network.dt_s if T_prev_current is not None else None, keyframe=made_keyframe)


def _check_frame(rgb: np.ndarray, camera: CameraModel) -> None:
    """Raise FrameError when the frame or its camera model cannot be processed."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise FrameError(f"frame must be uint8 [H,W,3], got {getattr(rgb, 'dtype', type(rgb))} "
                         f"{getattr(rgb, 'shape', '')}")
    if rgb.shape[0] != camera.height or rgb.shape[1] != camera.width:
        raise FrameError(f"frame is {rgb.shape[1]}x{rgb.shape[0]} but its camera model is "
                         f"{camera.width}x{camera.height}")
    K = np.asarray(camera.K)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise FrameError(f"camera intrinsics are unusable: K = {K.tolist()}")
