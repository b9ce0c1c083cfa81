"""The odometry benchmark: drift by hand, and the node's pipeline over the bundled streets and KITTI sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test.conftest import ODOMETRY_06, REPO
from training.odometry_bench import drift_curve


def test_drift_curve_by_hand() -> None:
    gt = np.tile(np.eye(4), (4, 1, 1))
    gt[:, 2, 3] = [0.0, 1.0, 2.0, 3.0]  # 1 m forward a frame
    est = gt.copy()
    est[:, 0, 3] = [0.0, 0.1, 0.2, 0.4]  # creeping sideways
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, -2.0, 7.0]  # a different world origin changes nothing: both start from their first pose
    distance, error = drift_curve(shifted @ gt, est)
    np.testing.assert_allclose(distance, [0, 1, 2, 3])
    np.testing.assert_allclose(error, [0, 0.1, 0.2, 0.4])


def test_position_consistency_by_hand() -> None:
    """The camera 1 m forward a frame (optical z, base_link x); the odometry 0.2 m left and then 0.6 m ahead of it,
    with std-devs 0.1 m sideways and 0.3 m along: normalised errors (0.2 / 0.1)^2 = 4 and (0.6 / 0.3)^2 = 4 inside
    the 95 % ellipsoid (7.815), then 0.9 m ahead, 9, outside. A world origin elsewhere changes nothing."""
    from sfm_ros.geometry import transform_from_xyz_quaternion
    from training.odometry_bench import position_consistency

    T_base_camera = transform_from_xyz_quaternion((0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5))
    gt = np.tile(np.eye(4), (4, 1, 1))
    gt[:, 2, 3] = [0.0, 1.0, 2.0, 3.0]
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, -2.0, 7.0]
    base = np.tile(np.eye(4), (4, 1, 1))
    base[:, :3, 3] = [[0, 0, 0], [1.0, 0.2, 0], [2.6, 0, 0], [3.9, 0, 0]]
    covariances = np.tile(np.diag([0.3**2, 0.1**2, 0.1**2, 1, 1, 1]), (4, 1, 1))
    figures = position_consistency(shifted @ gt, base, covariances, T_base_camera)
    assert figures["covariance_median_nees"] == pytest.approx(4.0)
    assert figures["covariance_within_95_share"] == pytest.approx(2 / 3)
    # The position's own 3x3 block, whatever the heading's correlations; and base_link, not the camera: mounted 1 m
    # behind a camera that turned 90 degrees left, base_link stands 1 m behind it along odom's y.
    correlated = covariances.copy()
    correlated[:, 1, 5] = correlated[:, 5, 1] = 0.09  # y with yaw: the 6x6 inverse's block would differ
    behind = transform_from_xyz_quaternion((1.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5))
    turned = np.tile(np.eye(4), (2, 1, 1))
    turned[1, :3, :3] = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]  # the optical z now along the first camera's -x: left
    turned[1, :3, 3] = [-3.0, 0.0, 3.0]  # 3 m ahead, 3 m left (optical axes)
    # The truth's base_link in odom (base_link's first pose): the camera starts 1 m ahead, at (1, 0), moves 3 m ahead
    # and 3 m left to (4, 3); base_link is 1 m behind it along its travel, odom's +y: (4, 2).
    estimate = np.tile(np.eye(4), (2, 1, 1))
    estimate[1, :3, 3] = [4.0, 2.0 + 0.2, 0.0]  # 0.2 m off sideways in odom: (0.2 / 0.1)^2 = 4
    figures = position_consistency(turned, estimate, correlated[:2], behind)
    assert figures["covariance_median_nees"] == pytest.approx(4.0)


def test_velocity_consistency_by_hand() -> None:
    """The camera 1 m forward every 0.1 s: 10 m/s along base_link's x. A twist 0.5 m/s too fast with std-devs 0.25:
    (0.5 / 0.25)^2 = 4, inside the 95 % ellipsoid (7.815); one 1 m/s off sideways: 16, outside. A frame without a
    twist is not counted; a world origin elsewhere changes nothing."""
    from sfm_ros.geometry import transform_from_xyz_quaternion
    from training.odometry_bench import velocity_consistency

    T_base_camera = transform_from_xyz_quaternion((0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5))
    gt = np.tile(np.eye(4), (4, 1, 1))
    gt[:, 2, 3] = [0.0, 1.0, 2.0, 3.0]  # optical z: base_link's x
    shifted = transform_from_xyz_quaternion((5.0, -2.0, 7.0, 0.3, -0.2, 0.1, 0.927))  # turned and moved
    stamps = np.array([0.0, 0.1, 0.2, 0.3])
    covariance = np.diag([0.25**2, 0.25**2, 0.25**2, 1, 1, 1])
    twists = [None, np.array([10.5, 0, 0, 0, 0, 0]), np.array([10.0, 1.0, 0, 0, 0, 0]), None]
    figures = velocity_consistency(shifted @ gt, stamps, twists, np.tile(covariance, (4, 1, 1)), T_base_camera)
    assert figures["twist_median_nees"] == pytest.approx(10.0)  # the median of 4 and 16
    assert figures["twist_within_95_share"] == pytest.approx(0.5)
    # In the frame the step ends in: turned 90 degrees left while moving 1 m ahead (the old base_link x), the step
    # reads 1 m along the new base_link's -y, so the true velocity is (0, -10, 0).
    turned = np.tile(np.eye(4), (2, 1, 1))
    turned[1, :3, :3] = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]  # optical z now along the first camera's -x: left
    turned[1, :3, 3] = [0.0, 0.0, 1.0]
    exact = velocity_consistency(turned, stamps[:2], [None, np.array([0.0, -10.0, 0, 0, 0, 0])],
                                 np.tile(covariance, (2, 1, 1)), T_base_camera)
    assert exact["twist_median_nees"] == pytest.approx(0.0, abs=1e-12)
    # A twist over two frames' time (pipeline.min_pose_interval_s): the step from frame 1 to 3, 2 m in 0.2 s.
    over_two = velocity_consistency(gt, stamps, [None, None, None, np.array([10.5, 0, 0, 0, 0, 0])],
                                    np.tile(covariance, (4, 1, 1)), T_base_camera, [None, None, None, 0.2])
    assert over_two["twist_median_nees"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="starts at no earlier frame"):
        velocity_consistency(gt, stamps, twists, np.tile(covariance, (4, 1, 1)), T_base_camera,
                             [None, 0.15, None, None])


def test_the_benchmark_runs_the_nodes_pipeline_on_every_sequence(small_bundle: Path, tmp_path: Path) -> None:
    from sfm_ros.cli import main

    assert main(["bench", "odometry", "--bundle", str(small_bundle), "--backend", "onnxruntime", "--data",
                 str(REPO / "test" / "data" / "synth_streets"), "--kitti", str(ODOMETRY_06), "--output",
                 str(tmp_path), "--quiet", "--params", str(REPO / "config" / "sfm.yaml")]) == 0
    street = json.loads((tmp_path / "street_00" / "report.json").read_text())
    assert street["num_poses"] == 60
    for image in ("drift.png", "street_00/trajectory_se3.png", "odometry_06_0/trajectory_se3.png",
                  "odometry_06_0/top_view.png", "odometry_06_0/classical_vo/trajectory_se3.png",
                  "odometry_06_0/network_chain/trajectory_se3.png"):
        assert (tmp_path / image).stat().st_size > 10_000


def test_the_benchmark_reports_the_figures_the_issue_asks_for(small_bundle: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from sfm_ros.cli import main

    assert main(["bench", "odometry", "--bundle", str(small_bundle), "--backend", "onnxruntime", "--no-streets",
                 "--kitti", f"{ODOMETRY_06}:10:40", "--output", str(tmp_path), "--quiet", "--scale-source",
                 "camera_height", "--standstill-frames", "0"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    (sequence,) = result["sequences"]
    for key in ("ate_se3_m", "ate_sim3_m", "rpe_trans_m_per_frame", "end_point_drift_percent",
                "step_length_ratio_median", "healthy_scale_share", "latency_ms_median"):
        assert key in sequence, key
    assert set(sequence["latency_ms_median"]) == {"preprocess", "depth", "pose", "scale", "refine", "ground", "total"}
    # Frames 10-40 only: 31 frames, ~1.2 m a frame.
    assert sequence["sequence"] == "odometry_06_0_10-40" and sequence["frames"] == 31
    assert 33 < sequence["distance_m"] < 39
    assert "commit" in result and result["overall"]["ate_se3_m"] == sequence["ate_se3_m"]
    # The machine, with the CPU kernels torch runs on: a training figure repeats only on the same ones.
    import torch

    assert result["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # The baselines on the same frames, scored the same way, in the overall figures and in the printed table.
    for method in ("network_chain", "classical_vo"):
        figures = sequence[method]
        assert figures["frames"] == 31 and figures["distance_m"] == sequence["distance_m"]
        for key in ("ate_se3_m", "ate_sim3_m", "end_point_drift_percent", "step_length_ratio_median"):
            assert np.isfinite(figures[key]) and result["overall"][method][key] == figures[key], (method, key)
    assert 0 <= sequence["classical_vo"]["held_length_share"] <= 1
    # The error budget: the drift and ATE with only the rotations, the directions or the lengths estimated.
    assert set(sequence["error_budget"]) == {"rotation", "direction", "length"}
    assert all(np.isfinite(list(part.values())).all() for part in sequence["error_budget"].values())
    row = next(line for line in err.splitlines() if line.startswith("odometry_06_0_10-40"))
    assert f"{sequence['classical_vo']['end_point_drift_percent']:.2f}" in row
    assert f"{sequence['network_chain']['ate_se3_m']:.2f}" in row


def test_a_frame_range_selects_frames_by_their_numbers() -> None:
    from training.odometry_bench import kitti_frames

    whole = kitti_frames(ODOMETRY_06)
    part = kitti_frames(f"{ODOMETRY_06}:48:50")
    assert [p.name for p in part.image_paths] == ["000048.jpg", "000049.jpg", "000050.jpg"]
    np.testing.assert_array_equal(part.poses, whole.poses[48:])
    np.testing.assert_array_equal(part.stamps_ns, whole.stamps_ns[48:])
    with pytest.raises(ValueError, match="0 frames numbered 60-70"):
        kitti_frames(f"{ODOMETRY_06}:60:70")
    with pytest.raises(ValueError, match="DIR:FIRST:LAST"):
        kitti_frames(f"{ODOMETRY_06}:a:b")


def test_metric_depth_is_scored_where_the_pipeline_says_too_far(tmp_path: Path) -> None:
    """Depth beyond pipeline.max_depth_m is published as +inf; the benchmark scores it at the 80 m cap, not NaN."""
    from sfm_ros.bundle import BundleMetadata
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.odometry.pipeline import Pipeline
    from training.odometry_bench import run_sequence_metrics
    from training.synth_streets import load_street_split, street_sequence

    split = load_street_split(REPO / "test" / "data" / "synth_streets" / "val")
    sequence = street_sequence(split, 1)

    class FarAway:  # depth 100 m everywhere (disparity 0.01), driving an arc
        name = description = "far away"
        has_mask = False
        metadata = BundleMetadata(height=64, width=208)

        def infer_depth(self, image: np.ndarray) -> np.ndarray:
            return np.full((1, 1, 64, 208), 0.01, np.float32)

        def infer_pose(self, target: np.ndarray, sources: np.ndarray):
            ahead = np.array([0, 0, -0.1, 0, 0.02, 0], np.float32)
            return np.stack([-ahead, ahead]), None

    pipeline = Pipeline(PipelineConfig(max_depth_m=80.0), ScaleConfig(source="fixed"), backend=FarAway())
    result = run_sequence_metrics(pipeline, sequence, split.depth[1], tmp_path)
    truth = split.depth[1][(split.depth[1] > 1e-3) & (split.depth[1] < 80)]
    # Every pixel at the 80 m cap, no median scaling: abs_rel = mean (80 - d) / d over the frames.
    expected = np.mean([np.mean((80 - d[(d > 1e-3) & (d < 80)]) / d[(d > 1e-3) & (d < 80)]) for d in split.depth[1]])
    assert np.isfinite(result["metric_depth_abs_rel"]) and truth.size
    assert result["metric_depth_abs_rel"] == pytest.approx(expected, rel=1e-3)


def test_standing_still_reports_how_far_the_odometry_wanders() -> None:
    """A pose net off by a twist xi on every step: held still, each step is exp(-xi), so N still frames move the
    camera by exp(-N xi) (one screw motion, closed form) and turn it by N |w|; keyframes hold it."""
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.odometry.align import se3_exp
    from sfm_ros.odometry.pipeline import Pipeline
    from test.odometry_support import BiasedTruth
    from training.odometry_bench import run_standstill
    from training.synth_streets import load_street_split, street_sequence

    split = load_street_split(REPO / "test" / "data" / "synth_streets" / "val")
    xi = np.array([0.05, 0.0, 0.08, 0.0, 0.01, 0.0])

    class HeldAtFrame9(BiasedTruth):  # frames 0-9 drive, then frame 9 is held
        def infer_depth(self, image: np.ndarray) -> np.ndarray:
            self.show(min(len(self.shown), 9))
            return super().infer_depth(image)

    def standstill(keyframes: bool) -> dict:
        pipeline = Pipeline(PipelineConfig(odometry="keyframes" if keyframes else "chain"), ScaleConfig(source="fixed"),
                            backend=HeldAtFrame9(split, 0, xi))
        return run_standstill(pipeline, street_sequence(split, 0), still_frames=20)

    chain = standstill(keyframes=False)
    np.testing.assert_allclose(chain["moved_m"], np.linalg.norm(se3_exp(-20 * xi)[:3, 3]), rtol=1e-6)
    np.testing.assert_allclose(chain["turned_deg"], np.degrees(20 * 0.01), rtol=1e-6)
    assert chain["still_frames"] == 20 and chain["keyframes_while_still"] == 0
    held = standstill(keyframes=True)
    assert held["moved_m"] < 0.005 and held["keyframes_while_still"] == 0
