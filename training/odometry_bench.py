"""What a robot gets from the run-time ``Pipeline``: metric odometry and depth against exact ground truth.

``bench_odometry`` runs the node's own pipeline (not a side path) over the held-out rendered streets (exact depth,
exact poses, camera 1.65 m over flat ground) and over KITTI odometry sequences, with the scale the pipeline
produces (no scale fitted unless said), and reports per sequence and overall:

- SE(3)-aligned ATE in metres (rotation and translation fitted, scale not) and Sim(3) ATE, RPE per frame;
- end-point drift as % of the distance travelled, with both trajectories starting at the same pose (no alignment),
  and its curve over distance;
- the median ratio of estimated to true step lengths;
- metric depth abs_rel with the pipeline's own scale, without median scaling (rendered streets only), and the
  median-scaled abs_rel of the same frames, whose ratio says how much of the error the scale adds;
- the share of frames whose scale was healthy, and the median per-stage latency;
- standing still: after a few frames of driving, one frame held for a while at 30 Hz with sensor noise (the truth
  does not move): how far the odometry wanders and how much its covariance grows meanwhile.

Plots: each sequence's top view (SE(3)-aligned) against the truth, and drift over distance.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros import kitti
from sfm_ros.config import PipelineConfig, ScaleConfig
from sfm_ros.metrics import MAX_DEPTH_M, eigen_depth_evaluation
from sfm_ros.odometry.pipeline import Pipeline
from training.synth_streets import street_folders, street_sequence

__all__ = ["bench_odometry", "drift_curve", "run_sequence_metrics", "run_standstill"]

# A held frame's sensor noise, grey levels (std): what a real camera adds to a scene that does not change.
STANDSTILL_NOISE_LEVELS = 2.0


def drift_curve(gt_poses: np.ndarray, est_poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance travelled [N], position error [N]) with both trajectories [N,4,4] expressed from their first pose."""
    gt = np.linalg.inv(gt_poses[0]) @ gt_poses
    est = np.linalg.inv(est_poses[0]) @ est_poses
    distance = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1))])
    return distance, np.linalg.norm(est[:, :3, 3] - gt[:, :3, 3], axis=1)


