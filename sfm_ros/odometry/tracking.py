"""Tracking: where a frame is, from the chain's prediction and the photometric alignment (``align.refine_pose``).

pipeline.odometry picks how: 'chain' keeps the pose net's steps; 'frame_to_frame' aligns each frame to the previous
one through that frame's depth, starting from the network's step (``Tracker.to_previous``); 'keyframes' aligns it to
the last keyframe instead, starting from the keyframe's pose composed with the chain (``Tracker.to_keyframe``), so
the pose and its covariance are the keyframe's plus one alignment and do not grow while the camera stands still. An
alignment to the keyframe that fails is retried from the previous frame's pose (a pose net that reports motion while
the camera stands still can start it too far off); a frame that still cannot be aligned, or that sees too little of
the keyframe or stands too far from it, becomes the next keyframe (``Decision``); one that cannot be aligned to the
keyframe takes its step from the previous frame, as 'frame_to_frame' does. Each step's length is then the ground's
(``ground.StepLength``).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from sfm_ros.config import OdometryMode, PipelineConfig
from sfm_ros.geometry import invert_transform, orthonormalised, with_translation_scaled
from sfm_ros.odometry import uncertainty
from sfm_ros.odometry.align import RefineResult, SideSlip, refine_pose
from sfm_ros.odometry.ground import LengthFactor, StepLength
from sfm_ros.scale import ScaleEstimate

__all__ = ["Chain", "Decision", "Keyframe", "OnKeyframe", "PreviousView", "Tracked", "Tracker"]

# The side-slip prior's std-dev never goes below this (metres): a step of a few centimetres would otherwise pin the
# sideways motion tighter than the image can show it.
MIN_SIDE_SLIP_SIGMA_M = 0.001


class Decision(enum.Enum):
    """What tracking decided about the keyframe."""

    KEEP = "keep"  # aligned to the keyframe, which stays
    NO_KEYFRAME = "no keyframe"  # not aligned to one (none yet, or not pipeline.odometry keyframes)
    ALIGNMENT_FAILED = "alignment failed"  # the alignment to the keyframe was refused: a new keyframe
    SMALL_OVERLAP = "small overlap"  # too little of the keyframe stays in view: a new keyframe
    LONG_BASELINE = "long baseline"  # too far from the keyframe: a new keyframe

    @property
    def new_keyframe(self) -> bool:
        """Whether the frame becomes the keyframe (in pipeline.odometry keyframes)."""
        return self is not Decision.KEEP


@dataclasses.dataclass(frozen=True)
class Keyframe:
    """A frame that later frames are aligned to: grey [H,W], depth [H,W] in metres at its scale and its median, its
    pose T_world_camera [4,4] and covariance [6,6] (world axes, as the odometry carries it), and its ground
    pixels [H,W] bool (None without scale.ground_motion)."""

    grey: np.ndarray
    depth_m: np.ndarray
    median_depth_m: float
    T_world_camera: np.ndarray
    covariance: np.ndarray
    ground: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PreviousView:
    """The previous frame as the next one is aligned to it: grey [H,W], network depth [H,W] (network units), and its
    ground pixels [H,W] bool (None without them)."""

    grey: np.ndarray
    depth_units: np.ndarray
    ground: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class OnKeyframe:
    """The last frame aligned to the keyframe: its aligned translation [3] (metres by the depth's scale, in the
    keyframe's camera) and the length factor it got."""

    translation: np.ndarray
    factor: float


@dataclasses.dataclass(frozen=True)
class Chain:
    """The chain's prediction of a frame: the previous frame's pose T_world_previous [4,4], the frame's pose from it
    and the network's step (its length times ``carried``) T_world_current [4,4], ``carried``, the recent ratio of the
    ground's lengths to the aligned ones (1 without scale.ground_motion), and the time since the previous frame, s
    (None: unknown)."""

    T_world_previous: np.ndarray
    T_world_current: np.ndarray
    carried: float
    dt_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Tracked:
    """A tracked frame: its pose T_world_camera [4,4], the covariance [6,6] of its step (previous camera's axes;
    when aligned to the keyframe, of that alignment, in the keyframe's axes), the keyframe decision, what was noted
    (events, in order), the last frame on the keyframe (None unless aligned to it), and the time the ground's lengths
    took, ms."""

    T_world_camera: np.ndarray
    step_covariance: np.ndarray
    decision: Decision
    events: tuple[str, ...] = ()
    on_keyframe: OnKeyframe | None = None
    ground_ms: float = 0.0


class Tracker:
    """Aligns frames to the keyframe or to the previous frame with pipeline's alignment settings, the camera's
    mounting T_base_camera [4,4] and the ground's step lengths. Holds no frame state: the pipeline passes it in."""

    def __init__(self, config: PipelineConfig, T_base_camera: np.ndarray, step_length: StepLength) -> None:
        self.config = config
        self.T_base_camera = T_base_camera
        self.step_length = step_length

    def side_slip(self, T_current_reference: np.ndarray) -> SideSlip | None:
        """The side-slip prior of an alignment from T_current_reference [4,4]: its std-dev pipeline.side_slip_sigma
        of the step's length (at least MIN_SIDE_SLIP_SIGMA_M); None when off."""
        fraction = self.config.side_slip_sigma
        if fraction <= 0:
            return None
        length = float(np.linalg.norm(T_current_reference[:3, 3]))
        return SideSlip(self.T_base_camera, max(fraction * length, MIN_SIDE_SLIP_SIGMA_M))

    def align(self, reference_grey: np.ndarray, reference_depth_m: np.ndarray, grey: np.ndarray, K: np.ndarray,
              T_current_reference: np.ndarray) -> RefineResult:
        """``refine_pose`` with the pipeline's priors, from T_current_reference [4,4] (metres)."""
        return refine_pose(reference_grey, reference_depth_m, grey, K, T_current_reference,
                           side_slip=self.side_slip(T_current_reference),
                           relative_depth_sigma=self.config.alignment_depth_sigma)

    def to_keyframe(self, keyframe: Keyframe, last: OnKeyframe | None, grey: np.ndarray, K: np.ndarray, chain: Chain,
                    scale: ScaleEstimate, normal: np.ndarray, previous: PreviousView, T_prev_current: np.ndarray
                    ) -> Tracked:
        """Align the frame (grey [H,W], K [3,3]) to the keyframe, starting from the chain's pose. The frame's pose is
        the keyframe's and the alignment (kept rigid: composed through the keyframe's inverse, frame after frame),
        its length measured on the keyframe's ground (plane ``normal``). Without an accepted alignment the frame
        becomes the next keyframe, and its step is the one from the ``previous`` frame (``to_previous`` from the
        network's T_prev_current [4,4], metres by the depth's scale), not the chain's: the network's length alone
        was up to 2.4 times the truth on surfaces the model never saw (RESULTS, "A keyframe that cannot be aligned
        to")."""
        def aligned_from(T_world_start: np.ndarray) -> RefineResult:
            # The alignment's start T_current_keyframe, at the depth's scale (the chain's lengths carry the ratio).
            T_keyframe_start = invert_transform(keyframe.T_world_camera) @ T_world_start
            start = with_translation_scaled(invert_transform(T_keyframe_start), 1.0 / chain.carried)
            return self.align(keyframe.grey, keyframe.depth_m, grey, K, start)

        aligned = aligned_from(chain.T_world_current)
        if not aligned.accepted:
            # From the previous frame's pose instead (no motion since): a pose net that reports motion while the
            # camera stands still can start the alignment too far off.
            retried = aligned_from(chain.T_world_previous)
            aligned = retried if retried.accepted else aligned
        if not aligned.accepted:
            note = f"keyframe alignment not used (a new keyframe): {aligned.reason}"
            step = self.to_previous(previous, grey, K, chain, T_prev_current, scale, normal)
            return dataclasses.replace(step, decision=Decision.ALIGNMENT_FAILED, events=(note, *step.events))
        aligned_translation = invert_transform(aligned.T_current_previous)[:3, 3]
        if last is not None and np.linalg.norm(aligned_translation - last.translation) < self.step_length.min_step_m:
            # No step since the last frame long enough to measure: its length factor stands, so a camera standing
            # still one step from its keyframe does not jitter with each measurement's noise.
            self.step_length.forget_speed()
            length = LengthFactor(last.factor)
        else:
            previous_position = last.translation * last.factor if last is not None else None
            length = self.step_length.measure(keyframe.grey, keyframe.ground, grey, K, aligned.T_current_previous,
                                              chain.carried, normal, previous_position, chain.dt_s)
        T_keyframe_current = invert_transform(with_translation_scaled(aligned.T_current_previous, length.factor))
        if aligned.covariance is not None:
            covariance = uncertainty.alignment_covariance(aligned.covariance, T_keyframe_current, scale, self.config,
                                                          length.factor)
        else:
            covariance = uncertainty.step_covariance(T_keyframe_current, scale, self.config)
        baseline = float(np.linalg.norm(T_keyframe_current[:3, 3]))
        decision = Decision.KEEP
        if aligned.in_view_share < self.config.keyframe_min_overlap:
            decision = Decision.SMALL_OVERLAP
        elif baseline > self.config.keyframe_max_baseline * keyframe.median_depth_m:
            decision = Decision.LONG_BASELINE
        return Tracked(orthonormalised(keyframe.T_world_camera @ T_keyframe_current), covariance, decision,
                       tuple(note for note in (length.note,) if note),
                       OnKeyframe(aligned_translation, length.factor), length.ms)

    def to_previous(self, previous: PreviousView, grey: np.ndarray, K: np.ndarray, chain: Chain,
                    T_prev_current: np.ndarray, scale: ScaleEstimate, normal: np.ndarray) -> Tracked:
        """The step from the previous frame: the network's T_prev_current [4,4] (metres by the depth's scale), aligned
        to the previous frame through its depth unless pipeline.odometry is 'chain', its length measured on the
        previous frame's ground (plane ``normal``); when neither the alignment nor the ground measures it, its length
        is the recent speed's (``StepLength.from_speed``)."""
        events = []
        T_current_previous = invert_transform(T_prev_current)
        refined, aligned_covariance = None, None
        if self.config.odometry != OdometryMode.CHAIN:
            refined = self.align(previous.grey, previous.depth_units * scale.factor, grey, K, T_current_previous)
            if refined.accepted:
                T_current_previous, aligned_covariance = refined.T_current_previous, refined.covariance
            else:
                events.append(f"pose refinement not used: {refined.reason}")
        length = self.step_length.measure(previous.grey, previous.ground, grey, K, T_current_previous, chain.carried,
                                          normal, None, chain.dt_s)
        # Neither the alignment nor the ground measured the step (the ground tried: its note says why not).
        unmeasured = refined is not None and not refined.accepted and length.note is not None
        if unmeasured:
            length = self.step_length.from_speed(T_current_previous, chain.dt_s, length)
        events += [length.note] if length.note else []
        T_step = invert_transform(with_translation_scaled(T_current_previous, length.factor))
        if aligned_covariance is not None:
            covariance = uncertainty.alignment_covariance(aligned_covariance, T_step, scale, self.config,
                                                          length.factor)
        else:  # the modelled error of a step as long as the one it now has
            covariance = uncertainty.step_covariance(T_step, scale, self.config)
        return Tracked(chain.T_world_previous @ T_step, covariance, Decision.NO_KEYFRAME, tuple(events),
                       ground_ms=length.ms)
