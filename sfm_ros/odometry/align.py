"""Pose refinement with the predicted depth: direct photometric alignment of two frames over SE(3).

Starting from the pose net's motion, ``refine_pose`` minimises the photometric error of warping the current frame
into the previous one through the previous frame's depth, the geometry of training's inverse warp:

    r(p) = I_cur(pi(K (R X_p + t))) - I_prev(p),   X_p = D_prev(p) K^-1 [u v 1]^T,

with T = [R | t] = T_current_previous (points of the previous camera into the current one), by Gauss-Newton on a
left increment exp(xi) T, xi = (v, w), coarse to fine over an image pyramid, on the pixels of the previous frame with
the strongest gradients and a valid depth, with Huber weights. It falls back to the starting pose when the error does
not go down or the step is implausibly large. Its Hessian gives the covariance of the pose: sigma^2 H^-1.

``ground_translation`` measures a step's metric length from the ground alone: with the camera's height and mounting
known, the ground's depth at each pixel follows from the plane (``ground_plane_depth``), not from the network, so the
same alignment over the translation (rotation held) on the ground's pixels gives the translation in metres.

numpy and OpenCV only (the node's run-time path).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from sfm_ros.geometry import backproject, cross_matrix, ground_plane_depth, invert_transform, scale_intrinsics

__all__ = ["ALIGNMENT_SOLVER", "GROUND_SOLVER", "GroundMotion", "RefineResult", "SideSlip", "Solver",
           "across_direction_information", "depth_uncertainty_weights", "ground_translation", "huber_cost",
           "refine_pose", "se3_exp", "side_slip", "translation_parallax_px"]


@dataclasses.dataclass(frozen=True)
class Solver:
    """Gauss-Newton settings: pyramid levels (coarse to fine), iterations per level, the most points per level (those
    with the strongest gradients), the Huber threshold on intensity residuals (grey levels in [0, 1]), and the
    increment's norm below which a level has converged."""

    levels: int
    iterations: int
    max_points: int
    huber: float
    tolerance: float


# The photometric alignment of two frames over SE(3) (refine_pose).
ALIGNMENT_SOLVER = Solver(levels=3, iterations=20, max_points=3000, huber=0.05, tolerance=1e-6)
# The ground's translation alone (ground_translation): three unknowns, fewer points (the ground's), converged coarser.
GROUND_SOLVER = Solver(levels=3, iterations=10, max_points=2000, huber=0.05, tolerance=1e-5)
# The ground measures a step only with this many ground points that have texture: a featureless ground says nothing.
GROUND_MIN_POINTS = 100
# A ground point has texture when its intensity gradient is at least this (grey levels in [0, 1] per pixel).
GROUND_MIN_GRADIENT = 0.01


@dataclasses.dataclass(frozen=True)
class SideSlip:
    """refine_pose's prior that the base does not slip sideways off a circular arc (``side_slip``): the camera's
    mounting T_base_camera [4,4] (base z up, x forward) and the std-dev of that sideways motion, metres."""

    T_base_camera: np.ndarray
    sigma_m: float


@dataclasses.dataclass(frozen=True)
class RefineResult:
    """T_current_previous [4,4] (refined, or the start when not accepted); covariance [6,6] of its left increment
    (v, w: translation then rotation, in the current camera's axes), None when not accepted; the mean Huber-weighted
    squared residuals before and after on the finest level's points; the number of points; why it was (not)
    accepted; the share of the points that the result keeps in view of the current frame (the two views' overlap;
    NaN when not accepted)."""

    T_current_previous: np.ndarray
    covariance: np.ndarray | None
    residual_before: float
    residual_after: float
    points: int
    accepted: bool
    reason: str
    in_view_share: float = float("nan")


