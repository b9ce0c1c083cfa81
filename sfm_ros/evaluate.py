"""``sfm eval``: depth under the Eigen protocol and pose under SfMLearner's and the trajectory protocols.

Predictions come from a model bundle through any backend (so an exported model is evaluated as it runs on
the robot) or, for pose, from a TUM trajectory written by ``sfm replay``. Ground truth comes from KITTI
LiDAR, KITTI odometry pose files, KITTI raw OXTS, or an Odometry topic in a bag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sfm_ros import kitti
from sfm_ros.backends import Backend, depth_input_from_frames, preprocess
from sfm_ros.metrics import DEPTH_METRICS, eigen_depth_evaluation, kitti_segment_errors, snippet_ates, trajectory_errors
from sfm_ros.report import plot_depth_grid, plot_frame_errors, plot_trajectory, write_report

__all__ = ["DepthSample", "EvaluationError", "depth_samples_from_drive", "depth_samples_from_list",
           "evaluate_dense_depth", "evaluate_depth", "evaluate_pose", "frames_before", "predict_depth", "read_tum",
           "run_sequence", "write_tum"]


class EvaluationError(ValueError):
    """An evaluation cannot produce a result from what it was given; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class DepthSample:
    """An image with its LiDAR scan and calibration (camera 2 unless said otherwise), and the drive's frame before it
    (the one after for a drive's first frame, as in training; None when neither exists) for two-frame depth nets."""

    image: Path
    scan: Path
    calib_dir: Path
    camera: int = 2
    previous: Path | None = None


def _neighbour_image(image: Path) -> Path | None:
    """The frame before ``image`` in its folder (KITTI's zero-padded frame numbers), else the one after, else None."""
    if not image.stem.isdigit():
        return None
    for offset in (-1, 1):
        number = int(image.stem) + offset
        if number < 0:
            continue
        for suffix in (image.suffix, *kitti.IMAGE_SUFFIXES):
            candidate = image.with_name(f"{number:0{len(image.stem)}d}{suffix}")
            if candidate.is_file():
                return candidate
    return None


def depth_samples_from_list(list_file: str | Path, kitti_root: str | Path) -> list[DepthSample]:
    """Samples of an Eigen-format test list that exist under ``kitti_root``."""
    return [DepthSample(i, s, c, previous=_neighbour_image(i))
            for i, s, c in kitti.eigen_test_files(list_file, kitti_root)]


def depth_samples_from_drive(drive_dir: str | Path, camera: int = 2) -> list[DepthSample]:
    """Every frame of a KITTI raw drive that has a LiDAR scan."""
    sequence = kitti.kitti_raw_drive(drive_dir, camera)
    if sequence.velodyne_paths is None:
        raise kitti.KittiError(f"{drive_dir} has no velodyne_points/data: no depth ground truth")
    images = sequence.image_paths
    return [DepthSample(image, scan, sequence.calib_dir, camera, previous=before)
            for image, scan, before in zip(images, sequence.velodyne_paths, frames_before(images), strict=True)]


Frame = TypeVar("Frame")


def frames_before(frames: Sequence[Frame]) -> list[Frame | None]:
    """Each frame's frame before in a sequence, and the one after for the first (as training pairs a sequence's
    frames; None for a sequence of one)."""
    if len(frames) < 2:
        return [None] * len(frames)
    return [frames[1], *frames[:-1]]


