"""Pose refinement with the predicted depth: it recovers known perturbations of the pose on rendered frames with
exact depth and on real KITTI frames with LiDAR depth, falls back when it cannot do better, and the pipeline uses it
behind pipeline.odometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sfm_ros import kitti
from sfm_ros.odometry.align import SideSlip, depth_uncertainty_weights, refine_pose, se3_exp, side_slip
from test.conftest import DRIVE_0060
from test.odometry_support import STREETS as SAMPLE
from test.odometry_support import BiasedTruth, angle_deg, drive_street, grey, in_odom
from training.synth_streets import load_street_split

PERTURBATIONS = [np.array([0.1, -0.05, 0.2, 0.01, -0.02, 0.015]), np.array([-0.15, 0.05, -0.3, -0.02, 0.025, -0.01])]


def test_se3_exp_matches_a_closed_form() -> None:
    # A pure rotation about z by 90 degrees with v along x: the screw motion ends at (sin a, 1 - cos a, 0) / a * |v|.
    a = np.pi / 2
    T = se3_exp(np.array([1.0, 0, 0, 0, 0, a]))
    np.testing.assert_allclose(T[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [np.sin(a) / a, (1 - np.cos(a)) / a, 0], atol=1e-12)
    np.testing.assert_allclose(se3_exp(np.array([0.3, -0.2, 0.1, 0, 0, 0]))[:3, 3], [0.3, -0.2, 0.1])


@pytest.mark.parametrize("frame", [10, 30, 45])
def test_recovers_a_perturbed_pose_with_exact_depth(frame: int) -> None:
    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[0])
    poses = split.T_world_cam[0]
    truth = np.linalg.inv(poses[frame + 1]) @ poses[frame]  # points of camera t into camera t+1
    depth = split.depth[0, frame].astype(np.float32)
    depth[depth <= 0] = np.inf  # sky
    for delta in PERTURBATIONS:  # 23-34 cm and 1.5-1.9 degrees off
        start = se3_exp(delta) @ truth
        result = refine_pose(grey(paths[frame]), depth, grey(paths[frame + 1]), split.K, start)
        error = result.T_current_previous @ np.linalg.inv(truth)
        assert result.accepted and result.residual_after < 0.5 * result.residual_before
        assert np.linalg.norm(error[:3, 3]) < 0.015 and angle_deg(error) < 0.1, (frame, error)
        assert result.covariance.shape == (6, 6) and np.all(np.linalg.eigvalsh(result.covariance) > 0)


def test_recovers_a_perturbed_pose_on_real_kitti_frames_with_lidar_depth() -> None:
    """Drive 0060 has no ground-truth poses: the refinement's own optimum from a rough start is the reference, and
    known perturbations of it must come back to it."""
    sequence = kitti.kitti_raw_drive(DRIVE_0060, 2)
    projection = kitti.velodyne_to_image_projection(sequence.calib_dir, 2)
    for frame in (12, 17):
        depth = kitti.lidar_depth_map(kitti.read_velodyne(sequence.velodyne_paths[frame]), projection,
                                      sequence.size).astype(np.float32)
        previous, current = grey(sequence.image_paths[frame]), grey(sequence.image_paths[frame + 1])
        rough = np.eye(4)
        rough[2, 3] = -0.2  # about the car's speed: 0.2 m forward
        optimum = refine_pose(previous, depth, current, sequence.K, rough)
        assert optimum.accepted and optimum.T_current_previous[2, 3] < -0.1  # still forward
        for delta in ([0.03, -0.02, 0.04, 0.004, -0.006, 0.003], [-0.03, 0.02, -0.04, -0.005, 0.005, -0.003]):
            result = refine_pose(previous, depth, current, sequence.K, se3_exp(np.array(delta)) @
                                 optimum.T_current_previous)
            error = result.T_current_previous @ np.linalg.inv(optimum.T_current_previous)
            assert result.accepted and np.linalg.norm(error[:3, 3]) < 0.01 and angle_deg(error) < 0.05, error


def test_falls_back_when_it_cannot_do_better() -> None:
    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[0])
    truth = np.linalg.inv(split.T_world_cam[0, 11]) @ split.T_world_cam[0, 10]
    depth = split.depth[0, 10].astype(np.float32)
    # Already at the optimum of a flat grey pair: nothing to gain.
    flat = np.full((64, 208), 0.5, np.float32)
    result = refine_pose(flat, depth, flat, split.K, truth)
    assert not result.accepted and result.covariance is None
    np.testing.assert_array_equal(result.T_current_previous, truth)
    # A change beyond what the start makes plausible is refused, the start kept.
    start = se3_exp(np.array([0.6, 0.0, 0.8, 0.0, 0.0, 0.0])) @ truth
    result = refine_pose(grey(paths[10]), depth, grey(paths[11]), split.K, start, max_translation_change=0.1)
    assert not result.accepted and "implausible" in result.reason
    np.testing.assert_array_equal(result.T_current_previous, start)
    no_depth = np.zeros_like(depth)
    assert refine_pose(grey(paths[10]), no_depth, grey(paths[11]), split.K, truth).reason == "too few points with depth"


def test_the_pipeline_refines_the_networks_pose_unless_it_only_chains() -> None:
    """With the exact depth of a rendered street and its true pose off by a known error: aligned frame to frame
    (`pipeline.odometry: frame_to_frame`) the odometry follows the truth; chained, the error accumulates."""
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.odometry.pipeline import Pipeline

    split = load_street_split(SAMPLE / "val")
    poses = split.T_world_cam[0]
    frames = range(10, 20)

    def drift(refine: bool, depth_sigma: float = 0.0) -> float:
        backend = BiasedTruth(split, 0, [0.05, 0.0, 0.08, 0.0, 0.01, 0.0])
        # The refinement alone: the side-slip prior and the depth's uncertainty (on by default) have their own tests.
        pipeline = Pipeline(PipelineConfig(odometry="frame_to_frame" if refine else "chain", side_slip_sigma=0.0,
                                           alignment_depth_sigma=depth_sigma),
                            ScaleConfig(source="fixed"), backend=backend)
        *_, (_, estimate) = drive_street(pipeline, backend, split, 0, frames)
        if refine:
            assert estimate.timings_ms["refine"] > 0
        moved = np.linalg.inv(poses[frames[0]]) @ poses[frames[-1]]
        return float(np.linalg.norm(estimate.T_odom_camera[:3, 3] - in_odom(moved)[:3, 3]))

    unrefined = drift(refine=False)
    assert unrefined > 0.5  # ~9 cm and 0.6 degrees a step
    assert drift(refine=True) < 0.15
    # Weighing the residuals by the depth's uncertainty trusts the near points less, which this exact depth did not
    # need: the translation's bias is corrected less, but still most of it (the pipeline's ground measures lengths).
    assert drift(refine=True, depth_sigma=0.8) < 0.5 * unrefined


# base_link <- camera optical frame (x right, y down, z forward), 1.5 m ahead of the rear axle and 1.65 m up.
CAR_MOUNT = np.eye(4)
CAR_MOUNT[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
CAR_MOUNT[:3, 3] = [1.5, 0.0, 1.65]


def _camera_step(yaw: float, base_translation) -> np.ndarray:
    """T_current_previous of the camera on CAR_MOUNT for a base step (current base in the previous base's axes)."""
    base_step = np.eye(4)
    base_step[:3, :3] = cv2.Rodrigues(np.array([0.0, 0.0, yaw]))[0]
    base_step[:3, 3] = base_translation
    return np.linalg.inv(np.linalg.inv(CAR_MOUNT) @ base_step @ CAR_MOUNT)


def test_side_slip_by_hand() -> None:
    # On a circle of radius 20 m the base turns by 0.1 rad and ends at (20 sin 0.1, 20 (1 - cos 0.1)): no slip, though
    # the camera 1.5 m ahead of the axle moves sideways relative to its own axis.
    radius, yaw = 20.0, 0.1
    arc = np.array([radius * np.sin(yaw), radius * (1 - np.cos(yaw)), 0.0])
    assert abs(side_slip(_camera_step(yaw, arc), CAR_MOUNT)[0]) < 1e-12
    assert abs(side_slip(_camera_step(0.0, [1.0, 0.0, 0.0]), CAR_MOUNT)[0]) < 1e-12
    # 0.3 m to the left (base +y) with no turn; the same across the arc's chord, which points at yaw / 2.
    assert side_slip(_camera_step(0.0, [1.0, 0.3, 0.0]), CAR_MOUNT)[0] == pytest.approx(0.3, abs=1e-12)
    across_chord = 0.3 * np.array([-np.sin(yaw / 2), np.cos(yaw / 2), 0.0])
    assert side_slip(_camera_step(yaw, arc + across_chord), CAR_MOUNT)[0] == pytest.approx(0.3, abs=1e-12)
    # Climbing does not count as slipping.
    assert abs(side_slip(_camera_step(yaw, arc + np.array([0.0, 0.0, 0.2])), CAR_MOUNT)[0]) < 1e-12


@pytest.mark.parametrize("yaw, base_translation", [(0.05, [1.2, 0.1, 0.02]), (-0.2, [0.4, -0.3, 0.0])])
def test_side_slip_gradient_matches_central_differences(yaw: float, base_translation: list) -> None:
    T = _camera_step(yaw, base_translation)
    _, gradient = side_slip(T, CAR_MOUNT)
    step = 1e-6
    numeric = [(side_slip(se3_exp(step * e) @ T, CAR_MOUNT)[0] - side_slip(se3_exp(-step * e) @ T, CAR_MOUNT)[0])
               / (2 * step) for e in np.eye(6)]
    np.testing.assert_allclose(gradient, numeric, atol=1e-6)


def test_a_side_slip_prior_ties_the_yaw_to_the_direction_of_travel() -> None:
    """A depth that is wrong from left to right (the left wall seen too far, the right one too near, as a young model
    does) lets the alignment trade yaw for sideways motion: alone it slips 25-35 cm sideways in a step the car does
    without slipping. With the prior it does not slip, and both its yaw and its translation are nearer the truth.
    With exact depth the prior changes nothing: the truth does not slip."""
    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[0])
    poses = split.T_world_cam[0]
    street_mount = CAR_MOUNT.copy()
    street_mount[:3, 3] = 0.0  # the rendered camera sits on its path's axle

    def errors(T: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
        error = T @ np.linalg.inv(truth)
        return abs(angle_deg(error)), float(np.linalg.norm(error[:3, 3]))

    for frame in (5, 15):
        truth = np.linalg.inv(poses[frame + 1]) @ poses[frame]
        depth = split.depth[0, frame].astype(np.float32)
        depth[depth <= 0] = np.inf
        skewed = depth * np.linspace(1.4, 0.7, depth.shape[1], dtype=np.float32)[None, :]
        previous, current = grey(paths[frame]), grey(paths[frame + 1])
        free = refine_pose(previous, skewed, current, split.K, truth)
        held = refine_pose(previous, skewed, current, split.K, truth, side_slip=SideSlip(street_mount, 0.001))
        assert free.accepted and held.accepted
        assert abs(side_slip(free.T_current_previous, street_mount)[0]) > 0.2
        assert abs(side_slip(held.T_current_previous, street_mount)[0]) < 0.005
        free_yaw, free_translation = errors(free.T_current_previous, truth)
        held_yaw, held_translation = errors(held.T_current_previous, truth)
        assert held_yaw < 0.7 * free_yaw and held_translation < 0.7 * free_translation, (frame, free_yaw, held_yaw)
        exact = refine_pose(previous, depth, current, split.K, se3_exp(PERTURBATIONS[0]) @ truth,
                            side_slip=SideSlip(street_mount, 0.001))
        assert exact.accepted and errors(exact.T_current_previous, truth)[1] < 0.015
        assert errors(exact.T_current_previous, truth)[0] < 0.1


def test_the_trackers_side_slip_prior_by_hand() -> None:
    """pipeline.side_slip_sigma is a share of the step's length, with a 1 mm floor, on the camera's mounting."""
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.odometry.ground import StepLength
    from sfm_ros.odometry.tracking import Tracker

    mounting = np.eye(4)
    mounting[:3, 3] = [1.5, 0.0, 1.65]
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 2.0]
    assert Tracker(PipelineConfig(side_slip_sigma=0.0), mounting, StepLength(ScaleConfig())).side_slip(T) is None
    on = Tracker(PipelineConfig(side_slip_sigma=0.01), mounting, StepLength(ScaleConfig()))
    assert on.side_slip(T).sigma_m == pytest.approx(0.02)  # 1 % of 2 m
    np.testing.assert_array_equal(on.side_slip(T).T_base_camera, mounting)
    T[:3, 3] = [0.0, 0.0, 0.05]
    assert on.side_slip(T).sigma_m == pytest.approx(0.001)  # the 1 mm floor


