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
- how well the published covariance covers the position's error (``position_consistency``): the median normalised
  error squared (about 2.4 where it fits the errors) and the share of frames inside its 95 % ellipsoid; the same for
  the twist's linear velocity against the truth's (``velocity_consistency``), which a robot's filter fuses;
- standing still: after a few frames of driving, one frame held for a while at 30 Hz with sensor noise (the truth
  does not move): how far the odometry wanders and how much its covariance grows meanwhile.

Beside the pipeline, in the same run on the same frames and scored the same way: the network chain (the pose net's
frame-to-frame steps alone, ``pipeline.odometry`` chain, the paper's odometry) and a classical
monocular VO (``sfm_ros.benchmarks.classical_vo``: tracked corners, essential matrix, scale from the road at the
camera's height), the method a user would pick instead of a learned model.

Plots: each sequence's top view (SE(3)-aligned) of the three against the truth (``top_view.png``), the pipeline's
own report, and drift over distance.
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

__all__ = ["METHODS", "bench_odometry", "drift_curve", "format_table", "kitti_frames", "position_consistency",
           "run_classical_vo", "run_sequence_metrics", "run_standstill", "select_frames", "trajectory_figures",
           "velocity_consistency"]

# The three odometries the benchmark reports, by their key in the results.
METHODS = {"pipeline": "the node's pipeline", "network_chain": "network chain", "classical_vo": "classical VO"}
# The held-out street splits run when the data has them: new layouts (val) and new surfaces too (val_unseen).
STREET_SPLITS = ("val", "val_unseen")

# The 95 % point of the chi-square distribution with 3 degrees of freedom: a position covariance that fits the
# errors has 95 % of them within this normalised error squared.
CHI_SQUARE_3_DOF_95 = 7.815
# A held frame's sensor noise, grey levels (std): what a real camera adds to a scene that does not change.
STANDSTILL_NOISE_LEVELS = 2.0


def drift_curve(gt_poses: np.ndarray, est_poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance travelled [N], position error [N]) with both trajectories [N,4,4] expressed from their first pose."""
    gt = np.linalg.inv(gt_poses[0]) @ gt_poses
    est = np.linalg.inv(est_poses[0]) @ est_poses
    distance = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1))])
    return distance, np.linalg.norm(est[:, :3, 3] - gt[:, :3, 3], axis=1)


def kitti_frames(spec: str | Path) -> kitti.Sequence:
    """A KITTI odometry sequence from ``DIR`` or ``DIR:FIRST:LAST`` (frame numbers of its image files, both
    included), e.g. ``sequences/00:150:199`` for frames 150-199 of sequence 00 only."""
    text = str(spec)
    head, first, last = text.rsplit(":", 2) if text.count(":") >= 2 else (text, "", "")
    if first.isdigit() and last.isdigit():
        return select_frames(kitti.kitti_odometry_sequence(head), int(first), int(last))
    if ":" in text and not Path(text).exists():
        raise ValueError(f"{text!r}: expected DIR or DIR:FIRST:LAST with frame numbers")
    return kitti.kitti_odometry_sequence(text)


def select_frames(sequence: kitti.Sequence, first: int, last: int) -> kitti.Sequence:
    """The frames of ``sequence`` whose file names number first..last (both included), named ``..._FIRST-LAST``."""
    numbers = np.array([int(path.stem) for path in sequence.image_paths])
    keep = np.flatnonzero((numbers >= first) & (numbers <= last))
    if len(keep) < 2:
        raise ValueError(f"{sequence.name} has {len(keep)} frames numbered {first}-{last} (it holds "
                         f"{numbers.min()}-{numbers.max()}); need at least 2")
    return dataclasses.replace(
        sequence, name=f"{sequence.name}_{first}-{last}", image_paths=tuple(sequence.image_paths[i] for i in keep),
        stamps_ns=sequence.stamps_ns[keep], poses=None if sequence.poses is None else sequence.poses[keep])


def trajectory_figures(sequence: kitti.Sequence, est_poses: np.ndarray, output: Path | None, title: str
                       ) -> dict[str, Any]:
    """Score camera poses est_poses [N,4,4] (one per frame of ``sequence``, any world frame) against its truth:
    SE(3)/Sim(3) ATE, RPE, end-point drift, step-length ratio, snippet ATE; the SE(3)-aligned positions [N,3] under
    ``aligned_xyz`` and the drift curve for plots. Writes the evaluation report under ``output`` when given."""
    from sfm_ros.evaluate import evaluate_pose
    from sfm_ros.metrics import trajectory_errors

    gt = np.asarray(sequence.poses)
    report = evaluate_pose(sequence.stamps_ns, gt, sequence.stamps_ns, est_poses, output, title=title)
    distance, error = drift_curve(gt, est_poses)
    stamps_s = sequence.stamps_ns / 1e9
    se3 = trajectory_errors(stamps_s, np.linalg.inv(gt[0]) @ gt, stamps_s,
                            np.linalg.inv(est_poses[0]) @ est_poses, "se3")
    return {
        "sequence": sequence.name, "frames": len(sequence), "distance_m": float(distance[-1]),
        "ate_se3_m": report["se3"]["ate_rmse_m"], "ate_sim3_m": report["sim3"]["ate_rmse_m"],
        "sim3_scale": report["sim3"]["scale"], "rpe_trans_m_per_frame": report["se3"]["rpe_trans_rmse_m"],
        "rpe_rot_deg_per_frame": report["se3"]["rpe_rot_rmse_deg"],
        "end_point_drift_percent": float(100 * error[-1] / max(distance[-1], 1e-9)),
        "step_length_ratio_median": report["translation_scale_ratio"]["median"],
        "snippet_ate": report["snippet_ate"]["mean"],
        "drift_curve": {"distance_m": distance.tolist(), "error_m": error.tolist()},
        "aligned_xyz": np.asarray(se3["aligned_xyz"]), "reference_xyz": np.asarray(se3["reference_xyz"]),
        "error_budget": error_budget(gt, est_poses, stamps_s),
    }


def position_consistency(gt_poses: np.ndarray, base_poses: np.ndarray, covariances: np.ndarray,
                         T_base_camera: np.ndarray) -> dict[str, float]:
    """How well the published covariances [N,6,6] (base_link's pose in odom axes) cover the position error of
    base_poses [N,4,4] (base_link in odom, the identity at frame 0) against the truth gt_poses [N,4,4] (the camera's,
    any world frame), frames 1 on: the median normalised error squared e^T S^-1 e (about 2.4, chi-square's median
    with 3 degrees of freedom, for a covariance that fits the errors; more: it claims more than the odometry knows)
    and the share of frames within CHI_SQUARE_3_DOF_95."""
    truth = T_base_camera @ np.linalg.inv(gt_poses[0]) @ gt_poses @ np.linalg.inv(T_base_camera)
    errors = base_poses[1:, :3, 3] - truth[1:, :3, 3]
    normalised = np.einsum("ni,ni->n", errors, np.linalg.solve(covariances[1:, :3, :3], errors[..., None])[..., 0])
    return {"covariance_median_nees": float(np.median(normalised)),
            "covariance_within_95_share": float(np.mean(normalised <= CHI_SQUARE_3_DOF_95))}


def velocity_consistency(gt_poses: np.ndarray, stamps_s: np.ndarray, twists: list[np.ndarray | None],
                         twist_covariances: np.ndarray, T_base_camera: np.ndarray,
                         dts_s: list[float | None] | None = None) -> dict[str, float]:
    """How well the published twist covariances [N,6,6] cover the error of the linear velocity of twists [N] (each
    [6] vx vy vz wx wy wz in base_link's own frame, or None before the first step), against the truth's: base_link's
    step over the twist's time dts_s[i] (the estimate's ``dt_s``; None: the previous frame's) between the frames of
    gt_poses [N,4,4] (the camera's, any world frame) so far apart in stamps_s [N], in the frame it ends in, over that
    time. As ``position_consistency``: the median normalised error squared (about 2.4 for a covariance that fits)
    and the share of frames within CHI_SQUARE_3_DOF_95."""
    normalised = []
    for i in range(1, len(gt_poses)):
        if twists[i] is None:
            continue
        dt = dts_s[i] if dts_s is not None and dts_s[i] is not None else stamps_s[i] - stamps_s[i - 1]
        start = int(np.argmin(np.abs(stamps_s - (stamps_s[i] - dt))))
        if start >= i or abs(stamps_s[i] - stamps_s[start] - dt) > 1e-6:
            raise ValueError(f"frame {i}'s twist spans {dt} s, which starts at no earlier frame")
        step = T_base_camera @ np.linalg.inv(gt_poses[start]) @ gt_poses[i] @ np.linalg.inv(T_base_camera)
        truth = step[:3, :3].T @ step[:3, 3] / dt
        error = np.asarray(twists[i][:3]) - truth
        normalised.append(float(error @ np.linalg.solve(twist_covariances[i][:3, :3], error)))
    if not normalised:
        return {"twist_median_nees": float("nan"), "twist_within_95_share": float("nan")}
    return {"twist_median_nees": float(np.median(normalised)),
            "twist_within_95_share": float(np.mean(np.asarray(normalised) <= CHI_SQUARE_3_DOF_95))}


def error_budget(gt_poses: np.ndarray, est_poses: np.ndarray, stamps_s: np.ndarray) -> dict[str, dict[str, float]]:
    """Where a trajectory's error comes from: for each part of a step (STEP_PARTS: rotation, direction of travel,
    length), the end-point drift % and SE(3) ATE m of the truth with only that part of every step estimated
    (``recompose_steps``). gt_poses, est_poses: [N,4,4]; stamps_s: [N]."""
    from sfm_ros.metrics import STEP_PARTS, recompose_steps, trajectory_errors

    budget = {}
    for part in STEP_PARTS:
        kept, poses = recompose_steps(gt_poses, est_poses, part)
        truth = gt_poses[kept]
        distance, error = drift_curve(truth, poses)
        ate = trajectory_errors(stamps_s[kept], np.linalg.inv(truth[0]) @ truth, stamps_s[kept],
                                np.linalg.inv(poses[0]) @ poses, "se3")["ate_rmse_m"]
        budget[part] = {"end_point_drift_percent": float(100 * error[-1] / max(distance[-1], 1e-9)),
                        "ate_se3_m": float(ate)}
    return budget


def run_classical_vo(sequence: kitti.Sequence, camera_height_m: float, down: np.ndarray,
                     output: Path | None = None) -> dict[str, Any]:
    """The classical monocular VO over ``sequence`` (at the images' own size), scored by ``trajectory_figures``;
    adds the share of steps whose length was held (no reliable road in view)."""
    import cv2

    from sfm_ros.benchmarks.classical_vo import ClassicalVO

    odometry = ClassicalVO(sequence.K, camera_height_m, down)
    for path in sequence.image_paths:
        odometry.process(cv2.cvtColor(kitti.load_rgb(path), cv2.COLOR_RGB2GRAY))
    held = odometry.held_steps / max(len(odometry.steps), 1)
    if held == 1.0:  # no road seen at all (an untextured road): no length, no trajectory to align
        gt = np.asarray(sequence.poses)
        distance = float(drift_curve(gt, gt)[0][-1])
        nan = float("nan")
        return {"sequence": sequence.name, "frames": len(sequence), "distance_m": distance, "ate_se3_m": nan,
                "ate_sim3_m": nan, "end_point_drift_percent": nan, "step_length_ratio_median": nan,
                "held_length_share": held}
    result = trajectory_figures(sequence, odometry.trajectory(), output,
                                f"{sequence.name}: classical monocular VO vs the truth")
    result["held_length_share"] = held
    return result


def run_sequence_metrics(pipeline: Pipeline, sequence: kitti.Sequence, depth_truth: np.ndarray | None = None,
                         output: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run ``pipeline`` over ``sequence`` (which must have ground-truth poses) and score it.

    depth_truth: [N,h,w] metres (0 = none) for the metric-depth figures, or None.
    """
    from tqdm import tqdm

    from sfm_ros.camera import CameraModel

    if sequence.poses is None:
        raise ValueError(f"{sequence.name} has no ground-truth poses")
    height, width = sequence.size
    camera = CameraModel(K=sequence.K, height=height, width=width)
    poses, base_poses, covariances, healthy, timings, metric_rows, scaled_rows = [], [], [], [], [], [], []
    twists, twist_covariances, dts = [], [], []
    for i in tqdm(range(len(sequence)), desc=f"odometry {sequence.name}", disable=not progress, unit="frame"):
        estimate = pipeline.process(int(sequence.stamps_ns[i]), kitti.load_rgb(sequence.image_paths[i]), camera)
        poses.append(estimate.T_odom_camera)
        base_poses.append(estimate.T_odom_base)
        covariances.append(estimate.covariance)
        twists.append(estimate.twist)
        dts.append(estimate.dt_s)
        twist_covariances.append(estimate.twist_covariance)
        healthy.append(estimate.scale.healthy and estimate.scale.metric)
        timings.append(estimate.timings_ms)
        if depth_truth is not None and estimate.scale.metric:
            truth = depth_truth[i]
            # +inf (beyond pipeline.max_depth_m) is the protocol's cap; resizing an inf would make NaNs.
            depth = np.nan_to_num(estimate.depth_m, posinf=MAX_DEPTH_M)
            metric_rows.append(eigen_depth_evaluation(depth, truth, median_scaling=False, garg_crop=False).metrics)
            scaled_rows.append(eigen_depth_evaluation(depth, truth, median_scaling=True, garg_crop=False).metrics)
    result = trajectory_figures(sequence, np.asarray(poses), output,
                                f"{sequence.name}: the pipeline's odometry vs the truth")
    result["healthy_scale_share"] = float(np.mean(healthy))
    result.update(position_consistency(np.asarray(sequence.poses), np.asarray(base_poses), np.asarray(covariances),
                                       pipeline.T_base_camera))
    result.update(velocity_consistency(np.asarray(sequence.poses), sequence.stamps_ns / 1e9, twists,
                                       np.asarray(twist_covariances), pipeline.T_base_camera, dts))
    result["latency_ms_median"] = {stage: float(np.median([t[stage] for t in timings])) for stage in timings[0]}
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
    from sfm_ros.report import plot_drift_curves

    return plot_drift_curves(path, {result["sequence"]: (result["drift_curve"]["distance_m"],
                                                         result["drift_curve"]["error_m"]) for result in results},
                             "drift over distance, the pipeline's own scale")


def _network_chain(config: PipelineConfig) -> PipelineConfig:
    """The pipeline reduced to the pose net's chain of frame-to-frame steps (the paper's odometry)."""
    return dataclasses.replace(config, odometry="chain")


def _jobs(streets: str | Path | None, kitti_sequences: list[str | Path], work: Path
          ) -> list[tuple[kitti.Sequence, np.ndarray | None]]:
    """(sequence, depth truth [N,h,w] or None) of every held-out street split the data has and every KITTI spec."""
    jobs: list[tuple[kitti.Sequence, np.ndarray | None]] = []
    for split_name in STREET_SPLITS if streets is not None else ():
        try:
            split = street_folders(streets, split_name, work / "streets")
        except FileNotFoundError:
            if split_name == "val":
                raise
            continue  # the repository's sample has no val_unseen
        prefix = "" if split_name == "val" else f"{split_name}_"
        for s in range(len(split.folders)):
            sequence = street_sequence(split, s)
            jobs.append((dataclasses.replace(sequence, name=prefix + sequence.name), split.depth[s]))
    return jobs + [(kitti_frames(spec), None) for spec in kitti_sequences]


def _mean_figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("ate_se3_m", "ate_sim3_m", "rpe_trans_m_per_frame", "end_point_drift_percent", "step_length_ratio_median",
            "snippet_ate", "healthy_scale_share", "metric_depth_abs_rel", "median_scaled_depth_abs_rel",
            "held_length_share", "covariance_median_nees", "covariance_within_95_share", "twist_median_nees",
            "twist_within_95_share")
    overall = {}
    for key in keys:
        values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        if values:
            overall[key] = float(np.mean(values))
    return overall


def _plot_top_view(path: Path, name: str, figures: dict[str, dict[str, Any]]) -> Path:
    from sfm_ros.report import plot_trajectories

    reference = figures["pipeline"]["reference_xyz"]
    estimates = {f"{METHODS[key]}: drift {row['end_point_drift_percent']:.1f} %, ATE {row['ate_se3_m']:.2f} m":
                 row["aligned_xyz"] for key, row in figures.items() if "aligned_xyz" in row}
    return plot_trajectories(path, reference, estimates,
                             f"{name}, {reference.shape[0]} frames, {figures['pipeline']['distance_m']:.0f} m: "
                             "top view, SE(3)-aligned")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("drift_curve", "aligned_xyz", "reference_xyz")}


def bench_odometry(bundle: str | Path, streets: str | Path | None, kitti_sequences: list[str | Path],
                   output: str | Path, pipeline_config: PipelineConfig | None = None,
                   scale_config: ScaleConfig | None = None, work_dir: str | Path | None = None,
                   progress: bool = True, standstill_frames: int = 90) -> dict[str, Any]:
    """Every held-out street of ``streets`` (a synth_streets folder: its val and, when present, val_unseen split)
    and every KITTI sequence (``kitti_frames`` specs: ``DIR`` or ``DIR:FIRST:LAST``), each through a fresh pipeline
    on ``bundle``, the network chain and the classical VO; then (``standstill_frames`` > 0) each street standing still
    (``run_standstill``). Writes per-sequence reports (the pipeline's in ``output/NAME``, the others' in
    ``output/NAME/network_chain`` and ``output/NAME/classical_vo``), ``output/NAME/top_view.png`` and ``drift.png``;
    returns the figures: per sequence the pipeline's, with the others' under their METHODS key."""
    from sfm_ros.bench import machine_description
    from sfm_ros.geometry import quaternion_to_rotation

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    pipeline_config = dataclasses.replace(pipeline_config or PipelineConfig(), bundle=str(bundle))
    scale_config = scale_config or ScaleConfig()
    jobs = _jobs(streets, kitti_sequences, Path(work_dir or output / "work"))
    # The mounting's gravity direction in the camera frame, as the pipeline takes it: base_link's -z.
    down = quaternion_to_rotation(np.asarray(pipeline_config.T_base_camera[3:])).T @ np.array([0.0, 0.0, -1.0])
    results, tick = [], time.perf_counter()
    backend = None
    for sequence, depth in jobs:
        pipeline = Pipeline(pipeline_config, scale_config, backend=backend)
        backend = pipeline.backend  # loaded once, fresh state per sequence
        figures = {"pipeline": run_sequence_metrics(pipeline, sequence, depth, output / sequence.name, progress)}
        chain = Pipeline(_network_chain(pipeline_config), scale_config, backend=backend)
        figures["network_chain"] = run_sequence_metrics(chain, sequence, None, output / sequence.name /
                                                        "network_chain", progress)
        figures["classical_vo"] = run_classical_vo(sequence, scale_config.camera_height_m, down,
                                                   output / sequence.name / "classical_vo")
        _plot_top_view(output / sequence.name / "top_view.png", sequence.name, figures)
        results.append({**figures["pipeline"], **{key: _public(figures[key]) for key in METHODS if key != "pipeline"}})
    standstill = []
    for sequence, depth in jobs:
        if standstill_frames > 0 and depth is not None:
            pipeline = Pipeline(pipeline_config, scale_config, backend=backend)
            standstill.append(run_standstill(pipeline, sequence, standstill_frames))
    _plot_drift(output / "drift.png", results)
    overall = _mean_figures(results)
    for key in METHODS:
        if key != "pipeline":
            overall[key] = _mean_figures([r[key] for r in results])
    return {"benchmark": "odometry", "bundle": str(bundle), "backend": backend.description if backend else None,
            "pipeline": dataclasses.asdict(pipeline_config), "scale": dataclasses.asdict(scale_config),
            "sequences": [_public(r) for r in results], "overall": overall,
            "standstill": standstill, "seconds": time.perf_counter() - tick, "machine": machine_description()}


def format_table(result: dict[str, Any]) -> str:
    """The three odometries side by side per sequence: end-point drift %, SE(3) and Sim(3) ATE in metres."""
    lines = [f"{'sequence':<26} {'m':>5}  " + "  ".join(f"{label:>24}" for label in METHODS.values()),
             f"{'':<26} {'':>5}  " + "  ".join(f"{'drift %  SE3 m  Sim3 m':>24}" for _ in METHODS)]
    for row in result["sequences"]:
        cells = []
        for key in METHODS:
            figures = row if key == "pipeline" else row[key]
            cells.append(f"{figures['end_point_drift_percent']:>8.2f} {figures['ate_se3_m']:>6.2f} "
                         f"{figures['ate_sim3_m']:>7.2f}  ")
        lines.append(f"{row['sequence']:<26} {row['distance_m']:>5.0f}  " + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)
