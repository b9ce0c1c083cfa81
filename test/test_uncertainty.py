"""The pose covariance's propagation (``uncertainty.composed_covariance``) against noisy drives, and the published
covariance's frame (``uncertainty.in_odom_frame``) against values derived by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sfm_ros.geometry import transform_from_xyz_quaternion
from sfm_ros.odometry import uncertainty

OPTICAL = (-0.5, 0.5, -0.5, 0.5)  # camera optical axes in base_link (REP 103)


def test_propagation_through_a_turn_matches_noisy_drives() -> None:
    """Twenty steps of 1 m, the middle ten turning 9 degrees each about the camera's y axis, each with an alignment-
    like anisotropic covariance (previous camera's axes), from an exact start: the first-order propagation matches
    the spread of 20 000 drives composed with noise drawn from that covariance. Summing the steps' covariances (what
    the odometry did before) understates the sideways error after the turn about twofold."""
    steps = [Rotation.from_euler("y", angle, degrees=True).as_matrix() for angle in [0] * 5 + [9] * 10 + [0] * 5]
    translation = np.array([0.0, 0.0, 1.0])
    step_covariance = np.diag([0.02**2, 0.01**2, 0.05**2, 1e-3**2, 4e-3**2, 1e-3**2])
    start = np.zeros((6, 6))  # as the drives below: the error is the steps' alone
    covariance, T = start, np.eye(4)
    for rotation in steps:
        T_step = np.eye(4)
        T_step[:3, :3], T_step[:3, 3] = rotation, translation
        covariance = uncertainty.composed_covariance(covariance, T, T_step, step_covariance)
        T = T @ T_step

    rng = np.random.default_rng(0)
    drives = 20000
    R, p = np.tile(np.eye(3), (drives, 1, 1)), np.zeros((drives, 3))
    for rotation in steps:
        error = rng.multivariate_normal(np.zeros(6), step_covariance, size=drives)
        p = p + np.einsum("nij,nj->ni", R, translation + error[:, :3])
        R = R @ (Rotation.from_rotvec(error[:, 3:]).as_matrix() @ rotation)
    heading = Rotation.from_matrix(R @ T[:3, :3].T).as_rotvec()
    empirical = np.cov(np.concatenate([p - T[:3, 3], heading], axis=1).T)

    # Standard deviations within 1.5 % (the sampling error of 20 000 drives is about 0.5 %, the first-order error here
    # below 1 %; rotating each step's covariance by the new pose instead of the previous one is 2-3 % off),
    # correlations within 0.03.
    np.testing.assert_allclose(np.sqrt(np.diag(covariance)), np.sqrt(np.diag(empirical)), rtol=0.015)
    sigma, sigma_empirical = np.sqrt(np.diag(covariance)), np.sqrt(np.diag(empirical))
    np.testing.assert_allclose(covariance / np.outer(sigma, sigma), empirical / np.outer(sigma_empirical,
                               sigma_empirical), atol=0.03)
    summed = len(steps) * step_covariance
    assert np.sqrt(summed[0, 0]) < 0.5 * np.sqrt(empirical[0, 0])


def test_a_standing_camera_adds_only_the_steps_own_covariance() -> None:
    """A step of no translation has no lever: the covariance grows by the step's own, rotated into world axes."""
    T_world_previous = np.eye(4)
    T_world_previous[:3, :3] = Rotation.from_euler("y", 90, degrees=True).as_matrix()  # camera z is world x
    step_covariance = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    composed = uncertainty.composed_covariance(np.zeros((6, 6)), T_world_previous, np.eye(4), step_covariance)
    # Camera x -> world -z, camera y -> world y, camera z -> world x.
    np.testing.assert_allclose(composed, np.diag([3.0, 2.0, 1.0, 6.0, 5.0, 4.0]), atol=1e-12)