def predict_depth(backend: Backend, rgb: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """Network depth (units of the model, 1/disparity) at the network size for an RGB image of any size; a two-frame
    depth net also reads ``previous``, the frame before (uint8 RGB), and refuses to run without it."""
    metadata = backend.metadata
    if metadata.depth_input_frames == 2 and previous is None:
        raise EvaluationError("the bundle's depth net reads two frames (dispnet.input_frames 2), but the image has no "
                              "frame before or after it to pair with")
    previous_input = None if previous is None else preprocess(previous, metadata)
    depth_input = depth_input_from_frames(preprocess(rgb, metadata), previous_input, metadata)
    disparity = backend.infer_depth(depth_input)[0, 0]
    return 1.0 / np.maximum(disparity, 1e-6)


def evaluate_depth(backend: Backend, samples: list[DepthSample], output: str | Path | None = None,
                   median_scaling: bool = True, grid_rows: int = 4, progress: bool = True,
                   metric_scale: Any = None) -> dict[str, Any]:
    """Eigen-protocol depth metrics (mean over images), scale-ratio statistics, and a report with a grid.

    metric_scale: a ``ScaleConfig`` with source 'camera_height' to evaluate metric depth instead: each image's
    network depth is scaled by its own ground-plane estimate and compared without median scaling; images where
    the estimate fails are counted, not guessed.
    """
    from tqdm import tqdm

    from sfm_ros.geometry import scale_intrinsics
    from sfm_ros.scale import GroundPlaneScale, ScaleObservation

    if not samples:
        raise EvaluationError("no depth samples to evaluate (no images with LiDAR scans found)")
    rows, ratios, grid, scale_failures = [], [], [], 0
    two_frames = backend.metadata.depth_input_frames == 2
    unpaired = [sample.image for sample in samples if two_frames and sample.previous is None]
    if unpaired:
        raise EvaluationError(f"the bundle's depth net reads two frames (dispnet.input_frames 2), but {unpaired[0]} "
                              f"(and {len(unpaired) - 1} more) has no frame before or after it to pair with")
    estimator = GroundPlaneScale(dataclasses.replace(metric_scale, smoothing=0.0)) if metric_scale else None
    if estimator is not None:
        median_scaling = False
    projections: dict[tuple[Path, int], np.ndarray] = {}
    pick = set(np.linspace(0, len(samples) - 1, min(grid_rows, len(samples))).astype(int).tolist())
    for i, sample in enumerate(tqdm(samples, desc="eval depth", disable=not progress, unit="image")):
        rgb = kitti.load_rgb(sample.image)
        key = (sample.calib_dir, sample.camera)
        if key not in projections:
            projections[key] = kitti.velodyne_to_image_projection(sample.calib_dir, sample.camera)
        gt = kitti.lidar_depth_map(kitti.read_velodyne(sample.scan), projections[key], rgb.shape[:2])
        previous = kitti.load_rgb(sample.previous) if sample.previous and two_frames else None
        pred = predict_depth(backend, rgb, previous)
        if estimator is not None:
            meta = backend.metadata
            K_raw = kitti.kitti_camera_matrix(sample.calib_dir, sample.camera)
            K_net = scale_intrinsics(K_raw, meta.width / rgb.shape[1], meta.height / rgb.shape[0])
            # KITTI's cameras are level within a degree: the ground's normal is the optical frame's y (down).
            estimate = estimator.update(ScaleObservation(depth=pred, K=K_net, ground_normal=np.array([0.0, 1.0, 0.0])))
            if not estimate.healthy:
                scale_failures += 1
                continue
            pred = pred * estimate.factor
        result = eigen_depth_evaluation(pred, gt, median_scaling=median_scaling)
        rows.append(result.metrics)
        ratios.append(result.scale_ratio)
        if i in pick:
            grid.append({"rgb": rgb, "pred": pred * result.scale_ratio, "gt": gt})
    if not rows:
        raise EvaluationError(f"metric scale failed on all {len(samples)} images (no ground plane found in the "
                              "predicted depth): check --camera-height, or evaluate without --metric-scale")
    names = [*DEPTH_METRICS, "median_ratio"] if not median_scaling else DEPTH_METRICS
    summary = {name: float(np.mean([r[name] for r in rows])) for name in names}
    ratios_array = np.asarray(ratios)
    mode = ("per-image median scaling" if median_scaling else "metric scale from the camera height (no median "
            "scaling)" if estimator else "no median scaling (metric model)")
    report = {"protocol": f"Eigen: LiDAR GT, cap 80 m, Garg crop, {mode}", "scale_failures": scale_failures,
        "num_images": len(rows), "metrics": summary, "backend": backend.description,
        # With median scaling: the factor applied; without: 1 (the ratio of medians is reported per image below).
        "scale_ratio_median": float(np.median(ratios_array)),
        "scale_ratio_std_over_median": float(np.std(ratios_array) / np.median(ratios_array)),
        "per_image": rows}
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        plot_depth_grid(output / "depth_grid.png", grid)
        table = {**summary, "images": len(rows), "scale ratio median": report["scale_ratio_median"],
                 "scale ratio std/median": report["scale_ratio_std_over_median"]}
        write_report(output, "Depth evaluation", [
            {"heading": "Eigen protocol", "text": report["protocol"] + f"; backend {backend.description}.",
             "table": table, "images": ["depth_grid.png"]}], report)
    return report


def evaluate_dense_depth(backend: Backend, images: list[np.ndarray], truths: list[np.ndarray],
                         output: str | Path | None = None, grid_rows: int = 4,
                         truth_label: str = "exact depth", previous_images: list[np.ndarray] | None = None
                         ) -> dict[str, Any]:
    """Median-scaled depth metrics (cap 80 m, pixels with depth > 0, no crop) against dense ground truth, and a
    grid of input / prediction / truth / error. images: uint8 RGB [H,W,3]; truths: [h,w] metres, 0 = none;
    previous_images: each image's frame before (what a two-frame depth net also reads), or None."""
    if not images or len(images) != len(truths):
        raise ValueError(f"need as many ground-truth maps as images, got {len(images)} and {len(truths)}")
    if previous_images is not None and len(previous_images) != len(images):
        raise ValueError(f"need one previous frame per image, got {len(previous_images)} for {len(images)}")
    if previous_images is None and backend.metadata.depth_input_frames == 2:
        raise EvaluationError("the bundle's depth net reads two frames (dispnet.input_frames 2): pass each image's "
                              "frame before as previous_images")
    rows, grid = [], []
    pick = set(np.linspace(0, len(images) - 1, min(grid_rows, len(images))).astype(int).tolist())
    for i, (rgb, truth) in enumerate(zip(images, truths, strict=True)):
        pred = predict_depth(backend, rgb, previous_images[i] if previous_images is not None else None)
        result = eigen_depth_evaluation(pred, truth, median_scaling=True, garg_crop=False)
        rows.append(result.metrics)
        if i in pick:
            grid.append({"rgb": rgb, "pred": pred * result.scale_ratio, "gt": truth})
    summary = {name: float(np.mean([r[name] for r in rows])) for name in DEPTH_METRICS}
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        plot_depth_grid(output / "depth_grid.png", grid, truth_label=truth_label)
    return {"protocol": "median scaling, cap 80 m, pixels with depth > 0", "num_images": len(rows),
            "metrics": summary, "backend": backend.description}


def run_sequence(pipeline: Any, sequence: kitti.Sequence, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Run the pipeline over a KITTI sequence: ([N] stamps ns, [N,4,4] camera poses in the first camera frame)."""
    from tqdm import tqdm

    from sfm_ros.camera import CameraModel

    height, width = sequence.size
    camera = CameraModel(K=sequence.K, height=height, width=width)
    poses = []
    for i in tqdm(range(len(sequence)), desc=f"run {sequence.name}", disable=not progress, unit="frame"):
        estimate = pipeline.process(int(sequence.stamps_ns[i]), kitti.load_rgb(sequence.image_paths[i]), camera)
        poses.append(estimate.T_odom_camera)
    poses = np.asarray(poses)
    return np.asarray(sequence.stamps_ns), np.linalg.inv(poses[0]) @ poses


def write_tum(path: str | Path, stamps_ns: np.ndarray, poses: np.ndarray) -> None:
    """TUM trajectory file (t x y z qx qy qz qw) through evo."""
    from evo.core.trajectory import PoseTrajectory3D
    from evo.tools import file_interface

    file_interface.write_tum_trajectory_file(str(path), PoseTrajectory3D(
        poses_se3=list(poses), timestamps=np.asarray(stamps_ns, dtype=np.float64) / 1e9))


def read_tum(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """TUM trajectory -> ([N] stamps ns, [N,4,4] poses)."""
    from evo.tools import file_interface

    trajectory = file_interface.read_tum_trajectory_file(str(path))
    return (np.round(trajectory.timestamps * 1e9).astype(np.int64), np.asarray(trajectory.poses_se3))


def _associate(gt_stamps: np.ndarray, est_stamps: np.ndarray, max_diff_ns: int) -> tuple[np.ndarray, np.ndarray]:
    gt_index, est_index = [], []
    for j, stamp in enumerate(est_stamps):
        i = int(np.argmin(np.abs(gt_stamps - stamp)))
        if abs(int(gt_stamps[i]) - int(stamp)) <= max_diff_ns:
            gt_index.append(i)
            est_index.append(j)
    return np.asarray(gt_index, dtype=int), np.asarray(est_index, dtype=int)


def evaluate_pose(gt_stamps_ns: np.ndarray, gt_poses: np.ndarray, est_stamps_ns: np.ndarray, est_poses: np.ndarray,
                  output: str | Path | None = None, snippet_length: int = 5, max_time_diff_s: float = 0.01,
                  title: str = "Pose evaluation") -> dict[str, Any]:
    """SfMLearner snippet ATE, whole-trajectory ATE/RPE (Sim(3) and SE(3)), KITTI segment errors, and a report.

    Poses are camera poses [N,4,4] (any world frame each); they are associated by timestamp first.
    """
    gt_index, est_index = _associate(np.asarray(gt_stamps_ns), np.asarray(est_stamps_ns),
                                     int(max_time_diff_s * 1e9))
    if len(gt_index) < snippet_length:
        raise EvaluationError(f"only {len(gt_index)} estimated poses match ground-truth stamps (within "
                         f"{max_time_diff_s} s); need at least {snippet_length}")
    gt, est = gt_poses[gt_index], est_poses[est_index]
    gt = np.linalg.inv(gt[0]) @ gt
    est = np.linalg.inv(est[0]) @ est
    stamps_s = np.asarray(est_stamps_ns)[est_index] / 1e9
    snippets = snippet_ates(gt, est, snippet_length)
    sim3 = trajectory_errors(stamps_s, gt, stamps_s, est, "sim3")
    se3 = trajectory_errors(stamps_s, gt, stamps_s, est, "se3")
    segments = kitti_segment_errors(gt, est)
    gt_step = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
    est_step = np.linalg.norm(np.diff(est[:, :3, 3], axis=0), axis=1)
    moving = (gt_step > 0.05) & (est_step > 0)
    scale_error = (est_step[moving] / gt_step[moving]) if moving.any() else np.array([])
    report = {
        "num_poses": len(gt_index),
        "snippet_ate": {"length": snippet_length, "mean": float(snippets.mean()), "std": float(snippets.std()),
                        "note": "SfMLearner's formula: sqrt(sum of squared errors)/n after per-snippet "
                                "least-squares scale (the published 0.021 / 0.020 use it)"},
        "sim3": {k: v for k, v in sim3.items() if k not in ("per_frame_error_m", "aligned_xyz", "reference_xyz")},
        "se3": {k: v for k, v in se3.items() if k not in ("per_frame_error_m", "aligned_xyz", "reference_xyz")},
        "kitti_segments": segments,
        "translation_scale_ratio": {"median": float(np.median(scale_error)) if scale_error.size else float("nan"),
                                    "mean_abs_log": float(np.mean(np.abs(np.log(scale_error))))
                                    if scale_error.size else float("nan")},
    }
    if output is not None:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        plot_trajectory(output / "trajectory_sim3.png", np.asarray(sim3["reference_xyz"]),
                        np.asarray(sim3["aligned_xyz"]), "top view, Sim(3)-aligned")
        plot_trajectory(output / "trajectory_se3.png", np.asarray(se3["reference_xyz"]),
                        np.asarray(se3["aligned_xyz"]), "top view, SE(3)-aligned (metric scale as estimated)")
        plot_frame_errors(output / "frame_errors.png", {"Sim(3)": np.asarray(sim3["per_frame_error_m"]),
                                                        "SE(3)": np.asarray(se3["per_frame_error_m"])},
                          "position error [m]", "per-frame ATE")
        table = {"poses": report["num_poses"], f"snippet ATE ({snippet_length}-frame) mean": snippets.mean(),
                 "snippet ATE std": snippets.std(), "ATE RMSE Sim(3) [m]": sim3["ate_rmse_m"],
                 "Sim(3) scale": sim3["scale"], "ATE RMSE SE(3) [m]": se3["ate_rmse_m"],
                 "RPE trans RMSE [m/frame]": sim3["rpe_trans_rmse_m"], "RPE rot RMSE [deg/frame]":
                 sim3["rpe_rot_rmse_deg"], "KITTI t_err [%]": segments["t_err_percent"],
                 "KITTI r_err [deg/100m]": segments["r_err_deg_per_100m"],
                 "step length ratio est/gt (median)": report["translation_scale_ratio"]["median"]}
        sections = [{"heading": "Trajectory", "table": table, "text": report["snippet_ate"]["note"],
                     "images": ["trajectory_sim3.png", "trajectory_se3.png", "frame_errors.png"]}]
        if (output / "depth_preview.png").is_file():
            sections.append({"heading": "Depth", "images": ["depth_preview.png"]})
        write_report(output, title, sections, report)
    return report
