"""The ground's part in the odometry: each step's length measured on the ground alone, and the ground plane's tilt
from the direction of travel.

The depth's shape, not only its scale, sets an alignment's length: a young model's near wall seen too far makes the
steps short. With scale.ground_motion each step's length is measured on the ground alone (``align.
ground_translation``: the ground's depth from the camera's height and mounting, not from the network), against the
keyframe or the previous frame; the steps it cannot measure get the recent ratio of measured to aligned lengths
(``StepLengthCorrection``). So the published depth keeps the ground plane's scale and the steps take the ground's
lengths. With scale.ground_pitch_from_travel the ground's plane follows the direction of travel (``GroundPlane``):
a vehicle travels along its road, so its straight steps' elevation above the mounting's plane is the error of the
mounting's pitch.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import cv2
import numpy as np

from sfm_ros.config import ScaleConfig
from sfm_ros.geometry import invert_transform, with_translation_scaled
from sfm_ros.odometry.align import ground_translation

__all__ = ["GROUND_DIRECTION_SIGMA", "GROUND_MAX_JUMP", "GROUND_MIN_PARALLAX_PX", "GROUND_MIN_STEP", "SPEED_SMOOTHING",
           "TRAVEL_ELEVATION_WINDOW", "TRAVEL_MAX_STEP_YAW_RAD", "TRAVEL_SIGNIFICANCE", "GroundPlane", "LengthFactor",
           "StepLength", "StepLengthCorrection", "normal_along_travel", "significant_travel_elevation",
           "travel_elevation"]

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

# The steps whose median elevation of travel tilts the ground (scale.ground_pitch_from_travel).
TRAVEL_ELEVATION_WINDOW = 100
# Only straight steps count: in a turn the aligned steps' elevations came out up to 2.5 degrees off on a rendered
# street, even with exact depth and poses.
TRAVEL_MAX_STEP_YAW_RAD = float(np.radians(0.25))
# How many standard errors of their median the steps' elevations must stand from zero to tilt the ground: a model's
# steps on a level rendered street gave medians up to 0.38 degrees from 16 steps (2.9 standard errors).
TRAVEL_SIGNIFICANCE = 3.0


def travel_elevation(translation: np.ndarray, normal: np.ndarray) -> float:
    """The elevation (rad) of a step's direction of travel ``translation`` [3] (the camera's motion in its previous
    optical frame) above the plane whose unit normal ``normal`` [3] points down: positive moving away from it."""
    return float(np.arcsin(np.clip(-(normal @ translation) / np.linalg.norm(translation), -1.0, 1.0)))


def significant_travel_elevation(elevations: np.ndarray) -> float:
    """The median of steps' elevations [N] (rad) when it stands more than TRAVEL_SIGNIFICANCE standard errors of the
    median from zero, else 0 (the mounting stands). The standard error is 1.858 MAD / sqrt(N): 1.253 sigma / sqrt(N)
    with sigma = 1.4826 MAD, robust to the few steps whose alignment went wrong."""
    median = float(np.median(elevations))
    standard_error = 1.858 * float(np.median(np.abs(elevations - median))) / np.sqrt(len(elevations))
    return median if abs(median) > TRAVEL_SIGNIFICANCE * standard_error else 0.0


def normal_along_travel(normal: np.ndarray, elevation_rad: float) -> np.ndarray:
    """The ground's unit normal [3] (optical frame, down) turned about the camera's x axis by ``elevation_rad``: the
    plane along which a camera travels that moves at that elevation above the plane of ``normal``. A vehicle
    travels along its road, so this is the road's plane for a camera whose pitch on it is not calibrated (its roll,
    about the direction of travel, is not seen this way and stays the mounting's)."""
    c, s = np.cos(elevation_rad), np.sin(elevation_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]) @ normal


