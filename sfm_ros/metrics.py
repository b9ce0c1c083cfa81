"""Evaluation metrics under the published protocols (numpy; evo for trajectory alignment and ATE/RPE).

Depth: the Eigen protocol (cap 80 m, Garg crop, per-image median scaling). Pose: SfMLearner's 5-frame
snippet ATE, whole-trajectory ATE/RPE via evo, and the KITTI odometry segment errors.
"""

from __future__ import annotations

import dataclasses
import itertools

import cv2
import numpy as np

__all__ = [
    "DEPTH_METRICS",
    "STEP_PARTS",
    "DepthResult",
    "align_trajectory",
    "depth_errors",
    "eigen_depth_evaluation",
    "garg_crop_mask",
    "kitti_segment_errors",
    "recompose_steps",
    "snippet_ate",
    "snippet_ates",
    "trajectory_errors",
]

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
MIN_DEPTH_M, MAX_DEPTH_M = 1e-3, 80.0


def depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven Eigen metrics over matched 1-D arrays of positive depths (metres)."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    ratio = np.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
        "sq_rel": float(np.mean((gt - pred) ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(ratio < 1.25)),
        "a2": float(np.mean(ratio < 1.25**2)),
        "a3": float(np.mean(ratio < 1.25**3)),
    }


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """The Garg/Eigen evaluation crop as a boolean [H,W] mask (fractions of the raw KITTI size)."""
    mask = np.zeros((height, width), dtype=bool)
    top, bottom = int(0.40810811 * height), int(0.99189189 * height)
    left, right = int(0.03594771 * width), int(0.96405229 * width)
    mask[top:bottom, left:right] = True
    return mask


@dataclasses.dataclass(frozen=True)
class DepthResult:
    """Metrics of one image and the median-scaling ratio applied (1.0 without median scaling)."""

    metrics: dict[str, float]
    scale_ratio: float
    num_points: int