def test_the_published_covariance_is_base_links_in_odom_axes_with_the_mountings_lever() -> None:
    """A camera 1 m ahead of base_link with only a heading error (yaw std s): base_link, 1 m behind, swings sideways
    by -yaw x 1 m (a left turn about the camera moves the base to the right), so var(y) = s^2 and cov(y, yaw) = -s^2;
    with the camera at base_link's origin nothing but the axes change."""
    s2 = 0.01**2
    world = np.zeros((6, 6))
    world[4, 4] = s2  # rotation about the optical y axis (down): minus base_link's yaw
    T_world_camera = np.eye(4)
    ahead = transform_from_xyz_quaternion((1.0, 0.0, 0.0, *OPTICAL))
    published = uncertainty.in_odom_frame(world, T_world_camera, ahead)
    expected = np.zeros((6, 6))
    expected[1, 1], expected[5, 5] = s2, s2
    expected[1, 5] = expected[5, 1] = -s2
    np.testing.assert_allclose(published, expected, atol=1e-15)
    at_origin = uncertainty.in_odom_frame(world, T_world_camera, transform_from_xyz_quaternion((0, 0, 0, *OPTICAL)))
    only_yaw = np.zeros((6, 6))
    only_yaw[5, 5] = s2
    np.testing.assert_allclose(at_origin, only_yaw, atol=1e-15)


def test_a_lost_heading_swings_the_position_by_at_most_the_distance() -> None:
    """After a restart the heading is unknown (std pi): 10 m further on, base_link can be anywhere on a circle of
    10 m, not pi x 10 m. A heading error theta ~ N(0, s^2) moves a 10 m step sideways by 10 sin(theta), whose variance
    is 100 (1 - exp(-2 s^2)) / 2 (E[sin^2] = (1 - E[cos 2 theta]) / 2): 50 m^2 for s = pi, and 100 s^2 to first
    order for s = 1e-3."""
    for sigma, expected in ((np.pi, 50.0), (1e-3, 100 * 1e-6)):
        lost = np.zeros((6, 6))
        lost[4, 4] = sigma**2  # about the camera's y axis: the heading of a camera looking along z
        T_step = np.eye(4)
        T_step[2, 3] = 10.0
        composed = uncertainty.composed_covariance(lost, np.eye(4), T_step, np.zeros((6, 6)))
        assert composed[0, 0] == pytest.approx(expected, rel=1e-5)
        assert composed[1, 1] == 0.0  # a turn about y moves nothing along y
    # Known and left: first order, a heading error moves nothing along the step (10 (cos theta - 1), second order);
    # after a lost heading that spread and the heading's own are left out, the "lost" 100 m stands for them.


def test_the_published_covariance_swings_base_link_about_a_turned_camera() -> None:
    """The camera turned 90 degrees left, base_link 1 m behind it: a heading error (std s) about the vertical swings
    base_link sideways to the camera's current direction of travel, which after the turn is odom's y axis: var(x) =
    s^2 in odom, not var(y)."""
    s2 = 0.01**2
    world = np.zeros((6, 6))
    world[4, 4] = s2  # about the first camera's y axis (down): minus odom's yaw
    T_world_camera = np.eye(4)
    # Turned 90 degrees left: about the optical y axis (down) by -90 degrees, so the camera now looks along the first
    # camera's -x (odom's +y).
    T_world_camera[:3, :3] = Rotation.from_euler("y", -90, degrees=True).as_matrix()
    ahead = transform_from_xyz_quaternion((1.0, 0.0, 0.0, *OPTICAL))
    published = uncertainty.in_odom_frame(world, T_world_camera, ahead)
    # base_link is 1 m behind the camera along its travel (odom -y); a yaw psi about the camera moves it by
    # psi x (0, -1, 0) = (psi, 0, 0): var(x) = s^2, cov(x, yaw) = s^2.
    expected = np.zeros((6, 6))
    expected[0, 0], expected[5, 5] = s2, s2
    expected[0, 5] = expected[5, 0] = s2
    np.testing.assert_allclose(published, expected, atol=1e-15)


def test_an_alignments_covariance_follows_the_ground_length_that_scaled_it() -> None:
    """The alignment's Hessian covariance is for the aligned translation; the ground's length multiplied that
    translation by 2, so its std-devs double (variances x4, cross terms x2) and the rotation's stay. With no turn in
    the step the axes do not change."""
    from sfm_ros.config import PipelineConfig
    from sfm_ros.scale import ScaleEstimate

    increment = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    increment[0, 3] = increment[3, 0] = 0.5
    healthy = ScaleEstimate(factor=1.0, healthy=True, metric=True, source="fixed")
    scaled = uncertainty.alignment_covariance(increment, np.eye(4), healthy, PipelineConfig(), length_factor=2.0)
    expected = np.diag([4.0, 8.0, 12.0, 4.0, 5.0, 6.0])
    expected[0, 3] = expected[3, 0] = 1.0
    np.testing.assert_allclose(scaled, expected, atol=1e-12)