class SkewedTruth(BiasedTruth):
    """BiasedTruth whose depth is wrong from left to right: 1.4x at the left edge, 0.7x at the right."""

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        disparity = super().infer_depth(image)
        return disparity / np.linspace(1.4, 0.7, disparity.shape[-1], dtype=np.float32)


def test_the_pipelines_side_slip_prior_keeps_the_heading_through_a_turn() -> None:
    """Keyframe odometry through the sample street's 37-degree turn (frames 0-29) on the skewed depth: with
    pipeline.side_slip_sigma the heading at the end is within 3 degrees of the truth, without it off by more than 5."""
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.odometry.pipeline import Pipeline

    split = load_street_split(SAMPLE / "val")
    poses = split.T_world_cam[0]
    frames = range(0, 30)
    moved = np.linalg.inv(poses[frames[0]]) @ poses[frames[-1]]
    assert 35 < angle_deg(moved) < 40

    def heading_error_deg(sigma: float, depth_sigma: float = 0.0) -> float:
        backend = SkewedTruth(split, 0, np.zeros(6))
        # The prior alone here; the depth's uncertainty (on by default) is measured below.
        pipeline = Pipeline(PipelineConfig(odometry="keyframes", side_slip_sigma=sigma,
                                           alignment_depth_sigma=depth_sigma),
                            ScaleConfig(source="fixed"), backend=backend)
        *_, (_, estimate) = drive_street(pipeline, backend, split, 0, frames)
        return angle_deg(np.linalg.inv(in_odom(moved)) @ estimate.T_odom_camera)

    assert heading_error_deg(0.0) > 5.0
    assert heading_error_deg(0.001) < 3.0