def run_sequence_metrics(pipeline: Pipeline, sequence: kitti.Sequence, depth_truth: np.ndarray | None = None,
                         output: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run ``pipeline`` over ``sequence`` (which must have ground-truth poses) and score it.

    depth_truth: [N,h,w] metres (0 = none) for the metric-depth figures, or None.
    """
    from tqdm import tqdm

    from sfm_ros.camera import CameraModel
    from sfm_ros.evaluate import evaluate_pose

    if sequence.poses is None:
        raise ValueError(f"{sequence.name} has no ground-truth poses")
    height, width = sequence.size
    camera = CameraModel(K=sequence.K, height=height, width=width)
    poses, healthy, timings, metric_rows, scaled_rows = [], [], [], [], []
    for i in tqdm(range(len(sequence)), desc=f"odometry {sequence.name}", disable=not progress, unit="frame"):
        estimate = pipeline.process(int(sequence.stamps_ns[i]), kitti.load_rgb(sequence.image_paths[i]), camera)
        poses.append(estimate.T_odom_camera)
        healthy.append(estimate.scale.healthy and estimate.scale.metric)
        timings.append(estimate.timings_ms)
        if depth_truth is not None and estimate.scale.metric:
            truth = depth_truth[i]
            # +inf (beyond pipeline.max_depth_m) is the protocol's cap; resizing an inf would make NaNs.
            depth = np.nan_to_num(estimate.depth_m, posinf=MAX_DEPTH_M)
            metric_rows.append(eigen_depth_evaluation(depth, truth, median_scaling=False, garg_crop=False).metrics)
            scaled_rows.append(eigen_depth_evaluation(depth, truth, median_scaling=True, garg_crop=False).metrics)
    est = np.asarray(poses)
    gt = np.asarray(sequence.poses)
    report = evaluate_pose(sequence.stamps_ns, gt, sequence.stamps_ns, est, output,
                           title=f"{sequence.name}: the pipeline's odometry vs the truth")
    distance, error = drift_curve(gt, est)
    result = {
        "sequence": sequence.name, "frames": len(sequence), "distance_m": float(distance[-1]),
        "ate_se3_m": report["se3"]["ate_rmse_m"], "ate_sim3_m": report["sim3"]["ate_rmse_m"],
        "sim3_scale": report["sim3"]["scale"], "rpe_trans_m_per_frame": report["se3"]["rpe_trans_rmse_m"],
        "rpe_rot_deg_per_frame": report["se3"]["rpe_rot_rmse_deg"],
        "end_point_drift_percent": float(100 * error[-1] / max(distance[-1], 1e-9)),
        "step_length_ratio_median": report["translation_scale_ratio"]["median"],
        "snippet_ate": report["snippet_ate"]["mean"], "healthy_scale_share": float(np.mean(healthy)),
        "latency_ms_median": {stage: float(np.median([t[stage] for t in timings])) for stage in timings[0]},
        "drift_curve": {"distance_m": distance.tolist(), "error_m": error.tolist()},
    }
    if metric_rows:
        result["metric_depth_abs_rel"] = float(np.mean([r["abs_rel"] for r in metric_rows]))
        result["median_scaled_depth_abs_rel"] = float(np.mean([r["abs_rel"] for r in scaled_rows]))
        result["metric_depth_frames"] = len(metric_rows)
    return result


def run_standstill(pipeline: Pipeline, sequence: kitti.Sequence, still_frames: int, drive_frames: int = 10,
                   rate_hz: float = 30.0, seed: int = 0) -> dict[str, Any]:
    """Drive ``drive_frames`` frames of ``sequence``, then hold its last one for ``still_frames`` frames at
    ``rate_hz`` with Gaussian sensor noise (STANDSTILL_NOISE_LEVELS). The truth stands still: report how far the
    odometry moved meanwhile (metres, degrees), the growth of the position's standard deviation, and the keyframes
    made while still."""
    import cv2

    from sfm_ros.camera import CameraModel

    height, width = sequence.size
    camera = CameraModel(K=sequence.K, height=height, width=width)
    for i in range(drive_frames):
        estimate = pipeline.process(int(sequence.stamps_ns[i]), kitti.load_rgb(sequence.image_paths[i]), camera)
    held = kitti.load_rgb(sequence.image_paths[drive_frames - 1]).astype(np.float32)
    rng = np.random.default_rng(seed)
    stamp, period = int(sequence.stamps_ns[drive_frames - 1]), int(1e9 / rate_hz)
    start_pose, start_sigma = estimate.T_odom_camera, float(np.sqrt(np.trace(estimate.covariance[:3, :3])))
    keyframes = 0
    for k in range(still_frames):
        noisy = np.clip(held + rng.normal(0.0, STANDSTILL_NOISE_LEVELS, held.shape), 0, 255).astype(np.uint8)
        estimate = pipeline.process(stamp + (k + 1) * period, noisy, camera)
        keyframes += int(estimate.keyframe)
    moved = np.linalg.inv(start_pose) @ estimate.T_odom_camera
    return {"sequence": sequence.name, "still_frames": still_frames, "rate_hz": rate_hz,
            "moved_m": float(np.linalg.norm(moved[:3, 3])),
            "turned_deg": float(np.degrees(np.linalg.norm(cv2.Rodrigues(moved[:3, :3])[0]))),
            "position_sigma_m_before": start_sigma,
            "position_sigma_m_after": float(np.sqrt(np.trace(estimate.covariance[:3, :3]))),
            "keyframes_while_still": keyframes}


def _plot_drift(path: Path, results: list[dict[str, Any]]) -> Path:
    from sfm_ros.report import _finish, _pyplot

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for result in results:
        curve = result["drift_curve"]
        axis.plot(curve["distance_m"], curve["error_m"], label=result["sequence"])
    axis.set(xlabel="distance travelled [m]", ylabel="position error [m] (no alignment)")
    return _finish(plt, figure, axis, path, "drift over distance, the pipeline's own scale")


def bench_odometry(bundle: str | Path, streets: str | Path | None, kitti_sequences: list[str | Path],
                   output: str | Path, pipeline_config: PipelineConfig | None = None,
                   scale_config: ScaleConfig | None = None, work_dir: str | Path | None = None,
                   progress: bool = True, standstill_frames: int = 90) -> dict[str, Any]:
    """Every held-out street of ``streets`` (a synth_streets folder) and every KITTI sequence, each through a fresh
    pipeline on ``bundle``, then (``standstill_frames`` > 0) each street standing still (``run_standstill``) through
    another. Writes per-sequence reports and ``drift.png`` under ``output``; returns the figures."""
    from sfm_ros.bench import machine_description

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    pipeline_config = dataclasses.replace(pipeline_config or PipelineConfig(), bundle=str(bundle))
    scale_config = scale_config or ScaleConfig()
    jobs: list[tuple[kitti.Sequence, np.ndarray | None]] = []
    if streets is not None:
        split = street_folders(streets, "val", Path(work_dir or output / "work") / "streets")
        jobs += [(street_sequence(split, s), split.depth[s]) for s in range(len(split.folders))]
    for sequence_dir in kitti_sequences:
        jobs.append((kitti.kitti_odometry_sequence(sequence_dir), None))
    results, tick = [], time.perf_counter()
    backend = None
    for sequence, depth in jobs:
        pipeline = Pipeline(pipeline_config, scale_config, backend=backend)
        backend = pipeline.backend  # loaded once, fresh state per sequence
        results.append(run_sequence_metrics(pipeline, sequence, depth, output / sequence.name, progress))
    standstill = []
    for sequence, depth in jobs:
        if standstill_frames > 0 and depth is not None:
            pipeline = Pipeline(pipeline_config, scale_config, backend=backend)
            standstill.append(run_standstill(pipeline, sequence, standstill_frames))
    _plot_drift(output / "drift.png", results)
    keys = ("ate_se3_m", "ate_sim3_m", "rpe_trans_m_per_frame", "end_point_drift_percent", "step_length_ratio_median",
            "snippet_ate", "healthy_scale_share", "metric_depth_abs_rel", "median_scaled_depth_abs_rel")
    overall = {}
    for key in keys:
        values = [r[key] for r in results if key in r and np.isfinite(r[key])]
        if values:
            overall[key] = float(np.mean(values))
    return {"benchmark": "odometry", "bundle": str(bundle), "backend": backend.description if backend else None,
            "pipeline": dataclasses.asdict(pipeline_config), "scale": dataclasses.asdict(scale_config),
            "sequences": [{k: v for k, v in r.items() if k != "drift_curve"} for r in results], "overall": overall,
            "standstill": standstill, "seconds": time.perf_counter() - tick, "machine": machine_description()}