def se3_exp(xi: np.ndarray) -> np.ndarray:
    """exp of a twist xi = (v, w) [6] -> [4,4] (the exact SE(3) exponential)."""
    v, w = np.asarray(xi[:3], dtype=np.float64), np.asarray(xi[3:], dtype=np.float64)
    angle = float(np.linalg.norm(w))
    rotation = cv2.Rodrigues(w.reshape(3, 1))[0]
    hat = cross_matrix(w)
    if angle < 1e-9:
        V = np.eye(3) + 0.5 * hat
    else:
        V = (np.eye(3) + (1 - np.cos(angle)) / angle**2 * hat
             + (angle - np.sin(angle)) / angle**3 * hat @ hat)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rotation, V @ v
    return T


def _pyramid(image: np.ndarray, depth: np.ndarray, K: np.ndarray, levels: int
             ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[(image, depth, K)] finest first; depth takes every second pixel (no mixing across edges), K follows the
    pixel-centre convention of a 2x downsampling."""
    out = [(image, depth, K)]
    for _ in range(levels - 1):
        image, depth = cv2.pyrDown(image), depth[::2, ::2]
        image = image[: depth.shape[0], : depth.shape[1]]
        K = scale_intrinsics(K, 0.5, 0.5)
        out.append((image, depth, K))
    return out


def _gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/du, d/dv) [H,W] of an image in intensity per pixel (Sobel with ksize 3 sums 8 central differences)."""
    return (cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3, scale=0.125),
            cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3, scale=0.125))


