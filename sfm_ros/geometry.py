"""Camera geometry in numpy for the run-time path (no torch).

Conventions (DESIGN.md):
- pose vector [tx ty tz rx ry rz] in metres and radians, R = Rx(rx) @ Ry(ry) @ Rz(rz);
- a transform ``T_a_b`` (4x4) maps points expressed in frame b into frame a: ``p_a = T_a_b @ p_b``;
  the networks' pose is ``T_source_target`` ("target -> source"): it takes a point in the target camera
  to the source camera;
- camera frames are optical (REP 103 "_optical": x right, y down, z forward);
- intrinsics K are 3x3 in pixels, for pixel centres at integer coordinates.

The torch twins live in ``sfm_ros.models.warp``; tests pin both to the same numbers.
"""

from __future__ import annotations

import functools

import numpy as np

# base_link (x forward, y left, z up) <- camera optical (x right, y down, z forward), REP 103.
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def euler_to_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix R = Rx(rx) @ Ry(ry) @ Rz(rz), angles in radians. Returns [3,3]."""
    cx, sx = np.cos(rx), np.sin(rx)
    cy, sy = np.cos(ry), np.sin(ry)
    cz, sz = np.cos(rz), np.sin(rz)
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    rot_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rot_x @ rot_y @ rot_z


def pose_vec_to_mat(pose_vec: np.ndarray) -> np.ndarray:
    """Pose vectors [..., 6] = [tx ty tz rx ry rz] (m, rad) -> transforms [..., 4, 4] (T_source_target)."""
    pose_vec = np.asarray(pose_vec, dtype=np.float64)
    if pose_vec.shape[-1] != 6:
        raise ValueError(f"pose vector must end in 6 values [tx ty tz rx ry rz], got shape {pose_vec.shape}")
    flat = pose_vec.reshape(-1, 6)
    out = np.tile(np.eye(4), (len(flat), 1, 1))
    for i, (tx, ty, tz, rx, ry, rz) in enumerate(flat):
        out[i, :3, :3] = euler_to_matrix(rx, ry, rz)
        out[i, :3, 3] = (tx, ty, tz)
    return out.reshape(*pose_vec.shape[:-1], 4, 4)


def window_transforms(pose_vectors: np.ndarray) -> np.ndarray:
    """Every frame of a pose-net window in its target's camera: T_frame_target [L,4,4], oldest frame first.

    pose_vectors: [L-1,6] the pose net's vectors for its sources, which are the window of L frames without its
    centre (the target, frame L//2), in order. The target's own transform is the identity.
    """
    vectors = np.asarray(pose_vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[-1] != 6 or len(vectors) < 2:
        raise ValueError(f"a window's pose vectors are [L-1,6] with at least 2 sources, got shape {vectors.shape}")
    if len(vectors) % 2:
        raise ValueError(f"{len(vectors)} pose vectors: a window of {len(vectors) + 1} frames has no centre (target)")
    return np.insert(pose_vec_to_mat(vectors), len(vectors) // 2, np.eye(4), axis=0)


def cross_matrix(vector: np.ndarray) -> np.ndarray:
    """[v]x [3,3] of a vector v [3]: the matrix of the cross product, [v]x @ w = v x w."""
    x, y, z = np.asarray(vector, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [..., 4, 4] using R^T (exact for rotations, no general inverse)."""
    T = np.asarray(T, dtype=np.float64)
    rotation_t = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3] = -(rotation_t @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def orthonormalised(T: np.ndarray) -> np.ndarray:
    """The rigid transform [4,4] nearest to T: its rotation block projected onto SO(3) (SVD), its translation kept.
    Poses composed through their own inverses (R^T) amplify rounding; this keeps them rigid."""
    T = np.asarray(T, dtype=np.float64)
    u, _, vt = np.linalg.svd(T[:3, :3])
    out = np.eye(4)
    out[:3, :3] = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    out[:3, 3] = T[:3, 3]
    return out


def compose(*transforms: np.ndarray) -> np.ndarray:
    """Chain transforms left to right: compose(T_a_b, T_b_c) = T_a_c."""
    result = np.eye(4)
    for T in transforms:
        result = result @ T
    return result


def with_translation_scaled(T: np.ndarray, factor: float) -> np.ndarray:
    """A copy of T [4,4] (float64) with its translation times ``factor``."""
    scaled = np.array(T, dtype=np.float64)
    scaled[:3, 3] *= factor
    return scaled


def transform_from_xyz_quaternion(values: tuple[float, ...]) -> np.ndarray:
    """[4,4] from x y z qx qy qz qw (a ROS transform's translation and quaternion)."""
    if len(values) != 7:
        raise ValueError(f"a transform must be x y z qx qy qz qw, got {len(values)} values")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(np.asarray(values[3:]))
    T[:3, 3] = values[:3]
    return T


def scale_intrinsics(K: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Intrinsics [3,3] after resizing the image by (scale_x, scale_y).

    Uses the pixel-centre convention: a pixel centre u maps to (u + 0.5) * s - 0.5, so cx' = (cx + 0.5) s - 0.5.
    For the pyramid levels of the loss, use ``scale_x = scale_y = 1 / 2**s``.
    """
    K = np.asarray(K, dtype=np.float64)
    scaled = K.copy()
    scaled[0, 0] = K[0, 0] * scale_x
    scaled[0, 2] = (K[0, 2] + 0.5) * scale_x - 0.5
    scaled[1, 1] = K[1, 1] * scale_y
    scaled[1, 2] = (K[1, 2] + 0.5) * scale_y - 0.5
    return scaled


def crop_intrinsics(K: np.ndarray, left: float, top: float) -> np.ndarray:
    """Intrinsics [3,3] after cropping ``left`` columns and ``top`` rows off the image."""
    cropped = np.asarray(K, dtype=np.float64).copy()
    cropped[0, 2] -= left
    cropped[1, 2] -= top
    return cropped


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Depth [H,W] (m) -> points [H,W,3] in the camera optical frame."""
    height, width = depth.shape
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    return np.stack([x, y, depth], axis=-1)


def ground_plane_depth(shape: tuple[int, int], K: np.ndarray, normal: np.ndarray, camera_height_m: float
                       ) -> np.ndarray:
    """Depth [H,W] (camera Z, metres) of the ground plane n.X = h seen through each pixel, +inf where the ray does not
    meet the ground in front of the camera (at and above the horizon). normal: unit [3] pointing down, camera optical
    frame; K [3,3] at ``shape``. Read-only and shared: a camera's plane is computed once (the node needs it twice a
    frame, for the ground's pixels and for the ground's motion; 1 ms at 128x416)."""
    return _ground_plane_depth(tuple(int(n) for n in shape), tuple(np.asarray(K, dtype=np.float64).ravel().tolist()),
                               tuple(np.asarray(normal, dtype=np.float64).tolist()), float(camera_height_m))


@functools.lru_cache(maxsize=8)
def _ground_plane_depth(shape: tuple[int, ...], K: tuple[float, ...], normal: tuple[float, ...],
                        camera_height_m: float) -> np.ndarray:
    height, width = shape
    fx, _, cx, _, fy, cy = K[:6]
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    downward = normal[0] * (u - cx) / fx + normal[1] * (v - cy) / fy + normal[2]
    with np.errstate(divide="ignore"):
        depth = np.where(downward > 1e-6, camera_height_m / np.maximum(downward, 1e-6), np.inf)
    depth.setflags(write=False)
    return depth


def ground_normal_in_camera(T_base_camera: np.ndarray) -> np.ndarray:
    """The ground's unit normal pointing down [3] in the camera optical frame, for a camera mounted at T_base_camera
    [4,4] on a base whose z axis is up (REP 103) and whose x-y plane is parallel to the ground."""
    return np.asarray(T_base_camera, dtype=np.float64)[:3, :3].T @ np.array([0.0, 0.0, -1.0])


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation [3,3] -> unit quaternion [x, y, z, w] (ROS order), w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s])
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = np.array([0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s])
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = np.array([(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = np.array([(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s])
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Unit quaternion [x, y, z, w] -> rotation [3,3]."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
