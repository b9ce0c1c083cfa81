"""Classical monocular visual odometry: the baseline a user would pick instead of a learned model.

Per frame pair, after libviso2's monocular mode (Geiger, Ziegler, Stiller, "StereoScan", IV 2011):

1. corners (Shi-Tomasi) tracked by pyramidal Lucas-Kanade with a forward-backward check, topped up when few
   remain, on the whole image and on the road in front of the car (so that the ground is always sampled);
2. the essential matrix with RANSAC and the relative pose it implies (``cv2.findEssentialMat``, ``recoverPose``);
3. a least-squares polish of that pose on the inliers (Sampson error, 5 degrees of freedom);
4. the step's metric length from the road: the inliers on the road ahead are triangulated with a unit baseline, the
   road's normal is the mounting's "down" across the direction of travel, its distance the height most of those
   points agree on, and the length is camera_height / that distance. When no reliable consensus exists the last
   length is held (a car's speed changes little in 0.1 s).

Frames: camera optical (x right, y down, z forward). ``T_b_a`` [4,4] maps points in camera a into camera b;
``R_b_a`` [3,3], ``t_b_a`` [3]. Pixels: [N,2] (u, v) at the image's own size, integer = pixel centre.
Benchmark code (``sfm bench odometry`` runs it beside the node's pipeline), not part of the node.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from sfm_ros.geometry import cross_matrix

__all__ = ["ClassicalVO", "GroundPlane", "Step", "detect_corners", "essential_pose", "fit_ground_plane",
           "parallax_px", "polish_pose", "road_mask", "road_normal", "sampson_errors", "step_length", "track",
           "triangulate"]

# Corners: enough for a stable essential matrix, few enough that tracking stays cheap at KITTI's 1241x376.
MAX_CORNERS = 600
MIN_TRACKED = 300  # fewer tracked corners than this: detect new ones
CORNER_QUALITY = 0.005  # Shi-Tomasi quality relative to the strongest corner (asphalt has weak corners)
ROAD_CORNERS = 200  # a separate budget on the road: the strong corners are on buildings and trees
MIN_ROAD_TRACKED = 100
ROAD_QUALITY = 0.001
# Lucas-Kanade: 21x21 window over 4 pyramid levels follows 1.2 m steps at 10 Hz; a track whose backward flow
# misses its start by more than this many pixels is a mismatch.
LK_WINDOW = (21, 21)
LK_LEVELS = 3
MAX_FORWARD_BACKWARD_PX = 0.5
# Essential matrix: RANSAC inlier distance (pixels, Sampson) for sub-pixel tracks, 99.9 % confidence.
RANSAC_THRESHOLD_PX = 1.0
RANSAC_CONFIDENCE = 0.999
MIN_INLIERS = 15  # below this the relative pose is not trusted: the step repeats the last one
MIN_MEDIAN_FLOW_PX = 0.5  # a smaller median flow: the camera stands still (the essential matrix is undefined)
# The road: the image of a level road within this distance of the camera's path on either side (the own lane and a
# margin), so that parked cars and kerbs beside it stay out of the ground fit.
LANE_HALF_WIDTH_M = 3.0
# A road point's depth from a parallax of p pixels has a relative error of about (track error) / p: with tracks good
# to ~0.2 px, 4 px of parallax (after the rotation is taken out) bounds it near 5 %.
MIN_GROUND_PARALLAX_PX = 4.0
# The road plane: its normal is the mounting's "down" made perpendicular to the direction of travel (a car drives
# along its road, which takes KITTI's ~1 degree camera pitch and the road's grade out); its distance is the height
# most road points agree on: within this share of it, at least this many points and this share of them.
GROUND_TOLERANCE = 0.05
MIN_GROUND_POINTS = 12
MIN_GROUND_SHARE = 0.3  # fewer: the consensus is a car's bonnet or a kerb, not the road


@dataclasses.dataclass(frozen=True)
class GroundPlane:
    """The road: n . X = distance in camera coordinates; normal [3] unit, pointing down (away from the camera);
    distance > 0 in the points' units; inliers [N] bool over the points it was fitted to."""

    normal: np.ndarray
    distance: float
    inliers: np.ndarray