def _select_points(image: np.ndarray, depth: np.ndarray, K: np.ndarray, max_points: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """3-D points [N,3] (previous camera) and their intensities [N] at the pixels with the strongest gradient and a
    usable depth, away from the border."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    valid = np.isfinite(depth) & (depth > 0)
    valid[:2], valid[-2:], valid[:, :2], valid[:, -2:] = False, False, False, False
    v, u = np.nonzero(valid)
    if len(v) > max_points:
        keep = np.argpartition(-magnitude[v, u], max_points - 1)[:max_points]
        v, u = v[keep], u[keep]
    points = backproject(np.where(valid, depth, 0.0), K)[v, u]
    return points, image[v, u].astype(np.float64)


def _residuals(T: np.ndarray, points: np.ndarray, reference: np.ndarray, image: np.ndarray, gradients: tuple,
               K: np.ndarray, with_jacobian: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(residuals [N], in-view mask [N], Jacobians [N,6] or None) of the warp by T."""
    X = points @ T[:3, :3].T + T[:3, 3]
    z = X[:, 2]
    in_front = z > 1e-3
    safe = np.where(in_front, z, 1.0)
    u = K[0, 0] * X[:, 0] / safe + K[0, 2]
    v = K[1, 1] * X[:, 1] / safe + K[1, 2]
    height, width = image.shape
    inside = in_front & (u >= 1) & (u <= width - 2) & (v >= 1) & (v <= height - 2)
    map_u, map_v = u.astype(np.float32).reshape(1, -1), v.astype(np.float32).reshape(1, -1)
    sampled = cv2.remap(image, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
    residual = sampled.astype(np.float64) - reference
    if not with_jacobian:
        return residual, inside, None
    gx = cv2.remap(gradients[0], map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
    gy = cv2.remap(gradients[1], map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
    x, y, inverse_z = X[:, 0], X[:, 1], 1.0 / safe
    gx, gy = gx.astype(np.float64), gy.astype(np.float64)
    # J = dI/dX [N,3] (the image gradient times d(u, v)/dX), then dX/dxi = [I | -[X]x] for a left increment gives
    # dI/dw = g . (-[X]x w) = (X x g) . w. Written out column by column: a few large array operations per iteration
    # instead of many small ones (the alignment runs them thousands of times a second).
    J = np.empty((len(X), 6))
    J[:, 0] = gx * (K[0, 0] * inverse_z)
    J[:, 1] = gy * (K[1, 1] * inverse_z)
    J[:, 2] = gx * (-K[0, 0] * x * inverse_z**2) + gy * (-K[1, 1] * y * inverse_z**2)
    J[:, 3] = X[:, 1] * J[:, 2] - X[:, 2] * J[:, 1]
    J[:, 4] = X[:, 2] * J[:, 0] - X[:, 0] * J[:, 2]
    J[:, 5] = X[:, 0] * J[:, 1] - X[:, 1] * J[:, 0]
    return residual, inside, J


def huber_cost(T: np.ndarray, points: np.ndarray, reference: np.ndarray, image: np.ndarray, K: np.ndarray,
               huber: float, min_inside: int, weights: np.ndarray | None = None) -> float:
    """Mean Huber cost (threshold ``huber``) of the residuals of the previous camera's points [N,3] warped by
    T_current_previous ``T`` [4,4] into ``image`` [H,W] (K [3,3]) against their intensities ``reference`` [N], over
    the points that stay in view (weighted by ``weights`` [N] when given); inf when fewer than ``min_inside`` do. The
    alignments accept a result only when it lowers this."""
    residual, inside, _ = _residuals(T, points, reference, image, (), K, False)
    if inside.sum() < min_inside:
        return np.inf
    r = np.abs(residual[inside])
    cost = np.where(r < huber, r**2, 2 * huber * r - huber**2)
    return float(np.mean(cost) if weights is None else np.sum(weights[inside] * cost) / np.sum(weights[inside]))


def across_direction_information(translation: np.ndarray, fraction: float) -> np.ndarray | None:
    """Information [3,3] of a prior that holds a translation to the direction of ``translation`` [3]: its std-dev
    across that direction ``fraction`` of its length, at least 5 mm, and nothing along it. None when off
    (fraction <= 0) or when ``translation`` has no direction."""
    length = float(np.linalg.norm(translation))
    if fraction <= 0 or length < 1e-6:
        return None
    across = np.eye(3) - np.outer(translation, translation) / length**2
    return across / max(fraction * length, 0.005) ** 2


def _with_translation_prior(H: np.ndarray, g: np.ndarray, T: np.ndarray, start: np.ndarray, information: np.ndarray,
                            share: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton terms [3,3], [3] over the increment's translation v (the rotation held, so dt = v) plus ``share``
    times those of the prior (t - t_start)^T information (t - t_start) on T's translation t."""
    return H + share * information, g + share * information @ (T[:3, 3] - start[:3, 3])


def _with_side_slip(H: np.ndarray, g: np.ndarray, T: np.ndarray, prior: SideSlip, share: float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton terms [6,6], [6] plus ``share`` times those of the side-slip prior at T."""
    slip, slip_gradient = side_slip(T, prior.T_base_camera)
    H = H + share * np.outer(slip_gradient, slip_gradient) / prior.sigma_m**2
    g = g + share * slip_gradient * slip / prior.sigma_m**2
    return H, g


def side_slip(T_current_previous: np.ndarray, T_base_camera: np.ndarray) -> tuple[float, np.ndarray]:
    """How far the base moved sideways off the chord of a planar circular arc during the step (m), and the gradient
    [6] of that with respect to a left increment (v, w) of T_current_previous [4,4] (points of the previous camera
    into the current one; T_base_camera [4,4], base z up, x forward).

    A car's base frame on its rear axle does not slip sideways: over a step that turns it by yaw theta it moves along
    the chord at theta/2, so its sideways motion -t_x sin(theta/2) + t_y cos(theta/2) (t: the step's translation in
    the previous base's axes) is zero. Yaw and sideways motion are what a narrow camera confuses most; this ties them.
    """
    A = np.asarray(T_base_camera, dtype=np.float64)
    # The step of the base: P = A T^-1 A^-1. A left increment exp(xi) T is a right increment exp(-Ad_A xi) of P.
    P = A @ invert_transform(np.asarray(T_current_previous, dtype=np.float64)) @ invert_transform(A)
    R, t = P[:3, :3], P[:3, 3]
    half_yaw = 0.5 * float(np.arctan2(R[1, 0], R[0, 0]))
    s, c = np.sin(half_yaw), np.cos(half_yaw)
    residual = -t[0] * s + t[1] * c
    # Right increment (v, w) of P: dt = R v; the yaw moves by w_z (the step turns about the base's up axis).
    d_residual_d_eta = np.concatenate([np.array([-s, c, 0.0]) @ R, [0.0, 0.0, -0.5 * (t[0] * c + t[1] * s)]])
    R_A = A[:3, :3]
    adjoint = np.zeros((6, 6))  # [[R_A, [a]x R_A], [0, R_A]], assembled by hand: np.block costs more than the maths
    adjoint[:3, :3], adjoint[:3, 3:], adjoint[3:, 3:] = R_A, cross_matrix(A[:3, 3]) @ R_A, R_A
    return float(residual), -d_residual_d_eta @ adjoint


def refine_pose(previous: np.ndarray, previous_depth: np.ndarray, current: np.ndarray, K: np.ndarray,
                T_current_previous: np.ndarray, *, side_slip: SideSlip | None = None, relative_depth_sigma: float = 0.0,
                max_translation_change: float = 2.0, max_rotation_change_rad: float = 0.2,
                solver: Solver = ALIGNMENT_SOLVER) -> RefineResult:
    """Refine T_current_previous [4,4] (metres, the depth's units) by aligning ``current`` to ``previous``.

    previous, current: grey float32 [H,W] in [0, 1]; previous_depth: [H,W] metres (0, inf or NaN = none); K [3,3] at
    H,W. side_slip: adds the base's sideways motion off a circular arc (``side_slip``), with its std, to the
    photometric cost, whose residuals are weighed as if their std were the solver's Huber threshold: a car does not
    slip sideways. relative_depth_sigma > 0: the predicted depth's relative error (std); each residual counts less
    the more that error moves it (``depth_uncertainty_weights``), so the rotation rests on the far points the
    depth's error does not move, and near points count for the translation only as much as their depth is to be
    trusted.
    max_translation_change: the largest change of the translation accepted, as a fraction of its length (at least
    5 cm; 2 by default: the depth may well say the pose net's step is half or twice as long), max_rotation_change_rad
    likewise.
    """
    start = np.asarray(T_current_previous, dtype=np.float64)
    huber = solver.huber
    previous_levels = _pyramid(previous.astype(np.float32), previous_depth.astype(np.float32), K, solver.levels)
    current_levels = _pyramid(current.astype(np.float32), previous_depth.astype(np.float32), K, solver.levels)
    finest_points, finest_reference = _select_points(*previous_levels[0], solver.max_points)
    if len(finest_points) < 50:
        return RefineResult(start, None, np.nan, np.nan, len(finest_points), False, "too few points with depth")
    gradients0 = _gradients(current_levels[0][0])

    depth_weights = None
    if relative_depth_sigma > 0:
        # The acceptance test compares the cost that is minimised, with the weights held at the start's, so that
        # before and after are measured alike.
        _, _, J_start = _residuals(start, finest_points, finest_reference, current_levels[0][0], gradients0, K, True)
        depth_weights = depth_uncertainty_weights(J_start[:, :3], finest_points @ start[:3, :3].T,
                                                  relative_depth_sigma, huber)

    def cost(T: np.ndarray) -> float:
        return huber_cost(T, finest_points, finest_reference, current_levels[0][0], K, huber, 50, depth_weights)

    before = cost(start)
    priors = None
    if side_slip is not None:
        def priors(H: np.ndarray, g: np.ndarray, T: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
            return _with_side_slip(H, g, T, side_slip, share)
    T = _gauss_newton(start, previous_levels, current_levels, (finest_points, finest_reference, gradients0), solver,
                      priors=priors, relative_depth_sigma=relative_depth_sigma)
    after = cost(T)
    change = T @ np.linalg.inv(start)
    translation_change = float(np.linalg.norm(change[:3, 3]))
    rotation_change = float(np.linalg.norm(cv2.Rodrigues(change[:3, :3])[0]))
    limit = max(max_translation_change * float(np.linalg.norm(start[:3, 3])), 0.05)
    if not np.isfinite(after) or after >= before:
        return RefineResult(start, None, before, after, len(finest_points), False, "the error did not go down")
    if translation_change > limit or rotation_change > max_rotation_change_rad:
        return RefineResult(start, None, before, after, len(finest_points), False,
                            f"implausible change ({translation_change:.3f} m, {rotation_change:.3f} rad)")
    # Covariance of the increment at the finest level: the inverse of the images' information H / sigma^2 (sigma^2
    # the weighted residual variance) plus the priors' (in metres, as given).
    residual, inside, J = _residuals(T, finest_points, finest_reference, current_levels[0][0], gradients0, K, True)
    in_view_share = float(inside.mean())
    r, J = residual[inside], J[inside]
    weights = _residual_weights(r, J, finest_points[inside], T, huber, relative_depth_sigma)
    H = (J * weights[:, None]).T @ J
    sigma2 = float(np.sum(weights * r**2) / max(len(r) - 6, 1))
    information = H / max(sigma2, 1e-12)
    if side_slip is not None:
        information, _ = _with_side_slip(information, np.zeros(6), T, side_slip)
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        covariance = None
    return RefineResult(T, covariance, before, after, len(finest_points), True, "accepted", in_view_share)


@dataclasses.dataclass(frozen=True)
class GroundMotion:
    """translation [3] of T_current_previous in metres as the ground's image motion says (the start's when not
    accepted); the Huber cost before and after on the finest level's ground points; their number; why it was (not)
    accepted."""

    translation: np.ndarray
    residual_before: float
    residual_after: float
    points: int
    accepted: bool
    reason: str


def translation_parallax_px(depth: np.ndarray, K: np.ndarray, T_current_previous: np.ndarray) -> np.ndarray:
    """How far [H,W] (pixels) the translation of T_current_previous [4,4] alone moves each pixel of the previous
    frame, whose depth [H,W] (camera Z; inf: none, giving 0) and K [3,3] are given: |pi(R X + t) - pi(R X)|. The
    rotation moves near and far points alike; only this part of the motion says how long the step is. NaN where
    either projection falls behind the camera."""
    parallax = np.zeros(depth.shape)
    finite = np.isfinite(depth)
    points = backproject(np.where(finite, depth, 0.0), K)[finite]  # only where there is depth (the ground)
    rotated = points @ np.asarray(T_current_previous, dtype=np.float64)[:3, :3].T
    moved = rotated + T_current_previous[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = (moved[:, :2] / moved[:, 2:] - rotated[:, :2] / rotated[:, 2:]) * np.array([K[0, 0], K[1, 1]])
        values = np.hypot(shift[:, 0], shift[:, 1])
    values[(moved[:, 2] <= 0) | (rotated[:, 2] <= 0)] = np.nan
    parallax[finite] = values
    return parallax


def ground_translation(previous: np.ndarray, current: np.ndarray, K: np.ndarray, T_current_previous: np.ndarray,
                       ground_mask: np.ndarray, normal: np.ndarray, camera_height_m: float, *,
                       min_parallax_px: float = 0.0, direction_sigma: float = 0.0, solver: Solver = GROUND_SOLVER
                       ) -> GroundMotion:
    """The translation of T_current_previous [4,4] in metres, measured on the ground of ``previous``.

    previous, current: grey float32 [H,W] in [0, 1]; ground_mask: bool [H,W], the previous frame's pixels on the
    ground plane (``scale.ground_mask``); normal [3] (unit, pointing down) and camera_height_m: the plane in the
    previous camera's optical frame; K [3,3] at H,W. The rotation is held (the network's or the refinement's: far
    points fix it better than the ground does); the translation is optimised by Gauss-Newton with Huber weights,
    coarse to fine, from the start's. Not accepted when fewer than GROUND_MIN_POINTS ground points have texture
    (GROUND_MIN_GRADIENT) or the error goes up. With ``min_parallax_px`` > 0 only the ground points that the start's
    translation moves at least that far (``translation_parallax_px``) count: points that move less than a pixel
    pull the step toward zero (resampling a fine texture at a fraction of a pixel blurs it, and the blur costs least
    where the motion rounds to none). ``direction_sigma`` > 0 adds a prior holding the translation to the start's
    direction, its std-dev across it that share of the start's length (at least 5 mm): the ground then measures the
    length along the alignment's direction instead of re-deciding the direction, in which a ground mask that holds
    more than road can pull the search toward a shorter step.
    """
    start = np.asarray(T_current_previous, dtype=np.float64)
    depth = ground_plane_depth(previous.shape, K, normal, camera_height_m)
    depth = np.where(ground_mask, depth, np.inf)
    if min_parallax_px > 0:
        depth = np.where(translation_parallax_px(depth, K, start) >= min_parallax_px, depth, np.inf)
    depth = depth.astype(np.float32)
    previous_levels = _pyramid(previous.astype(np.float32), depth, K, solver.levels)
    current_levels = _pyramid(current.astype(np.float32), depth, K, solver.levels)

    def rejected(reason: str, points: int, before: float = np.nan, after: float = np.nan) -> GroundMotion:
        return GroundMotion(start[:3, 3].copy(), before, after, points, False, reason)

    finest_points, finest_reference = _select_points(*previous_levels[0], solver.max_points)
    gradient_x, gradient_y = _gradients(previous_levels[0][0])
    textured = int((np.hypot(gradient_x, gradient_y)[np.isfinite(depth)] >= GROUND_MIN_GRADIENT).sum())
    if min(textured, len(finest_points)) < GROUND_MIN_POINTS:
        moving = f" that the step moves {min_parallax_px:g} px or more" if min_parallax_px > 0 else ""
        return rejected(f"too few textured ground points{moving} ({min(textured, len(finest_points))})", textured)
    gradients0 = _gradients(current_levels[0][0])

    def cost(T: np.ndarray) -> float:
        return huber_cost(T, finest_points, finest_reference, current_levels[0][0], K, solver.huber,
                          GROUND_MIN_POINTS)

    before = cost(start)
    information = across_direction_information(start[:3, 3], direction_sigma)
    priors = None
    if information is not None:
        def priors(H: np.ndarray, g: np.ndarray, T: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
            return _with_translation_prior(H, g, T, start, information, share)
    finest = (finest_points, finest_reference, gradients0)
    T = _gauss_newton(start, previous_levels, current_levels, finest, solver, translation_only=True, priors=priors)
    after = cost(T)
    if not np.isfinite(after) or after > before:
        # The coarse levels can lead a start that is already close astray: the finest level alone, from the start.
        T = _gauss_newton(start, previous_levels, current_levels, finest, dataclasses.replace(solver, levels=1),
                          translation_only=True, priors=priors)
    after = cost(T)
    if not np.isfinite(after) or after > before:
        return rejected("the error went up", len(finest_points), before, after)
    return GroundMotion(T[:3, 3].copy(), before, after, len(finest_points), True, "accepted")


def depth_uncertainty_weights(J_translation: np.ndarray, rotated_points: np.ndarray, relative_depth_sigma: float,
                              noise_sigma: float) -> np.ndarray:
    """Weights [N] in (0, 1] that count each residual as if its noise were the image's plus what the depth's error
    makes of it.

    Scaling a point's depth by (1 + e) moves it, in the current camera, by e (X - t) = e R X_prev, so its residual
    changes by e dI/dX . (R X_prev): zero for a pure rotation (a projection does not see a point's distance) and
    largest for near points under translation. With e ~ N(0, relative_depth_sigma^2) that adds
    s^2 = (relative_depth_sigma dI/dX . R X_prev)^2 to the residual's variance noise_sigma^2; the weight is
    noise_sigma^2 / (noise_sigma^2 + s^2). J_translation: dI/dX [N,3] (the Jacobian's translation columns);
    rotated_points: R X_prev [N,3].
    """
    spread = relative_depth_sigma * np.einsum("ij,ij->i", J_translation, rotated_points)
    return noise_sigma**2 / (noise_sigma**2 + spread**2)


def _residual_weights(r: np.ndarray, J: np.ndarray, points: np.ndarray, T: np.ndarray, huber: float,
                      relative_depth_sigma: float) -> np.ndarray:
    """Weights [N] of residuals r [N] with Jacobians J [N,>=3] of the previous camera's points [N,3] warped by T:
    Huber's, times ``depth_uncertainty_weights`` when relative_depth_sigma > 0 (noise: the Huber threshold)."""
    weights = np.where(np.abs(r) < huber, 1.0, huber / np.maximum(np.abs(r), 1e-12))
    if relative_depth_sigma > 0:
        weights = weights * depth_uncertainty_weights(J[:, :3], points @ T[:3, :3].T, relative_depth_sigma, huber)
    return weights


def _gauss_newton(start: np.ndarray, previous_levels: list, current_levels: list, finest: tuple, solver: Solver, *,
                  translation_only: bool = False, priors=None, relative_depth_sigma: float = 0.0) -> np.ndarray:
    """Gauss-Newton with Huber weights on a left increment of ``start`` [4,4] (v, w: translation then rotation; with
    ``translation_only`` v alone, the rotation held, so a step moves every point by v), from pyramid level
    ``solver.levels - 1`` down to the finest, whose selected points, intensities and gradients ``finest`` holds.
    ``priors(H, g, T, share)`` adds prior terms to the normal equations, whose photometric part it gets divided by
    huber^2; ``share``: this level's points over the finest's. ``relative_depth_sigma`` > 0 also weighs each residual
    by ``depth_uncertainty_weights`` (noise: the Huber threshold). A level stops when the increment is below the
    solver's tolerance. Returns the transform."""
    huber = solver.huber
    columns = 3 if translation_only else 6
    T = np.array(start, dtype=np.float64)
    for level in reversed(range(solver.levels)):
        image_previous, depth_previous, K_level = previous_levels[level]
        image_current = current_levels[level][0]
        if level == 0:  # selected and differentiated once, by the caller
            points, reference, gradients = finest
        else:
            points, reference = _select_points(image_previous, depth_previous, K_level, solver.max_points)
            gradients = _gradients(image_current)
        if len(points) < 30:
            continue
        for _ in range(solver.iterations):
            residual, inside, J = _residuals(T, points, reference, image_current, gradients, K_level, True)
            if inside.sum() < 30:
                break
            r, J = residual[inside], J[inside, :columns]
            weights = _residual_weights(r, J, points[inside], T, huber, relative_depth_sigma)
            weighted = J * weights[:, None]
            H = weighted.T @ J
            g = weighted.T @ r
            if priors is not None:
                # Priors count as much at every level: scaled like the number of points.
                H, g = priors(H / huber**2, g / huber**2, T, len(points) / len(finest[0]))
            try:
                step = -np.linalg.solve(H + 1e-9 * np.trace(H) * np.eye(columns), g)
            except np.linalg.LinAlgError:
                break
            if translation_only:
                T[:3, 3] += step
            else:
                T = se3_exp(step) @ T
            if np.linalg.norm(step) < solver.tolerance:  # converged at this level
                break
    return T