def test_the_depths_uncertainty_keeps_the_heading_through_a_turn() -> None:
    """The same turn on the skewed depth with pipeline.alignment_depth_sigma: the far points, which the skew cannot
    bend, hold the rotation. Measured with 0.8: 6.7 -> 3.2 degrees alone, 2.6 -> 1.0 degrees with the side-slip
    prior; with the default 1.6: 2.9 and 1.3 degrees. (With a fixed scale the position gets worse, 1.0 -> 1.6 m: the
    lengths now come from farther points, which this skew makes too long; the pipeline's default measures lengths on
    the ground instead.)"""
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.odometry.pipeline import Pipeline

    split = load_street_split(SAMPLE / "val")
    poses = split.T_world_cam[0]
    moved = np.linalg.inv(poses[0]) @ poses[29]

    def heading_error_deg(side_slip_sigma: float, depth_sigma: float) -> float:
        backend = SkewedTruth(split, 0, np.zeros(6))
        pipeline = Pipeline(PipelineConfig(odometry="keyframes", side_slip_sigma=side_slip_sigma,
                                           alignment_depth_sigma=depth_sigma), ScaleConfig(source="fixed"),
                            backend=backend)
        *_, (_, estimate) = drive_street(pipeline, backend, split, 0, range(30))
        return angle_deg(np.linalg.inv(in_odom(moved)) @ estimate.T_odom_camera)

    assert heading_error_deg(0.0, 0.8) < 0.6 * heading_error_deg(0.0, 0.0)
    with_prior = heading_error_deg(0.001, 0.0)
    assert heading_error_deg(0.001, 0.8) < 0.6 * with_prior
    assert heading_error_deg(0.001, PipelineConfig().alignment_depth_sigma) < 0.6 * with_prior  # the default, 1.6