def road_mask(height: int, width: int, K: np.ndarray, camera_height_m: float) -> np.ndarray:
    """bool [H,W]: the pixels whose rays meet a level road (optical y down, height camera_height_m) within
    LANE_HALF_WIDTH_M of the camera's path: below the horizon row cy, |u - cx| < (v - cy) fy/fx w/h (a triangle
    with its apex at the vanishing point)."""
    v, u = np.mgrid[0:height, 0:width]
    below = v - K[1, 2]
    lateral = np.abs(u - K[0, 2]) * K[1, 1] / K[0, 0]
    return (below > 0) & (lateral < below * LANE_HALF_WIDTH_M / camera_height_m)


def detect_corners(gray: np.ndarray, existing: np.ndarray, region: np.ndarray | None = None,
                   max_corners: int = MAX_CORNERS, quality: float = CORNER_QUALITY) -> np.ndarray:
    """New corners [M,2] float32 of gray [H,W] uint8 inside region (bool [H,W]; None = the whole image), at least a
    few pixels from the existing corners [N,2]."""
    height, width = gray.shape
    min_distance = max(3, width // 200)
    mask = np.full((height, width), 255, np.uint8) if region is None else region.astype(np.uint8) * 255
    for u, v in np.round(existing).astype(int):
        cv2.circle(mask, (int(u), int(v)), min_distance, 0, -1)
    found = cv2.goodFeaturesToTrack(gray, max_corners, quality, min_distance, mask=mask)
    return np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2).astype(np.float32)


