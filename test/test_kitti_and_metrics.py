"""KITTI readers, LiDAR ground truth, depth and pose metrics against hand-computed cases and evo."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sfm_ros import kitti, metrics
from test.conftest import DRIVE_0001, DRIVE_0060, ODOMETRY_06, shared_path


def test_raw_drive_reader() -> None:
    sequence = kitti.kitti_raw_drive(DRIVE_0060, 2)
    assert len(sequence) == 20 and sequence.size == (375, 1242)
    np.testing.assert_allclose(sequence.K, [[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]])
    assert np.all(np.diff(sequence.stamps_ns) == 100_000_000)  # no timestamps file: 10 Hz
    assert sequence.velodyne_paths is not None and len(sequence.velodyne_paths) == 20


def test_odometry_reader_matches_rebased_shared_poses() -> None:
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    assert len(sequence) == 51 and sequence.size == (370, 1226)
    assert sequence.K[0, 0] == pytest.approx(707.0912)
    rebased = kitti.read_kitti_poses(shared_path("kitti_odometry_seq06_snippet", "sequences", "06",
                                                 "poses_rebased_frames_000000-000050.txt"))
    np.testing.assert_allclose(np.linalg.inv(sequence.poses[0]) @ sequence.poses, rebased, atol=1e-5)


def test_lidar_projection_lands_where_the_image_has_it() -> None:
    sequence = kitti.kitti_raw_drive(DRIVE_0060, 2)
    projection = kitti.velodyne_to_image_projection(sequence.calib_dir, 2)
    depth = kitti.lidar_depth_map(kitti.read_velodyne(sequence.velodyne_paths[0]), projection, sequence.size)
    valid = depth > 0
    assert 10_000 < valid.sum() < 30_000  # a 64-beam scan covers the lower ~third of the image sparsely
    assert depth[valid].min() > 2.0 and depth[valid].max() < 120
    assert valid[:60].sum() == 0  # nothing in the top rows: the HDL-64 looks at most ~2 degrees up
    # Ground gets nearer toward the image bottom: median depth per row band decreases downwards.
    bands = [np.median(depth[r:r + 20][valid[r:r + 20]]) for r in range(200, 360, 40)]
    assert all(a > b for a, b in itertools.pairwise(bands)), bands
    # The overpass/truck on the right is near, the road centre far: depth ordering along a row agrees.
    row = 200
    centre = depth[row - 5:row + 5, 560:680][valid[row - 5:row + 5, 560:680]]
    right = depth[row - 5:row + 5, 950:1150][valid[row - 5:row + 5, 950:1150]]
    assert np.median(right) < np.median(centre)


def test_lidar_map_keeps_the_nearest_point_and_the_minus_one_convention() -> None:
    projection = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0]])  # u = y/x, v = z/x, w = x
    points = np.array([[4.0, 8.0, 8.0, 1], [6.0, 12.0, 12.0, 1], [5.0, 5.0, 5.0, 1], [-3.0, 1, 1, 1]],
                      dtype=np.float32)
    # Points 0 and 1 both land on (u, v) = (2, 2) -> pixel (1, 1); point 2 on (1, 1) -> pixel (0, 0).
    depth = kitti.lidar_depth_map(points, projection, (4, 4))
    assert depth[1, 1] == pytest.approx(4.0)  # the nearer of x = 4 and x = 6 (depth is LiDAR x)
    assert depth[0, 0] == pytest.approx(5.0)
    assert np.count_nonzero(depth) == 2  # the point behind (x < 0) is dropped


def test_depth_errors_hand_computed() -> None:
    gt = np.array([10.0, 20.0])
    pred = np.array([12.0, 15.0])
    result = metrics.depth_errors(gt, pred)
    assert result["abs_rel"] == pytest.approx((0.2 + 0.25) / 2)
    assert result["sq_rel"] == pytest.approx((4 / 10 + 25 / 20) / 2)
    assert result["rmse"] == pytest.approx(np.sqrt((4 + 25) / 2))
    assert result["rmse_log"] == pytest.approx(np.sqrt((np.log(10 / 12) ** 2 + np.log(20 / 15) ** 2) / 2))
    assert result["a1"] == pytest.approx(0.5)  # ratios 1.2 (< 1.25) and 1.333 (not)
    assert result["a2"] == pytest.approx(1.0)


def test_thresholds_count_ratios() -> None:
    gt = np.array([10.0, 10.0, 10.0, 10.0])
    pred = np.array([10.0, 13.0, 16.0, 20.0])  # ratios 1, 1.3, 1.6, 2.0
    result = metrics.depth_errors(gt, pred)
    assert (result["a1"], result["a2"], result["a3"]) == (0.25, 0.5, 0.75)


def test_eigen_evaluation_median_scaling_and_crop() -> None:
    gt = np.zeros((375, 1242))
    gt[200:360:4, 50:1200:4] = 12.0
    gt[10, 10] = 50.0  # outside the Garg crop: ignored
    pred = np.full((128, 416), 3.0)  # right shape, wrong scale
    scaled = metrics.eigen_depth_evaluation(pred, gt)
    assert scaled.scale_ratio == pytest.approx(4.0)
    assert scaled.metrics["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    unscaled = metrics.eigen_depth_evaluation(pred, gt, median_scaling=False)
    assert unscaled.metrics["abs_rel"] == pytest.approx(0.75)
    assert scaled.num_points == int(np.count_nonzero(gt[metrics.garg_crop_mask(375, 1242)]))


def test_snippet_ate_formula() -> None:
    gt = np.array([[0, 0, 0], [0, 0, 1.0], [0, 0, 2.0], [0, 0, 3.0], [0, 0, 4.0]])
    assert metrics.snippet_ate(gt, gt * 0.5) == pytest.approx(0.0, abs=1e-12)  # scale is fitted
    noisy = gt.copy()
    noisy[2, 0] = 0.5
    # Scale = sum(gt . pred) / sum(pred^2) = 30 / 30.25; errors then follow; divided by n (=5), not RMSE.
    scale = 30.0 / 30.25
    expected = np.sqrt(np.sum((noisy * scale - gt) ** 2)) / 5
    assert metrics.snippet_ate(gt, noisy) == pytest.approx(expected)


def test_ate_of_a_scaled_copy_is_zero_with_sim3_and_not_with_se3() -> None:
    gt = kitti.kitti_odometry_sequence(ODOMETRY_06).poses
    estimate = gt.copy()
    estimate[:, :3, 3] *= 2.0
    stamps = np.arange(len(gt)) * 0.1
    sim3 = metrics.trajectory_errors(stamps, gt, stamps, estimate, "sim3")
    se3 = metrics.trajectory_errors(stamps, gt, stamps, estimate, "se3")
    assert sim3["ate_rmse_m"] == pytest.approx(0.0, abs=1e-6) and sim3["scale"] == pytest.approx(0.5)
    assert se3["ate_rmse_m"] > 5.0
    assert metrics.snippet_ates(gt, estimate).max() == pytest.approx(0.0, abs=1e-9)


def test_sim3_alignment_recovers_a_known_similarity() -> None:
    from scipy.spatial.transform import Rotation

    gt = kitti.kitti_odometry_sequence(ODOMETRY_06).poses
    R = Rotation.from_euler("xyz", [0.1, -0.4, 0.3]).as_matrix()
    t, s = np.array([3.0, -1.0, 2.0]), 0.37
    moved = gt.copy()
    moved[:, :3, 3] = (s * R @ gt[:, :3, 3].T).T + t
    aligned, scale = metrics.align_trajectory(gt, moved)
    assert scale == pytest.approx(1 / s, rel=1e-6)
    np.testing.assert_allclose(aligned[:, :3, 3], gt[:, :3, 3], atol=1e-6)


def test_evo_test_trajectories_give_evos_ate() -> None:
    from evo.core import metrics as evo_metrics
    from evo.core import sync
    from evo.tools import file_interface

    folder = shared_path("evo_test_trajectories")
    reference = file_interface.read_tum_trajectory_file(str(folder / "freiburg1_xyz-groundtruth.txt"))
    estimate = file_interface.read_tum_trajectory_file(str(folder / "freiburg1_xyz-rgbdslam.txt"))
    ref_sync, est_sync = sync.associate_trajectories(reference, estimate, max_diff=0.01)
    est_sync.align(ref_sync, correct_scale=True)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref_sync, est_sync))
    ours = metrics.trajectory_errors(reference.timestamps, np.asarray(reference.poses_se3), estimate.timestamps,
                                     np.asarray(estimate.poses_se3), "sim3")
    assert ours["ate_rmse_m"] == pytest.approx(ape.get_statistic(evo_metrics.StatisticsType.rmse), rel=1e-9)
    assert 0.0 < ours["ate_rmse_m"] < 0.1


def test_kitti_segment_errors_on_a_long_trajectory() -> None:
    gt = kitti.read_kitti_poses(shared_path("evo_test_trajectories", "KITTI_00_gt.txt"))[:1500]
    perfect = metrics.kitti_segment_errors(gt, gt)
    assert perfect["segments"] > 100 and perfect["t_err_percent"] == pytest.approx(0.0, abs=1e-9)
    straight = np.tile(np.eye(4), (1000, 1, 1))
    straight[:, 2, 3] = np.arange(1000.0)  # 1 m per frame along the optical axis
    drift = straight.copy()
    drift[:, :3, 3] *= 1.02  # 2 % too long
    result = metrics.kitti_segment_errors(straight, drift)
    # As in the devkit, a segment ends at the first frame strictly beyond its length: L + 1 m for length L.
    expected = [2.0 * (length + 1) / length for first in range(0, 1000, 10)
                for length in (100, 200, 300, 400, 500, 600, 700, 800) if first + length + 1 < 1000]
    assert result["segments"] == len(expected)
    assert result["t_err_percent"] == pytest.approx(np.mean(expected), rel=1e-9)
    assert result["r_err_deg_per_100m"] == pytest.approx(0.0, abs=1e-9)
    curved = gt.copy()
    curved[:, :3, 3] *= 1.02
    assert 0 < metrics.kitti_segment_errors(gt, curved)["t_err_percent"] <= 2.0 + 1e-9
    short = metrics.kitti_segment_errors(gt[:20], gt[:20])
    assert short["segments"] == 0 and np.isnan(short["t_err_percent"])


def test_oxts_poses_move_forward_at_plausible_speed() -> None:
    stamps, poses = kitti.oxts_camera_poses(DRIVE_0001, 2)
    assert len(poses) == 108
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-9)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    speed = steps / (np.diff(stamps) / 1e9)
    assert 5 < np.median(speed) < 20  # a city drive, m/s
    # The camera looks along the motion: forward (z) dominates the displacement in the first camera frame.
    assert poses[-1, 2, 3] > 5 * abs(poses[-1, 0, 3])


def _pose(x: float, y: float, z: float, yaw_deg: float = 0.0) -> np.ndarray:
    """A camera-to-world pose at (x, y, z), turned yaw_deg about the camera's y axis (the optical frame's down)."""
    angle = np.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    T[:3, 3] = x, y, z
    return T


def test_recompose_steps_takes_one_part_of_each_step_from_the_estimate() -> None:
    # The truth drives straight ahead 1 m a frame. The estimate's steps are 2 m long, the second one sideways, and
    # the third turns 90 degrees (about y: the camera's z axis becomes the world's x).
    truth = np.array([_pose(0, 0, z) for z in range(5)])
    estimate = np.array([_pose(0, 0, 0), _pose(0, 0, 2), _pose(2, 0, 2), _pose(2, 0, 4, 90), _pose(4, 0, 4, 90)])
    positions = {part: metrics.recompose_steps(truth, estimate, part)[1][:, :3, 3]
                 for part in metrics.STEP_PARTS}
    # Lengths: the truth's straight line with 2 m steps.
    np.testing.assert_allclose(positions["length"], [[0, 0, z] for z in (0, 2, 4, 6, 8)], atol=1e-12)
    # Directions: 1 m steps along the estimate's directions, in the truth's (unturned) frames.
    np.testing.assert_allclose(positions["direction"], [[0, 0, 0], [0, 0, 1], [1, 0, 1], [1, 0, 2], [1, 0, 3]],
                               atol=1e-12)
    # Rotations: the truth's 1 m forward steps, the last one taken after the estimate's 90-degree turn: along x.
    np.testing.assert_allclose(positions["rotation"], [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [1, 0, 3]],
                               atol=1e-12)
    with pytest.raises(ValueError, match="from_estimate"):
        metrics.recompose_steps(truth, estimate, "scale")


def test_recompose_steps_merges_a_frame_without_an_estimate_of_its_own() -> None:
    # Frame 1 repeats frame 0 (the pose window had not filled); frame 2 carries both steps.
    truth = np.array([_pose(0, 0, z) for z in range(4)])
    estimate = np.array([_pose(0, 0, 0), _pose(0, 0, 0), _pose(0, 0, 2), _pose(0, 0, 3)])
    kept, poses = metrics.recompose_steps(truth, estimate, "length")
    assert kept.tolist() == [0, 2, 3]
    np.testing.assert_allclose(poses[:, :3, 3], [[0, 0, 0], [0, 0, 2], [0, 0, 3]], atol=1e-12)
