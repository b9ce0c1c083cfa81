"""Metric scale for monocular depth and odometry: the camera's height over the ground (the plane of its mounting, or
one fitted to the depth), external speed, a fixed factor, or none; and the ground's pixels (``ground_mask``).

Every estimator has one interface (``ScaleEstimator``): ``update(observation)`` with what a frame offers
(``ScaleObservation``) returns a ``ScaleEstimate``, the factor (metres per network unit) and its health, and
``observe_speed`` takes an external speed (ignored by the estimators that do not use one). When an estimator fails
(no ground visible, speed too low, no speed yet) it says so and keeps the last healthy factor, which the pipeline
then flags through covariance and diagnostics. Before the first healthy factor the camera height's estimator offers a
provisional one where enough of a receding road agrees with the mounting's plane, also flagged; otherwise the output
is marked not metric. ``SCALE_ESTIMATORS`` maps each
``ScaleSource`` to its estimator; the configuration's list of sources comes from ``ScaleSource``.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from sfm_ros.config import ScaleConfig, ScaleSource
from sfm_ros.geometry import backproject, crop_intrinsics, ground_plane_depth

__all__ = ["SCALE_ESTIMATORS", "ExternalSpeedScale", "FixedScale", "GroundPlaneScale",
           "ScaleEstimate", "ScaleEstimator", "ScaleObservation", "ScaleSource",
           "fit_ground_plane", "ground_mask", "make_scale_estimator"]


@dataclasses.dataclass(frozen=True)
class ScaleEstimate:
    """factor: metres per network unit (1.0 for 'none'); healthy: this frame's estimate is trustworthy;
    reason: why not, for diagnostics; metric: whether outputs are in metres at all; ground: the pixels [H,W] bool
    on the mounting's ground plane it measured (None when it did not use them)."""

    factor: float
    healthy: bool
    source: ScaleSource
    reason: str = ""
    metric: bool = True
    ground: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ScaleObservation:
    """What a frame offers: network depth [H,W] at the network size with K [3,3] at that size, the network
    translation norm of the last step with its time (None before the first step), and the ground's unit normal [3]
    pointing down in the camera's optical frame as the camera's mounting gives it (None: unknown)."""

    depth: np.ndarray | None = None
    K: np.ndarray | None = None
    translation_units: float | None = None
    dt_s: float | None = None
    ground_normal: np.ndarray | None = None


class ScaleEstimator(Protocol):
    """The one interface of every scale source."""

    def update(self, observation: ScaleObservation) -> ScaleEstimate: ...

    def observe_speed(self, speed_mps: float) -> None: ...