# A ground-measured length more than this factor off the recent ratio to the aligned one, or its step's speed more than
# this factor off the recent speed, is an outlier (a wrong match on a repetitive road, the road's edge taken for road);
# the recent ratio applies instead.
GROUND_MAX_JUMP = 1.5
# The smoothing of the recent speed that gates the ground's lengths: a vehicle's speed changes little from one frame to
# the next (2 m/s^2 is 2 % of 10 m/s in 0.1 s) but by a fifth over a second, which 0.5 a frame still follows.
SPEED_SMOOTHING = 0.5


def _within(value: float, reference: float, factor: float) -> bool:
    return reference / factor <= value <= reference * factor


class StepLengthCorrection:
    """How much longer the ground's image motion says the steps are than the alignment made them (scale.ground_motion).

    The depth's shape, not only its scale, sets an alignment's length: a young model's near wall seen too far makes
    the steps short where the ground, whose depth the camera's height and mounting fix, says otherwise. Each measured
    step takes the ground's length; the smoothed ratio of measured to aligned lengths carries to the steps the ground
    cannot measure (standing still, a featureless road).

    A measurement is gated in metres: the speed of its step (the camera's motion since the previous frame, m/s) more
    than ``max_jump`` times off the recent speed makes it an outlier (a wrong match on a repetitive road, the road's
    edge taken for road), which gets the ratio instead. A vehicle's speed changes little between frames, whereas the
    ratio to the aligned length changes with each keyframe's depth. Before the first accepted measurement, or for a
    step whose time is not known, the gate is the ratio instead, against 1 before the first (the aligned length is
    already metric), so one wild first measurement cannot set the ratio. ``recover_after`` outliers in a row, all but
    one of them within ``max_jump`` of their median, replace a speed and ratio that have gone wrong with their
    medians, instead of being refused for the rest of the drive. Five, because KITTI shows bursts of three wrong but
    agreeing measurements (a stretch of road the ground mask gets wrong); all but one, because a wild one among them
    is common where the ratio is far from 1.
    """

    def __init__(self, smoothing: float, max_jump: float, recover_after: int = 5) -> None:
        self.smoothing, self.max_jump, self.recover_after = smoothing, max_jump, recover_after
        self.ratio: float | None = None  # None until the ground has measured a step
        self.speed_mps: float | None = None  # the recent accepted steps' speed, None until one had a time
        # Whether a step's speed was accepted since the camera last stood still or tracking restarted.
        self.speed_is_current = False
        # The latest refused measurements (ratio, speed) since the last accepted one (bounded: a node runs for hours).
        self._outliers: collections.deque[tuple[float, float | None]] = collections.deque(maxlen=recover_after)

    def correct(self, measured_ratio: float | None, speed_mps: float | None = None) -> float:
        """The factor for this step's aligned length, given the ground's measured length over it (None: no usable
        measurement) and the speed of the step it implies (m/s; None when the step's time is not known)."""
        reference = 1.0 if self.ratio is None else self.ratio
        if measured_ratio is None or not np.isfinite(measured_ratio) or measured_ratio <= 0:
            return reference
        if speed_mps is not None and not (np.isfinite(speed_mps) and speed_mps >= 0):
            speed_mps = None
        by_speed = speed_mps is not None and self.speed_mps is not None
        if (_within(speed_mps, self.speed_mps, self.max_jump) if by_speed
                else _within(measured_ratio, reference, self.max_jump)):
            self._accept(measured_ratio, speed_mps)
            return measured_ratio
        self._outliers.append((measured_ratio, speed_mps))
        if len(self._outliers) == self.recover_after:
            ratios = np.array([ratio for ratio, _ in self._outliers])
            speeds = np.array([speed for _, speed in self._outliers if speed is not None])
            gated = speeds if by_speed and len(speeds) == len(ratios) else ratios
            median = float(np.median(gated))
            if sum(_within(value, median, self.max_jump) for value in gated) >= len(gated) - 1:
                self.ratio = float(np.median(ratios))
                self.speed_mps = float(np.median(speeds)) if len(speeds) else self.speed_mps
                self._outliers.clear()
                return measured_ratio
        return reference

    def _accept(self, measured_ratio: float, speed_mps: float | None) -> None:
        self.ratio = (measured_ratio if self.ratio is None
                      else self.smoothing * self.ratio + (1 - self.smoothing) * measured_ratio)
        if speed_mps is not None:
            self.speed_mps = (speed_mps if self.speed_mps is None
                              else SPEED_SMOOTHING * self.speed_mps + (1 - SPEED_SMOOTHING) * speed_mps)
            self.speed_is_current = True
        self._outliers.clear()