def track(previous: np.ndarray, current: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade from gray [H,W] ``previous`` to ``current``: (points [N,2] in current, ok [N] bool),
    ok where both directions converged and the backward track returns within MAX_FORWARD_BACKWARD_PX."""
    if len(points) == 0:
        return points.copy(), np.zeros(0, bool)
    params = {"winSize": LK_WINDOW, "maxLevel": LK_LEVELS}
    start = points.reshape(-1, 1, 2).astype(np.float32)
    forward, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, start, None, **params)
    backward, back_status, _ = cv2.calcOpticalFlowPyrLK(current, previous, forward, None, **params)
    error = np.linalg.norm((backward - start).reshape(-1, 2), axis=1)
    height, width = current.shape
    ahead = forward.reshape(-1, 2)
    inside = (ahead[:, 0] >= 0) & (ahead[:, 0] <= width - 1) & (ahead[:, 1] >= 0) & (ahead[:, 1] <= height - 1)
    ok = status.ravel().astype(bool) & back_status.ravel().astype(bool) & (error < MAX_FORWARD_BACKWARD_PX) & inside
    return ahead, ok


def essential_pose(p0: np.ndarray, p1: np.ndarray, K: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(R_1_0 [3,3], t_1_0 [3] unit, inliers [N] bool) from matched pixels p0, p1 [N,2] of cameras 0 and 1 with
    intrinsics K [3,3]: RANSAC on the essential matrix, then the cheirality check of recoverPose. None when too few
    inliers remain."""
    if len(p0) < MIN_INLIERS:
        return None
    E, mask = cv2.findEssentialMat(p0, p1, K, method=cv2.RANSAC, prob=RANSAC_CONFIDENCE,
                                   threshold=RANSAC_THRESHOLD_PX)
    if E is None or E.shape != (3, 3):  # several solutions stacked [3k,3]: a degenerate configuration
        return None
    count, R, t, mask = cv2.recoverPose(E, p0, p1, K, mask=mask)
    if count < MIN_INLIERS:
        return None
    return R, t.ravel() / np.linalg.norm(t), mask.ravel() > 0


def sampson_errors(R: np.ndarray, t: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Signed Sampson distances [N] of normalised image points x0, x1 [N,2] (K^-1 applied) under E = [t]x R: the
    first-order distance to the epipolar constraint x1^T E x0 = 0, in normalised units."""
    E = cross_matrix(t) @ R
    h0 = np.column_stack([x0, np.ones(len(x0))])
    h1 = np.column_stack([x1, np.ones(len(x1))])
    Ex0 = h0 @ E.T
    Etx1 = h1 @ E
    algebraic = np.sum(h1 * Ex0, axis=1)
    return algebraic / np.sqrt(Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2 + 1e-30)


def polish_pose(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(R_1_0, t_1_0 unit) minimising the squared Sampson errors of inlier pixels p0, p1 [N,2], from R [3,3], t [3]:
    the rotation as a left increment exp(w) R, the direction as t + a b1 + c b2 renormalised (b1, b2 span the plane
    perpendicular to t), so the five parameters are the pose's five degrees of freedom."""
    from scipy.optimize import least_squares

    K_inv = np.linalg.inv(K)
    x0 = (p0 @ K_inv[:2, :2].T) + K_inv[:2, 2]
    x1 = (p1 @ K_inv[:2, :2].T) + K_inv[:2, 2]
    basis = np.linalg.svd(t.reshape(1, 3))[2][1:]  # [2,3] orthonormal, perpendicular to t

    def pose(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        direction = t + params[3:] @ basis
        return cv2.Rodrigues(params[:3])[0] @ R, direction / np.linalg.norm(direction)

    fit = least_squares(lambda params: sampson_errors(*pose(params), x0, x1), np.zeros(5), method="lm")
    return pose(fit.x)


def parallax_px(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Parallax [N] in pixels of matches p0, p1 [N,2] once the rotation R_1_0 is taken out (p0 mapped through the
    infinite homography K R K^-1): what the translation alone moved each point, which decides its depth's error."""
    homogeneous = np.column_stack([p0, np.ones(len(p0))]) @ (K @ R @ np.linalg.inv(K)).T
    return np.linalg.norm(p1 - homogeneous[:, :2] / homogeneous[:, 2:], axis=1)


def triangulate(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points [N,3] in camera 0 from pixels p0, p1 [N,2] and the pose R_1_0 [3,3], t_1_0 [3] (linear
    triangulation; the points are in the units of t)."""
    P0 = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
    P1 = K @ np.hstack([R, t.reshape(3, 1)])
    homogeneous = cv2.triangulatePoints(P0, P1, p0.T.astype(np.float64), p1.T.astype(np.float64))
    return (homogeneous[:3] / homogeneous[3]).T


def road_normal(down: np.ndarray, travel: np.ndarray) -> np.ndarray:
    """Unit normal [3] of the road: down [3] (the mounting's gravity direction in the camera frame) without its
    component along travel [3] (the camera's direction of motion, which lies in the road)."""
    travel = travel / np.linalg.norm(travel)
    normal = down - (down @ travel) * travel
    return normal / np.linalg.norm(normal)


def fit_ground_plane(points: np.ndarray, normal: np.ndarray) -> GroundPlane | None:
    """The road plane with the given normal [3] through points [N,3] (camera frame), or None when no reliable one.

    Each point's height h = normal . X proposes a distance; the proposal that most heights agree with (within
    GROUND_TOLERANCE of it) wins, and the distance is the median of those heights. Reliable when at least
    MIN_GROUND_POINTS points and MIN_GROUND_SHARE of them agree; points above the road (cars, kerbs) and mistracks
    fall outside the consensus.
    """
    heights = points @ normal
    heights = heights[heights > 0]
    if len(heights) < MIN_GROUND_POINTS:
        return None
    support = np.abs(heights[None, :] - heights[:, None]) < GROUND_TOLERANCE * heights[:, None]  # [proposal, point]
    best = support[int(np.argmax(support.sum(axis=1)))]
    if best.sum() < max(MIN_GROUND_POINTS, MIN_GROUND_SHARE * len(heights)):
        return None
    distance = float(np.median(heights[best]))
    return GroundPlane(normal=normal, distance=distance,
                       inliers=np.abs(points @ normal - distance) < GROUND_TOLERANCE * distance)


def step_length(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, road: np.ndarray,
                camera_height_m: float, down: np.ndarray) -> float | None:
    """Metric length of the step R_1_0, t_1_0 (t unit) from inlier pixels p0, p1 [N,2]: the road points (p0 inside
    road, bool [H,W], with MIN_GROUND_PARALLAX_PX, in front of both cameras) triangulated with a unit baseline, the
    distance d of their plane (normal: down [3] across the direction of travel), camera_height_m / d. None when no
    reliable plane is found."""
    pixel = np.round(p0).astype(int)
    on_road = road[pixel[:, 1].clip(0, road.shape[0] - 1), pixel[:, 0].clip(0, road.shape[1] - 1)]
    on_road &= parallax_px(p0, p1, K, R) >= MIN_GROUND_PARALLAX_PX
    if on_road.sum() < MIN_GROUND_POINTS:
        return None
    points = triangulate(p0[on_road], p1[on_road], K, R, t)
    in_front = (points[:, 2] > 0) & ((points @ R.T + t)[:, 2] > 0)
    plane = fit_ground_plane(points[in_front], road_normal(down, -R.T @ t))
    return None if plane is None else camera_height_m / plane.distance


@dataclasses.dataclass(frozen=True)
class Step:
    """One frame-to-frame motion: R_1_0 [3,3], direction t_1_0 [3] (unit, or zero when standing still), and its
    length in metres, or None when neither the pose nor the road gave one (then ``trajectory`` holds the last)."""

    R: np.ndarray
    direction: np.ndarray
    length: float | None


class ClassicalVO:
    """Frame-to-frame monocular odometry with metric scale from the road: ``process`` each frame, then
    ``trajectory()``.

    K: [3,3] at the images' size; camera_height_m: the camera's height over the road; down: the direction of
    gravity in the camera frame [3] (optical y for a level camera).
    """

    def __init__(self, K: np.ndarray, camera_height_m: float = 1.65, down: np.ndarray | None = None) -> None:
        self.K = np.asarray(K, dtype=np.float64)
        self.camera_height_m = camera_height_m
        self.down = np.array([0.0, 1.0, 0.0]) if down is None else np.asarray(down, dtype=np.float64)
        self.steps: list[Step] = []
        self.previous: np.ndarray | None = None
        self.points = np.zeros((0, 2), np.float32)
        self.road: np.ndarray | None = None  # road_mask at the images' size

    def process(self, gray: np.ndarray) -> None:
        """Add one frame (uint8 [H,W]): the step from the previous frame, then corners topped up for the next."""
        if self.road is None:
            self.road = road_mask(*gray.shape, self.K, self.camera_height_m)
        if self.previous is not None:
            self.steps.append(self._step(self.previous, gray))
        self.previous = gray
        pixel = np.round(self.points).astype(int)
        if self.road[pixel[:, 1], pixel[:, 0]].sum() < MIN_ROAD_TRACKED:
            self.points = np.vstack([self.points, detect_corners(gray, self.points, self.road, ROAD_CORNERS,
                                                                 ROAD_QUALITY)])
        if len(self.points) < MIN_TRACKED:
            self.points = np.vstack([self.points, detect_corners(gray, self.points)])

    def _step(self, previous: np.ndarray, gray: np.ndarray) -> Step:
        tracked, ok = track(previous, gray, self.points)
        p0, p1 = self.points[ok], tracked[ok]
        self.points = p1
        if len(p0) and np.median(np.linalg.norm(p1 - p0, axis=1)) < MIN_MEDIAN_FLOW_PX:
            return Step(np.eye(3), np.zeros(3), 0.0)  # standing still
        found = essential_pose(p0, p1, self.K)
        if found is None:
            last = self.steps[-1] if self.steps else Step(np.eye(3), np.zeros(3), None)
            return Step(last.R, last.direction, None)
        R, t, inliers = found
        R, t = polish_pose(p0[inliers], p1[inliers], self.K, R, t)
        return Step(R, t, step_length(p0[inliers], p1[inliers], self.K, R, t, self.road, self.camera_height_m,
                                      self.down))

    @property
    def held_steps(self) -> int:
        """Steps whose length was held from another step (no reliable road)."""
        return sum(step.length is None for step in self.steps)

    def trajectory(self) -> np.ndarray:
        """T_first_camera [N,4,4] of every frame processed. A step without a length takes the last measured one (a
        car's speed changes little in a frame); steps before the first measured length take that one, the only
        look ahead."""
        measured = [step.length for step in self.steps if step.length is not None]
        length = measured[0] if measured else 0.0
        poses = [np.eye(4)]
        for step in self.steps:
            length = length if step.length is None else step.length
            T_1_0 = np.eye(4)
            T_1_0[:3, :3], T_1_0[:3, 3] = step.R, length * step.direction
            poses.append(poses[-1] @ np.linalg.inv(T_1_0))
        return np.asarray(poses)