def test_depth_uncertainty_weights_by_hand() -> None:
    """A point 2 m right of the axis and 10 m ahead; the camera moves 1 m forward (R = I, t = (0, 0, -1)), so the
    point is at (2, 0, 9); fx = 100, an image gradient of 1 along u. Scaling the depth by (1 + e) puts the pixel at
    u(e) = 100 * 2 (1 + e) / (10 (1 + e) - 1): du/de = 100 * (2 * 9 - 2 * 10) / 81 = -2.469 pixels, which is the
    residual's change per unit of e. With e's std 0.2 and the noise 0.05 the weight is
    0.05^2 / (0.05^2 + (0.2 * 2.469)^2) = 0.01015. A pure rotation does not move the pixel with the depth: weight 1."""
    fx, X = 100.0, np.array([2.0, 0.0, 9.0])
    dI_dX = np.array([[fx / X[2], 0.0, -fx * X[0] / X[2] ** 2]])  # gradient (1, 0) times d(u, v)/dX
    weight = depth_uncertainty_weights(dI_dX, np.array([[2.0, 0.0, 10.0]]), 0.2, 0.05)
    np.testing.assert_allclose(weight, [0.05**2 / (0.05**2 + (0.2 * 100 * 2 / 81) ** 2)], rtol=1e-12)
    assert weight[0] == pytest.approx(0.01015, abs=1e-5)
    # Rotated only: the point in the current camera is R X_prev itself; the derivative along it is zero.
    rotated = np.array([[1.0, -0.5, 12.0]])
    gradient_u, gradient_v = 0.7, -0.3
    dI_dX = (gradient_u * np.array([fx / 12, 0, -fx * 1.0 / 144]) + gradient_v * np.array([0, fx / 12, fx * 0.5 / 144]))
    np.testing.assert_allclose(depth_uncertainty_weights(dI_dX[None], rotated, 0.5, 0.05), [1.0], atol=1e-12)