@dataclasses.dataclass(frozen=True)
class LengthFactor:
    """The factor a step's aligned length takes; why the ground did not measure it (an event; None when it did or was
    not asked); the time the measurement took, ms."""

    factor: float
    note: str | None = None
    ms: float = 0.0


class StepLength:
    """Each step's length from the ground (scale.ground_motion): the factor an aligned step's length takes, measured
    on the reference frame's ground or, where the ground cannot measure it, the recent ratio of measured to aligned
    lengths (``carried``; 1 without scale.ground_motion)."""

    def __init__(self, config: ScaleConfig) -> None:
        self.config = config
        self.correction = StepLengthCorrection(config.smoothing, GROUND_MAX_JUMP)

    @property
    def ratio(self) -> float | None:
        """The recent ratio of the ground's lengths to the aligned ones (None before the first measurement)."""
        return self.correction.ratio

    @property
    def min_step_m(self) -> float:
        """The shortest step the ground measures, metres."""
        return GROUND_MIN_STEP * self.config.camera_height_m

    def carried(self) -> float:
        """The factor for a step the ground does not measure: the recent ratio of measured to aligned lengths with
        scale.ground_motion (1 before the first measurement), else 1."""
        return self.correction.correct(None) if self.config.uses_ground_motion else 1.0

    def measure(self, reference_grey: np.ndarray, reference_ground: np.ndarray | None, grey: np.ndarray,
                K: np.ndarray, T_current_reference: np.ndarray, carried: float, normal: np.ndarray,
                previous_position_m: np.ndarray | None = None, dt_s: float | None = None) -> LengthFactor:
        """The factor that gives T_current_reference [4,4] (metres by the depth's scale) the length the reference
        frame's ground (pixels [H,W] of reference_grey [H,W]; the plane of ``normal`` [3], the camera's height below)
        measures for it, or ``carried`` when the ground cannot measure it or its measurement is an outlier (both with a
        note that says so). previous_position_m [3]: the previous
        frame's position in the reference camera, metres (None: the reference frame is the previous one); dt_s: the
        time since the previous frame (None: unknown); with both the measurement is gated by its step's speed."""
        config = self.config
        length = float(np.linalg.norm(T_current_reference[:3, 3]))
        if length < self.min_step_m:
            self.forget_speed()  # standing still or creeping
        if not config.uses_ground_motion or reference_ground is None or length < self.min_step_m:
            return LengthFactor(carried)
        tick = time.perf_counter()
        # A local search: started at the length the recent ratio predicts, it does not settle in a nearer minimum on a
        # road whose mask holds more than road (from the aligned step, where a young model's depth makes the steps
        # 1.5x short, it settled 30-40 % short).
        start = with_translation_scaled(T_current_reference, carried)
        measured = ground_translation(reference_grey, grey, K, start, reference_ground, normal, config.camera_height_m,
                                      min_parallax_px=GROUND_MIN_PARALLAX_PX, direction_sigma=GROUND_DIRECTION_SIGMA)
        ms = (time.perf_counter() - tick) * 1e3
        if not measured.accepted:
            return LengthFactor(carried, f"ground motion not measured: {measured.reason}", ms)
        ratio = float(np.linalg.norm(measured.translation)) / length
        speed = None
        if dt_s:
            position = invert_transform(T_current_reference)[:3, 3] * ratio
            previous = np.zeros(3) if previous_position_m is None else previous_position_m
            speed = float(np.linalg.norm(position - previous)) / dt_s
        factor = self.correction.correct(ratio, speed)
        if factor != ratio:  # refused: the recent ratio instead
            return LengthFactor(factor, "ground motion not used: an outlier against the recent speed or ratio", ms)
        return LengthFactor(factor, None, ms)

    def forget_speed(self) -> None:
        """The camera stood still or tracking restarted: the recent speed no longer says how far the next step goes
        (``from_speed``), until the ground measures a step again. The speed gate keeps it."""
        self.correction.speed_is_current = False

    def from_speed(self, T_current_reference: np.ndarray, dt_s: float | None, unmeasured: LengthFactor
                   ) -> LengthFactor:
        """The factor for a step that neither an alignment nor the ground measured (``unmeasured``: what ``measure``
        gave it, with its note): the length the recent speed covers in dt_s, s, over T_current_reference's [4,4]
        length, since a vehicle's speed changes little in a frame, where the network's length alone came out 1.5 times
        the truth on a street the model never saw. ``unmeasured`` stands without a time or a current speed (none
        measured since the last standstill or restart)."""
        speed = self.correction.speed_mps
        length = float(np.linalg.norm(T_current_reference[:3, 3]))
        if not self.correction.speed_is_current or speed is None or not dt_s or length < 1e-9:
            return unmeasured
        return LengthFactor(speed * dt_s / length, f"{unmeasured.note}; the step's length from the recent speed "
                            f"({speed:.2f} m/s)", unmeasured.ms)


