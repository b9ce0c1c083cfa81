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
    """Twenty steps of 1 m, the middle ten turning 9 degrees each about the camera's y axis, each with an
    alignment-like anisotropic covariance (previous camera's axes): the first-order propagation matches the spread of
    20 000 drives composed with noise drawn from that covariance. Summing the steps' covariances (what the odometry
    did before) understates the sideways error after the turn about twofold."""
    steps = [Rotation.from_euler("y", angle, degrees=True).as_matrix() for angle in [0] * 5 + [9] * 10 + [0] * 5]
    translation = np.array([0.0, 0.0, 1.0])
    step_covariance = np.diag([0.02**2, 0.01**2, 0.05**2, 1e-3**2, 4e-3**2, 1e-3**2])
    start = np.diag([1e-6] * 6)
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

    # Standard deviations within 4 % (the sampling error of 20 000 drives is about 0.5 %; the first-order error here
    # about 1 %), correlations within 0.03.
    np.testing.assert_allclose(np.sqrt(np.diag(covariance)), np.sqrt(np.diag(empirical)), rtol=0.04)
    sigma, sigma_empirical = np.sqrt(np.diag(covariance)), np.sqrt(np.diag(empirical))
    np.testing.assert_allclose(covariance / np.outer(sigma, sigma), empirical / np.outer(sigma_empirical,
                               sigma_empirical), atol=0.03)
    summed = start + len(steps) * step_covariance
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
        assert composed[1, 1] == 0.0 and composed[2, 2] == 0.0