def eigen_depth_evaluation(pred_depth: np.ndarray, gt_depth: np.ndarray, median_scaling: bool = True,
                           garg_crop: bool = True, min_depth: float = MIN_DEPTH_M,
                           max_depth: float = MAX_DEPTH_M) -> DepthResult:
    """Evaluate one predicted depth map [h,w] against sparse LiDAR ground truth [H,W] (0 = none).

    The prediction is resized bilinearly to the ground-truth size; pixels with min < gt < max inside the
    Garg crop count; with median scaling the prediction is multiplied by median(gt)/median(pred); then it
    is clamped to [min, max].
    """
    height, width = gt_depth.shape
    pred = cv2.resize(np.asarray(pred_depth, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    mask = (gt_depth > min_depth) & (gt_depth < max_depth)
    if garg_crop:
        mask &= garg_crop_mask(height, width)
    if not mask.any():
        raise ValueError("no ground-truth pixel inside the depth range and crop")
    gt_valid, pred_valid = gt_depth[mask].astype(np.float64), pred[mask].astype(np.float64)
    median_ratio = float(np.median(gt_valid) / np.median(pred_valid))
    ratio = median_ratio if median_scaling else 1.0
    pred_valid = np.clip(pred_valid * ratio, min_depth, max_depth)
    errors = depth_errors(gt_valid, pred_valid)
    if not median_scaling:
        errors["median_ratio"] = median_ratio  # how far a metric prediction is off: 1.0 is right
    return DepthResult(errors, ratio, int(mask.sum()))


def snippet_ate(gt_xyz: np.ndarray, pred_xyz: np.ndarray) -> float:
    """SfMLearner's snippet ATE: align first frames, least-squares scale, sqrt(sum sq. error) / n.

    gt_xyz, pred_xyz: [n,3] positions of the snippet's frames relative to its first frame. This is the
    formula behind the published 0.021 / 0.020 figures (note: divided by n, not a root-mean-square).
    """
    gt_xyz = np.asarray(gt_xyz, dtype=np.float64)
    pred_xyz = np.asarray(pred_xyz, dtype=np.float64) + (gt_xyz[0] - pred_xyz[0])
    denominator = np.sum(pred_xyz**2)
    scale = np.sum(gt_xyz * pred_xyz) / denominator if denominator > 0 else 0.0
    error = pred_xyz * scale - gt_xyz
    return float(np.sqrt(np.sum(error**2)) / gt_xyz.shape[0])


def snippet_ates(gt_poses: np.ndarray, pred_poses: np.ndarray, snippet_length: int = 5) -> np.ndarray:
    """Snippet ATE for every window of ``snippet_length`` frames; poses [N,4,4] in any common world frame."""
    errors = []
    for start in range(len(gt_poses) - snippet_length + 1):
        window = slice(start, start + snippet_length)
        gt_rel = np.linalg.inv(gt_poses[start]) @ gt_poses[window]
        pred_rel = np.linalg.inv(pred_poses[start]) @ pred_poses[window]
        errors.append(snippet_ate(gt_rel[:, :3, 3], pred_rel[:, :3, 3]))
    return np.asarray(errors)


STEP_PARTS = ("rotation", "direction", "length")


def recompose_steps(gt_poses: np.ndarray, est_poses: np.ndarray, from_estimate: str) -> tuple[np.ndarray, np.ndarray]:
    """The truth's trajectory with one part of every step taken from the estimate instead: its rotation, the
    direction of its translation or the translation's length (``from_estimate``, one of STEP_PARTS). What the
    trajectory's error would be if only that part were estimated: the error budget of an odometry.

    gt_poses, est_poses: [N,4,4] camera-to-world poses of the same frames. A frame whose estimated pose equals the
    previous one exactly (no estimate of its own, such as the frame before a pose window fills) is merged into the
    next step, on both sides. Returns the kept frames' indices [M] and the recomposed poses [M,4,4], starting at the
    truth's first pose."""
    if from_estimate not in STEP_PARTS:
        raise ValueError(f"from_estimate must be one of {STEP_PARTS}, got {from_estimate!r}")
    gt_poses, est_poses = np.asarray(gt_poses, dtype=np.float64), np.asarray(est_poses, dtype=np.float64)
    kept = [0] + [i for i in range(1, len(est_poses)) if not np.array_equal(est_poses[i], est_poses[i - 1])]
    poses = [gt_poses[0]]
    for previous, current in itertools.pairwise(kept):
        truth = np.linalg.inv(gt_poses[previous]) @ gt_poses[current]
        estimate = np.linalg.inv(est_poses[previous]) @ est_poses[current]
        step = truth.copy()
        true_length, estimated_length = np.linalg.norm(truth[:3, 3]), np.linalg.norm(estimate[:3, 3])
        if from_estimate == "rotation":
            step[:3, :3] = estimate[:3, :3]
        elif from_estimate == "direction":
            step[:3, 3] = estimate[:3, 3] / estimated_length * true_length if estimated_length > 0 else 0.0
        else:
            step[:3, 3] = truth[:3, 3] / true_length * estimated_length if true_length > 0 else estimate[:3, 3]
        poses.append(poses[-1] @ step)
    return np.asarray(kept), np.asarray(poses)


def _evo_trajectory(stamps_s: np.ndarray, poses: np.ndarray):
    from evo.core.trajectory import PoseTrajectory3D

    return PoseTrajectory3D(poses_se3=[np.asarray(T, dtype=np.float64) for T in poses],
                            timestamps=np.asarray(stamps_s, dtype=np.float64))


def align_trajectory(gt_poses: np.ndarray, pred_poses: np.ndarray, with_scale: bool = True
                     ) -> tuple[np.ndarray, float]:
    """Umeyama alignment (evo) of predicted positions onto ground truth: (aligned poses [N,4,4], scale)."""
    from evo.core.geometry import umeyama_alignment

    rotation, translation, scale = umeyama_alignment(pred_poses[:, :3, 3].T, gt_poses[:, :3, 3].T, with_scale)
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = translation
    aligned = np.array([T @ P for P in pred_poses])
    aligned[:, :3, 3] = (scale * rotation @ pred_poses[:, :3, 3].T).T + translation
    return aligned, float(scale)


def trajectory_errors(gt_stamps_s: np.ndarray, gt_poses: np.ndarray, pred_stamps_s: np.ndarray,
                      pred_poses: np.ndarray, align: str = "sim3", max_time_diff_s: float = 0.01) -> dict:
    """Whole-trajectory ATE and RPE with evo, after associating by timestamp.

    align: "sim3" (rotation, translation, scale), "se3" (no scale: the metric-scale check) or "none".
    Returns ATE RMSE/mean/median/max (m), RPE translation RMSE per frame (m) and rotation RMSE (deg), the
    fitted scale, and per-frame translation errors for plots.
    """
    import copy

    from evo.core import metrics, sync

    reference = _evo_trajectory(gt_stamps_s, gt_poses)
    estimate = _evo_trajectory(pred_stamps_s, pred_poses)
    reference, estimate = sync.associate_trajectories(reference, estimate, max_diff=max_time_diff_s)
    scale = 1.0
    if align in ("sim3", "se3"):
        estimate = copy.deepcopy(estimate)
        _, _, scale_fitted = estimate.align(reference, correct_scale=align == "sim3")
        scale = float(scale_fitted)
    elif align != "none":
        raise ValueError(f"align must be sim3, se3 or none, got {align!r}")
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((reference, estimate))
    rpe_t = metrics.RPE(metrics.PoseRelation.translation_part, delta=1, delta_unit=metrics.Unit.frames,
                        all_pairs=False)
    rpe_t.process_data((reference, estimate))
    rpe_r = metrics.RPE(metrics.PoseRelation.rotation_angle_deg, delta=1, delta_unit=metrics.Unit.frames,
                        all_pairs=False)
    rpe_r.process_data((reference, estimate))
    stats = ape.get_all_statistics()
    return {"align": align, "scale": scale, "num_poses": int(reference.num_poses),
            "ate_rmse_m": float(stats["rmse"]), "ate_mean_m": float(stats["mean"]),
            "ate_median_m": float(stats["median"]), "ate_max_m": float(stats["max"]),
            "rpe_trans_rmse_m": float(rpe_t.get_statistic(metrics.StatisticsType.rmse)),
            "rpe_rot_rmse_deg": float(rpe_r.get_statistic(metrics.StatisticsType.rmse)),
            "per_frame_error_m": ape.error.tolist(),
            "aligned_xyz": estimate.positions_xyz.tolist(), "reference_xyz": reference.positions_xyz.tolist()}


def kitti_segment_errors(gt_poses: np.ndarray, pred_poses: np.ndarray,
                         lengths: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800), step: int = 10
                         ) -> dict[str, float | int]:
    """The KITTI odometry devkit errors: mean translation error (%) and rotation error (deg/100 m) over all
    segments of the given lengths, starting every ``step`` frames. Segments need trajectories >= 100 m."""
    positions = gt_poses[:, :3, 3]
    distances = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(positions, axis=0), axis=1))])
    t_errors, r_errors = [], []
    for first in range(0, len(gt_poses), step):
        for length in lengths:
            beyond = np.nonzero(distances > distances[first] + length)[0]
            if not len(beyond):
                continue
            last = beyond[0]
            gt_delta = np.linalg.inv(gt_poses[first]) @ gt_poses[last]
            pred_delta = np.linalg.inv(pred_poses[first]) @ pred_poses[last]
            error = np.linalg.inv(pred_delta) @ gt_delta
            t_errors.append(np.linalg.norm(error[:3, 3]) / length)
            angle = np.arccos(np.clip((np.trace(error[:3, :3]) - 1) / 2, -1, 1))
            r_errors.append(angle / length)
    if not t_errors:
        return {"segments": 0, "t_err_percent": float("nan"), "r_err_deg_per_100m": float("nan")}
    return {"segments": len(t_errors), "t_err_percent": float(100 * np.mean(t_errors)),
            "r_err_deg_per_100m": float(np.degrees(np.mean(r_errors)) * 100)}