class GroundPlane:
    """The ground's unit normal in the camera's optical frame (pointing down) that the scale and the ground's
    lengths use: the mounting's (T_base_camera), or with scale.ground_pitch_from_travel N > 0, once N straight
    aligned steps are in, tilted to the median elevation of the latest TRAVEL_ELEVATION_WINDOW where it stands out
    from their spread."""

    def __init__(self, mounting_normal: np.ndarray) -> None:
        self.mounting_normal = mounting_normal
        self.normal = mounting_normal
        self.tilted = False
        self._elevations: collections.deque[float] = collections.deque(maxlen=TRAVEL_ELEVATION_WINDOW)

    def follow(self, T_prev_current: np.ndarray, config: ScaleConfig) -> str | None:
        """Note the elevation of an aligned step T_prev_current [4,4] (metres) above the mounting's plane when it is
        long enough to measure and straight, and tilt the plane to the steps' elevation once enough are in. Returns
        an event the first time the plane tilts, else None."""
        translation = T_prev_current[:3, 3]
        if (not config.uses_ground_motion or config.ground_pitch_from_travel <= 0
                or not np.isfinite(T_prev_current).all()  # a failed step: the pipeline drops its frame
                or np.linalg.norm(translation) < GROUND_MIN_STEP * config.camera_height_m):
            return None
        # Turning steps' elevations come out up to 2.5 degrees off even with exact depth and poses: straight only.
        yaw = abs(float(cv2.Rodrigues(T_prev_current[:3, :3])[0].ravel() @ self.mounting_normal))
        if yaw > TRAVEL_MAX_STEP_YAW_RAD:
            return None
        self._elevations.append(travel_elevation(translation, self.mounting_normal))
        if len(self._elevations) < config.ground_pitch_from_travel:
            return None
        elevation = significant_travel_elevation(np.asarray(self._elevations))
        if elevation == 0.0:
            self.normal, self.tilted = self.mounting_normal, False
            return None
        event = None
        if not self.tilted:
            event = (f"ground plane tilted {np.degrees(elevation):+.2f} deg about the camera's x axis to the direction "
                     f"of travel of {len(self._elevations)} straight steps")
        self.normal, self.tilted = normal_along_travel(self.mounting_normal, elevation), True
        return event