def fit_ground_plane(points: np.ndarray, rng: np.random.Generator, iterations: int, threshold: float,
                     max_tilt_deg: float) -> tuple[np.ndarray, float, float] | None:
    """RANSAC plane n.p + d = 0 through points [M,3] (camera optical frame), normal close to the camera's
    down axis (+y). Returns (unit normal pointing down [3], distance of the camera to the plane, inlier ratio)
    refined by least squares on the inliers, or None when no plane within the tilt limit is found."""
    if len(points) < 3:
        return None
    cos_limit = np.cos(np.radians(max_tilt_deg))
    # All hypotheses at once: one [M, I] distance product instead of I passes (the estimator went from 19 to 5 ms a
    # frame on the node's path). Triples that repeat a point have no normal and are dropped, like collinear ones.
    samples = points[rng.integers(0, len(points), size=(iterations, 3))]
    normals = np.cross(samples[:, 1] - samples[:, 0], samples[:, 2] - samples[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    usable = norms > 1e-9
    normals = normals[usable] / norms[usable, None]
    normals *= np.where(normals[:, 1:2] < 0, -1.0, 1.0)  # point down (+y)
    upright = normals[:, 1] >= cos_limit
    normals, anchors = normals[upright], samples[usable][upright, 0]
    if not len(normals):
        return None
    # Scored in float32 with a contiguous [3, I] right-hand side (a transposed view left BLAS: 15x slower).
    offsets = np.einsum("ij,ij->i", anchors, normals).astype(np.float32)
    distances = np.abs(points.astype(np.float32) @ np.ascontiguousarray(normals.T, dtype=np.float32) - offsets)
    counts = (distances < threshold).sum(axis=0)
    best = int(np.argmax(counts))
    if counts[best] < 3:
        return None
    best_inliers, best_count = distances[:, best] < threshold, int(counts[best])
    inlier_points = points[best_inliers]
    centroid = inlier_points.mean(axis=0)
    _, _, vh = np.linalg.svd(inlier_points - centroid, full_matrices=False)
    normal = vh[2] if vh[2][1] >= 0 else -vh[2]
    if normal[1] < cos_limit:
        return None
    # The camera is at the origin: its distance to the plane through the centroid.
    height = float(abs(centroid @ normal))
    return normal, height, best_count / len(points)


# The ground ahead only, within this distance sideways of the optical axis (metres): of 2, 3 and 4 m and all the ground,
# 3 m gave the default model the lowest KITTI ATE with the streets' close to the best (RESULTS, "Which ground").
GROUND_MAX_LATERAL_M = 3.0
# A pixel is the mounting's ground when its depth's ratio to the plane's is within this share of the common ratio: the
# predicted depth of a road is about this smooth, a car's or a kerb's is not.
GROUND_TOLERANCE = 0.05
# The scale is healthy only where at least this share of the lower image is ground (or inliers of the fitted plane):
# below it the "ground" is mostly cars and walls, whose depth says nothing about the camera's height.
MIN_GROUND_SHARE = 0.3
# Before the first healthy scale, a share at least this large still gives a provisional scale (unhealthy, and said so)
# rather than none: a wall or a car filling the view agrees with the plane along a band of rows only, 15-18 % of the
# lower image at the default ground region and tolerance (test_pipeline_scale), where a road partly hidden gave 20-30 %
# on KITTI. Without it the first steps took the network's units, and a drive that started there lost its first metres.
MIN_PROVISIONAL_GROUND_SHARE = 0.2
# ... and only where those pixels recede: the plane's depth over them spans at least this ratio from near to far (5th
# to 95th percentile). A wall's band spans no more than the ground tolerance allows, 1.05 / 0.95 = 1.105, at any
# scale.ground_region; the roads that started without a healthy scale spanned 1.47-3.5 (rendered and KITTI).
MIN_PROVISIONAL_DEPTH_SPAN = 1.25
# scale.ground_plane 'fit': RANSAC over at most 2000 back-projected points finds a plane holding 30 % in far fewer
# than 100 draws; inliers within 5 % of the region's median depth; planes tilted more than 30 degrees off the camera's
# down axis are walls, not ground.
RANSAC_ITERATIONS = 100
RANSAC_INLIER_SHARE_OF_DEPTH = 0.05
MAX_GROUND_TILT_DEG = 30.0


def ground_mask(depth: np.ndarray, K: np.ndarray, normal: np.ndarray, camera_height_m: float, region: float,
                tolerance: float, max_lateral_m: float = 0.0) -> tuple[np.ndarray, float | None, float]:
    """The pixels of a depth map [H,W] (any units; K [3,3] at its size) that lie on the ground of the camera's
    mounting: in the lower ``region`` of the image, below the horizon, with a depth whose ratio to the plane's
    (``normal``, unit and pointing down, at ``camera_height_m``) is within ``tolerance`` (relative) of the ratio that
    most of them share. Objects on the ground and walls break the ratio and drop out. Returns (mask [H,W] bool, that
    shared ratio: metres per depth unit, or None when no pixel can be ground, and the share of the pixels that could
    be ground which agree: a wall filling the view agrees with the plane along a few rows only)."""
    plane = ground_plane_depth(depth.shape, K, normal, camera_height_m)
    candidates = np.zeros(depth.shape, dtype=bool)
    candidates[int(depth.shape[0] * (1.0 - region)):] = True
    candidates &= np.isfinite(plane) & np.isfinite(depth) & (depth > 0)
    if max_lateral_m > 0:
        # Only the ground ahead: where the plane's point lies within max_lateral_m of the optical axis, sideways.
        u = np.arange(depth.shape[1], dtype=np.float64)[None, :]
        candidates &= np.abs((u - K[0, 2]) / K[0, 0] * np.where(np.isfinite(plane), plane, 0.0)) <= max_lateral_m
    mask = np.zeros(depth.shape, dtype=bool)
    if candidates.sum() < 3:
        return mask, None, 0.0
    log_ratio = np.log(plane[candidates] / depth[candidates])
    # The densest window of log ratios as wide as the tolerance allows either side: the ground's shared scale.
    half_width = float(np.log1p(tolerance))
    ordered = np.sort(log_ratio)
    counts = np.searchsorted(ordered, ordered + 2 * half_width, side="right") - np.arange(len(ordered))
    first = int(np.argmax(counts))
    centre = float(np.median(ordered[first:first + counts[first]]))
    mask[candidates] = np.abs(log_ratio - centre) <= half_width
    return mask, float(np.exp(centre)), float(mask.sum() / candidates.sum())


def _recedes(ground: np.ndarray, agreeing: float, shape: tuple[int, ...], K: np.ndarray, normal: np.ndarray,
             camera_height_m: float) -> bool:
    """Whether the ground pixels [H,W] that agree with the mounting's plane (``agreeing``: their share) are enough
    of a road to give a provisional scale: MIN_PROVISIONAL_GROUND_SHARE of the candidates, and the plane's depth over
    them spanning MIN_PROVISIONAL_DEPTH_SPAN from near to far (a wall's band does not)."""
    if agreeing < MIN_PROVISIONAL_GROUND_SHARE or not ground.any():
        return False
    near, far = np.percentile(ground_plane_depth(shape, K, normal, camera_height_m)[ground], [5, 95])
    return bool(far >= MIN_PROVISIONAL_DEPTH_SPAN * near)


class _SmoothedScale:
    """Shared state of the measuring estimators: the smoothed factor, and failures that hold the last one."""

    source: ScaleSource

    def __init__(self, config: ScaleConfig) -> None:
        self.config = config
        self.factor: float | None = None
        self.provisional: float | None = None  # the last provisional factor, before the first healthy one

    def _accept(self, measured: float) -> ScaleEstimate:
        if not (np.isfinite(measured) and measured > 0):  # one NaN smoothed in would hold the factor NaN for good
            return self._failed(f"measured scale {measured} is not a positive number")
        smoothing = self.config.smoothing
        self.factor = measured if self.factor is None else smoothing * self.factor + (1 - smoothing) * measured
        return ScaleEstimate(self.factor, True, self.source)

    def _failed(self, reason: str, provisional: float | None = None) -> ScaleEstimate:
        """An unhealthy estimate: the last healthy factor held, or before the first one the ``provisional`` factor
        (metres per unit) this frame measured less surely, or none (metric False)."""
        if self.factor is None:
            if provisional is not None:
                self.provisional = provisional
                return ScaleEstimate(provisional, False, self.source, reason + "; provisional scale until the first "
                                     "healthy one")
            if self.provisional is not None:
                return ScaleEstimate(self.provisional, False, self.source, reason + "; holding the provisional scale")
            return ScaleEstimate(1.0, False, self.source, reason + "; no metric scale yet", metric=False)
        return ScaleEstimate(self.factor, False, self.source, reason + "; holding the last scale")

    def observe_speed(self, speed_mps: float) -> None:
        """Not used by this source."""


class GroundPlaneScale(_SmoothedScale):
    """Scale from the known camera height: with ``ground_plane`` 'mounting', the ratio of the depth of the plane the
    mounting gives (the observation's ground normal) to the predicted depth over the pixels where they agree
    (``ground_mask``); with 'fit', camera height / the camera's height over the plane fitted to the predicted
    depth."""

    source = ScaleSource.CAMERA_HEIGHT

    def __init__(self, config: ScaleConfig, seed: int = 0) -> None:
        super().__init__(config)
        self.rng = np.random.default_rng(seed)

    def update(self, observation: ScaleObservation, max_points: int = 2000) -> ScaleEstimate:
        """The mounting's ground as the observation measured it, or a plane fitted to its depth (network units,
        network size) with its K."""
        config = self.config
        depth, K = observation.depth, observation.K
        if config.ground_plane == "mounting":
            if observation.ground_normal is None:
                return self._failed("scale.ground_plane 'mounting' needs the camera's mounting (no ground normal)")
            ground, metres_per_unit, agreeing = ground_mask(depth, K, observation.ground_normal,
                                                            config.camera_height_m, config.ground_region,
                                                            GROUND_TOLERANCE, GROUND_MAX_LATERAL_M)
            if metres_per_unit is None or agreeing < MIN_GROUND_SHARE:
                return dataclasses.replace(self._failed(
                    f"{agreeing:.0%} of the lower image agrees with the ground plane of the camera's mounting and "
                    f"height (less than {MIN_GROUND_SHARE:.0%})",
                    metres_per_unit if _recedes(ground, agreeing, depth.shape, K, observation.ground_normal,
                                                config.camera_height_m) else None), ground=ground)
            return dataclasses.replace(self._accept(metres_per_unit), ground=ground)
        height = depth.shape[0]
        top = int(height * (1.0 - config.ground_region))
        # Only the ground region is back-projected (per frame on the node's path): shift the principal point instead.
        region = depth[top:]
        points = backproject(region, crop_intrinsics(K, 0, top))[np.isfinite(region) & (region > 0)]
        if len(points) > max_points:
            points = points[self.rng.choice(len(points), max_points, replace=False)]
        median_depth = float(np.median(points[:, 2])) if len(points) else 0.0
        fit = fit_ground_plane(points, self.rng, RANSAC_ITERATIONS,
                               RANSAC_INLIER_SHARE_OF_DEPTH * max(median_depth, 1e-6), MAX_GROUND_TILT_DEG)
        if fit is None:
            return self._failed("no ground plane found in the lower image")
        _, camera_height, inlier_ratio = fit
        if inlier_ratio < MIN_GROUND_SHARE or camera_height <= 1e-6:
            return self._failed(f"ground fit too weak (inliers {inlier_ratio:.0%})")
        return self._accept(config.camera_height_m / camera_height)


class ExternalSpeedScale(_SmoothedScale):
    """Scale = speed x dt / network translation per frame, from wheel odometry or another speed source."""

    source = ScaleSource.EXTERNAL_SPEED

    def __init__(self, config: ScaleConfig) -> None:
        super().__init__(config)
        self.speed_mps: float | None = None

    def observe_speed(self, speed_mps: float) -> None:
        self.speed_mps = abs(float(speed_mps))

    def update(self, observation: ScaleObservation) -> ScaleEstimate:
        """Speed x dt over the observation's network translation between the last two frames."""
        translation_units, dt_s = observation.translation_units, observation.dt_s
        if self.speed_mps is None:
            return self._failed("no speed message received")
        if self.speed_mps < self.config.min_speed_mps:
            return self._failed(f"speed {self.speed_mps:.2f} m/s below {self.config.min_speed_mps} (standstill)")
        if translation_units is None or dt_s is None or translation_units < 1e-6 or dt_s <= 0:
            return self._failed("no frame-to-frame translation yet")
        return self._accept(self.speed_mps * dt_s / translation_units)


class FixedScale:
    """A calibrated constant factor (always healthy) or, for 'none', up-to-scale output."""

    def __init__(self, config: ScaleConfig, source: ScaleSource) -> None:
        self.estimate = (ScaleEstimate(config.fixed_factor, True, ScaleSource.FIXED) if source == ScaleSource.FIXED
                         else ScaleEstimate(1.0, True, ScaleSource.NONE, "up to scale (scale.source none)",
                                            metric=False))

    def update(self, observation: ScaleObservation) -> ScaleEstimate:
        return self.estimate

    def observe_speed(self, speed_mps: float) -> None:
        """Not used by this source."""


SCALE_ESTIMATORS = {
    ScaleSource.CAMERA_HEIGHT: GroundPlaneScale,
    ScaleSource.EXTERNAL_SPEED: ExternalSpeedScale,
    ScaleSource.FIXED: lambda config: FixedScale(config, ScaleSource.FIXED),
    ScaleSource.NONE: lambda config: FixedScale(config, ScaleSource.NONE),
}


def make_scale_estimator(config: ScaleConfig) -> ScaleEstimator:
    """The estimator for ``config.source``."""
    return SCALE_ESTIMATORS[ScaleSource(config.source)](config)
