"""Pose conventions and intrinsics, numpy and torch twins, against an independent rotation library."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from sfm_ros import geometry
from sfm_ros.config import PipelineConfig
from sfm_ros.models import warp


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_pose_vec_to_mat_matches_scipy_intrinsic_xyz(rng: np.random.Generator) -> None:
    vectors = np.c_[rng.normal(size=(50, 3)), rng.uniform(-np.pi, np.pi, size=(50, 3))]
    mats = geometry.pose_vec_to_mat(vectors)
    for vector, T in zip(vectors, mats, strict=True):
        # R = Rx Ry Rz is scipy's intrinsic "XYZ" sequence.
        expected = Rotation.from_euler("XYZ", vector[3:]).as_matrix()
        np.testing.assert_allclose(T[:3, :3], expected, atol=1e-12)
        np.testing.assert_allclose(T[:3, 3], vector[:3])
        np.testing.assert_allclose(T[3], [0, 0, 0, 1])


def test_torch_and_numpy_pose_twins_agree(rng: np.random.Generator) -> None:
    vectors = np.c_[rng.normal(size=(20, 3)), rng.uniform(-1, 1, size=(20, 3))]
    torch_mats = warp.pose_vec_to_mat(torch.from_numpy(vectors)).numpy()
    np.testing.assert_allclose(torch_mats, geometry.pose_vec_to_mat(vectors), atol=1e-12)


def test_inverse_and_composition(rng: np.random.Generator) -> None:
    a, b, c = geometry.pose_vec_to_mat(np.c_[rng.normal(size=(3, 3)), rng.uniform(-1, 1, size=(3, 3))])
    np.testing.assert_allclose(geometry.compose(a, geometry.invert_transform(a)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(geometry.invert_transform(a), np.linalg.inv(a), atol=1e-12)
    np.testing.assert_allclose(geometry.compose(a, b, c), a @ b @ c)
    point = np.array([1.0, -2.0, 5.0, 1.0])
    np.testing.assert_allclose(geometry.compose(a, b) @ point, a @ (b @ point))


def test_scale_intrinsics_follows_pixel_centres(rng: np.random.Generator) -> None:
    K = np.array([[720.0, 0, 609.5], [0, 721.0, 172.8], [0, 0, 1]])
    points = np.c_[rng.uniform(-5, 5, (30, 2)), rng.uniform(2, 50, 30)]
    for sx, sy in ((0.5, 0.5), (416 / 1242, 128 / 375), (2.0, 3.0)):
        scaled = geometry.scale_intrinsics(K, sx, sy)
        original = (points @ K.T)[:, :2] / points[:, 2:]
        projected = (points @ scaled.T)[:, :2] / points[:, 2:]
        # A pixel centre u maps to (u + 0.5) s - 0.5 under a resize by s.
        np.testing.assert_allclose(projected, (original + 0.5) * [sx, sy] - 0.5, atol=1e-9)
        torch_scaled = warp.scale_intrinsics(torch.from_numpy(K)[None], sx, sy)[0].numpy()
        np.testing.assert_allclose(torch_scaled, scaled)


def test_crop_intrinsics_shifts_principal_point() -> None:
    K = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    np.testing.assert_allclose(geometry.crop_intrinsics(K, 10, 5)[:2, 2], [40, 35])


def test_quaternion_round_trip_and_default_extrinsic(rng: np.random.Generator) -> None:
    for rotation in Rotation.random(20, random_state=3):
        R = rotation.as_matrix()
        q = geometry.rotation_to_quaternion(R)
        np.testing.assert_allclose(geometry.quaternion_to_rotation(q), R, atol=1e-9)
        expected = rotation.as_quat()  # scipy is x y z w too
        np.testing.assert_allclose(q, expected if expected[3] >= 0 else -expected, atol=1e-9)
    # The default camera extrinsic is REP 103's optical frame: z forward = base x, x right = -base y.
    q = np.array(PipelineConfig().T_base_camera[3:])
    np.testing.assert_allclose(geometry.quaternion_to_rotation(q), geometry.R_BASE_OPTICAL, atol=1e-12)


def test_cross_matrix_is_the_cross_product(rng: np.random.Generator) -> None:
    v, w = rng.normal(size=3), rng.normal(size=3)
    np.testing.assert_allclose(geometry.cross_matrix(v) @ w, np.cross(v, w), atol=1e-12)
    # By hand: [e_x]x maps e_y to e_z, and every cross matrix is antisymmetric.
    np.testing.assert_array_equal(geometry.cross_matrix([1, 0, 0]) @ np.array([0.0, 1.0, 0.0]), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(geometry.cross_matrix(v), -geometry.cross_matrix(v).T)


def test_backproject_inverts_projection() -> None:
    K = np.array([[100.0, 0, 20], [0, 90, 10], [0, 0, 1]])
    depth = np.full((21, 41), 4.0)
    points = geometry.backproject(depth, K)
    uvw = points.reshape(-1, 3) @ K.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    grid_v, grid_u = np.mgrid[0:21, 0:41]
    np.testing.assert_allclose(u, grid_u.reshape(-1), atol=1e-9)
    np.testing.assert_allclose(v, grid_v.reshape(-1), atol=1e-9)


def test_pose_vector_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="6 values"):
        geometry.pose_vec_to_mat(np.zeros(5))
    with pytest.raises(ValueError, match=r"\[B,6\]"):
        warp.pose_vec_to_mat(torch.zeros(2, 5))


@pytest.mark.parametrize("length", [3, 5])
def test_window_transforms_put_the_target_at_the_centre(length: int) -> None:
    # Source k (of the window without its centre) moves the target by k+1 metres along x, by hand.
    vectors = np.zeros((length - 1, 6))
    vectors[:, 0] = np.arange(1, length)
    transforms = geometry.window_transforms(vectors)
    center = length // 2
    expected_x = {3: [1.0, 0.0, 2.0], 5: [1.0, 2.0, 0.0, 3.0, 4.0]}[length]
    np.testing.assert_array_equal(transforms[:, 0, 3], expected_x)
    np.testing.assert_array_equal(transforms[center], np.eye(4))
    np.testing.assert_array_equal(transforms[:, :3, :3], np.tile(np.eye(3), (length, 1, 1)))


def test_window_transforms_keep_each_source_in_order(rng: np.random.Generator) -> None:
    vectors = rng.normal(scale=0.1, size=(4, 6))
    transforms = geometry.window_transforms(vectors)
    np.testing.assert_array_equal(transforms[[0, 1, 3, 4]], geometry.pose_vec_to_mat(vectors))


def test_window_transforms_reject_a_window_without_a_centre() -> None:
    with pytest.raises(ValueError, match="no centre"):
        geometry.window_transforms(np.zeros((3, 6)))
    for shape in [(0, 6), (6,), (2, 5)]:
        with pytest.raises(ValueError, match="at least 2 sources"):
            geometry.window_transforms(np.zeros(shape))