def test_depth_uncertainty_keeps_the_rotation_when_the_depth_is_wrong() -> None:
    """The left wall seen too far and the right one too near (a young model's left-right error): the alignment pays
    for it with rotation and translation. Weighing each residual by how much the depth's error moves it takes the
    rotation from the points the depth's error does not move; with exact depth it changes nothing that matters."""
    split = load_street_split(SAMPLE / "val")
    for street, frame in ((0, 5), (0, 15), (0, 45), (1, 5), (1, 15), (1, 45)):
        paths, poses = kitti.image_files(split.folders[street]), split.T_world_cam[street]
        truth = np.linalg.inv(poses[frame + 1]) @ poses[frame]
        depth = split.depth[street, frame].astype(np.float32)
        depth[depth <= 0] = np.inf
        skewed = depth * np.linspace(1.4, 0.7, depth.shape[1], dtype=np.float32)[None, :]
        previous, current = grey(paths[frame]), grey(paths[frame + 1])
        start = se3_exp(PERTURBATIONS[0]) @ truth
        errors = {}
        for sigma in (0.0, 0.4):
            result = refine_pose(previous, skewed, current, split.K, start, relative_depth_sigma=sigma)
            assert result.accepted
            error = result.T_current_previous @ np.linalg.inv(truth)
            errors[sigma] = angle_deg(error), float(np.linalg.norm(error[:3, 3]))
        assert errors[0.4][0] < 0.7 * errors[0.0][0] and errors[0.4][1] < errors[0.0][1], (street, frame, errors)
        exact = refine_pose(previous, depth, current, split.K, start, relative_depth_sigma=0.4)
        error = exact.T_current_previous @ np.linalg.inv(truth)
        assert exact.accepted and angle_deg(error) < 0.05 and np.linalg.norm(error[:3, 3]) < 0.015


def test_the_acceptance_cost_weighs_the_residuals_it_is_given() -> None:
    """Two points seen unmoved (T = I) on a flat grey image, residuals 0.01 and 0.2 against their references: the
    Huber costs (threshold 0.05) are 0.01^2 = 1e-4 and 2 * 0.05 * 0.2 - 0.05^2 = 0.0175. Unweighted their mean is
    0.0088; weighted 1 and 0 it is the first alone; weighted 3 and 1 it is (3e-4 + 0.0175) / 4."""
    from sfm_ros.odometry.align import huber_cost

    K = np.array([[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]])
    image = np.full((11, 11), 0.5, np.float32)
    points = np.array([[0.0, 0.0, 2.0], [0.2, -0.2, 2.0]])  # pixels (5, 5) and (6, 4)
    reference = np.array([0.49, 0.3])
    huber = 0.05
    assert huber_cost(np.eye(4), points, reference, image, K, huber, 1) == pytest.approx((1e-4 + 0.0175) / 2)
    assert huber_cost(np.eye(4), points, reference, image, K, huber, 1, np.array([1.0, 0.0])) == pytest.approx(1e-4)
    assert huber_cost(np.eye(4), points, reference, image, K, huber, 1,
                       np.array([3.0, 1.0])) == pytest.approx((3e-4 + 0.0175) / 4)
