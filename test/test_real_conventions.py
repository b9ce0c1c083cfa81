"""The whole chain of conventions on real KITTI frames (issue: networks and objective).

(a) Sequence 06 with ground-truth poses: on road pixels with flat-ground depth, warping frame t+1 into t with
    the ground-truth relative pose beats zero motion and the inverted pose.
(b) Raw drive 0060 with LiDAR depth held fixed: minimising the photometric error over the six pose parameters
    recovers forward motion, twice the frame gap gives a larger forward motion, and the error drops below
    zero motion. Drive 0060 barely moves in frames 0-10 (stop-and-go traffic; a LiDAR ICP gives ~2 cm/frame),
    so the test uses frames 12 -> 15 -> 18, where the car drives off at ~0.1 m/frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from sfm_ros import kitti
from sfm_ros.models.warp import inverse_warp, pose_vec_to_mat
from test.conftest import DRIVE_0060, ODOMETRY_06

CAMERA_HEIGHT_M = 1.65


def _image(path: object, blur: float = 0.0) -> torch.Tensor:
    rgb = kitti.load_rgb(path).astype(np.float32) / 255.0
    if blur:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def _masked_error(warped: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((warped - target).abs().mean(1, keepdim=True) * mask).sum() / mask.sum())


def test_ground_truth_pose_explains_the_road_on_sequence_06() -> None:
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    K = torch.from_numpy(sequence.K).float()[None]
    height, width = sequence.size
    fy, cy = sequence.K[1, 1], sequence.K[1, 2]
    v = np.arange(height, dtype=np.float64)[:, None].repeat(width, 1)
    depth = np.where(v > cy + 20, fy * CAMERA_HEIGHT_M / np.maximum(v - cy, 1e-6), 0.0)  # flat, level road
    road = np.zeros((height, width), dtype=bool)
    road[int(cy) + 40:, int(0.35 * width):int(0.65 * width)] = True  # the lane ahead, lower image
    depth_t = torch.from_numpy(np.where(road, depth, 1.0)).float()[None, None]
    mask = torch.from_numpy(road).float()[None, None]
    wins = 0
    for t in (5, 20, 35):
        target, source = _image(sequence.image_paths[t]), _image(sequence.image_paths[t + 1])
        T_source_target = np.linalg.inv(sequence.poses[t + 1]) @ sequence.poses[t]  # frame t -> frame t+1
        errors = {}
        for name, T in (("truth", T_source_target), ("zero", np.eye(4)), ("inverted", np.linalg.inv(T_source_target))):
            warped, valid = inverse_warp(source, depth_t, torch.from_numpy(T).float()[None], K)
            errors[name] = _masked_error(warped, target, mask * valid)
        assert errors["truth"] < 0.7 * errors["zero"], errors
        assert errors["truth"] < 0.7 * errors["inverted"], errors
        wins += 1
    assert wins == 3


def _camera_depth(sequence: kitti.Sequence, index: int) -> np.ndarray:
    """LiDAR points projected with exact pixel centres and the rectified camera's z (for warping, not the
    Eigen protocol's rounding and LiDAR-x depth)."""
    projection = kitti.velodyne_to_image_projection(sequence.calib_dir, 2)
    points = kitti.read_velodyne(sequence.velodyne_paths[index])
    points = points[points[:, 0] > 0]
    uvw = np.c_[points[:, :3], np.ones(len(points))] @ projection.T
    u = np.round(uvw[:, 0] / uvw[:, 2]).astype(int)
    v = np.round(uvw[:, 1] / uvw[:, 2]).astype(int)
    height, width = sequence.size
    inside = (u >= 0) & (v >= 0) & (u < width) & (v < height)
    depth = np.full((height, width), np.inf)
    np.minimum.at(depth, (v[inside], u[inside]), uvw[inside, 2])
    depth[np.isinf(depth)] = 0.0
    return depth


def _fit_pose(sequence: kitti.Sequence, t: int, gap: int) -> tuple[np.ndarray, float, float]:
    depth = torch.from_numpy(_camera_depth(sequence, t)).float()[None, None]
    mask = (depth > 0).float()
    K = torch.from_numpy(sequence.K).float()[None]

    def error(pose: torch.Tensor, blur: float) -> torch.Tensor:
        target, source = _image(sequence.image_paths[t], blur), _image(sequence.image_paths[t + gap], blur)
        warped, valid = inverse_warp(source, depth.clamp_min(1e-3), pose_vec_to_mat(pose), K)
        return ((warped - target).abs().mean(1, keepdim=True) * mask * valid).sum() / (mask * valid).sum()

    # Coarse search along the optical axis on blurred images, then all six parameters coarse-to-fine.
    with torch.no_grad():
        start = min(np.arange(-1.0, 1.01, 0.1),
                    key=lambda tz: float(error(torch.tensor([[0, 0, float(tz), 0, 0, 0]]), 2)))
    pose = torch.tensor([[0.0, 0.0, float(start), 0.0, 0.0, 0.0]], requires_grad=True)
    optimiser = torch.optim.Adam([pose], lr=0.005)
    for blur in (2.0, 1.0, 0.0):
        for _ in range(60):
            loss = error(pose, blur)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return pose.detach()[0].numpy(), float(error(pose, 0)), float(error(torch.zeros(1, 6), 0))


def test_photometric_pose_fit_on_lidar_depth_recovers_forward_motion() -> None:
    sequence = kitti.kitti_raw_drive(DRIVE_0060, 2)
    near, near_error, near_zero = _fit_pose(sequence, 12, 3)
    far, far_error, far_zero = _fit_pose(sequence, 12, 6)
    # Forward motion: the source camera is ahead, so target points are closer to it (tz < 0).
    assert near[2] < -0.1 and far[2] < -0.1, (near, far)
    assert abs(near[2]) > 3 * abs(near[0]) and abs(far[2]) > 3 * abs(far[0])  # mostly straight ahead
    # Twice the gap, about twice the motion (the car accelerates here, hence the wide bounds).
    assert 1.5 < far[2] / near[2] < 3.0, (near, far)
    assert near_error < 0.95 * near_zero and far_error < 0.95 * far_zero
