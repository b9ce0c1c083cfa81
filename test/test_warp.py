"""inverse_warp on hand-computed cases: identity, a fronto-parallel translation, out-of-view, gradients."""

from __future__ import annotations

import torch

from sfm_ros.models.warp import inverse_warp, pose_vec_to_mat

HEIGHT, WIDTH = 40, 96
K = torch.tensor([[[80.0, 0.0, 47.5], [0.0, 80.0, 19.5], [0.0, 0.0, 1.0]]])


def smooth_texture(shift_u: float = 0.0) -> torch.Tensor:
    """A smooth 3-channel image I(u, v) so bilinear sampling is nearly exact; [1,3,H,W]."""
    v, u = torch.meshgrid(torch.arange(HEIGHT, dtype=torch.float64), torch.arange(WIDTH, dtype=torch.float64),
                          indexing="ij")
    u = u + shift_u
    channels = [torch.sin(0.21 * u) + torch.cos(0.17 * v), torch.cos(0.13 * u + 0.1 * v), torch.sin(0.05 * u * v / 8)]
    return torch.stack(channels)[None].float()


def test_zero_motion_reproduces_the_source() -> None:
    source = torch.rand(2, 3, HEIGHT, WIDTH)
    depth = torch.rand(2, 1, HEIGHT, WIDTH) * 20 + 1
    warped, valid = inverse_warp(source, depth, torch.eye(4).expand(2, 4, 4), K.expand(2, 3, 3))
    torch.testing.assert_close(warped, source, atol=1e-4, rtol=0)  # float32 rounding of K^-1
    assert bool(valid.all())


def test_fronto_parallel_translation_shifts_by_f_t_over_z() -> None:
    depth_m, tx = 10.0, 0.3125  # shift = f * t / Z = 80 * 0.3125 / 10 = 2.5 px, a sub-pixel position
    source = smooth_texture()
    T = pose_vec_to_mat(torch.tensor([[tx, 0.0, 0.0, 0.0, 0.0, 0.0]]))
    warped, valid = inverse_warp(source, torch.full((1, 1, HEIGHT, WIDTH), depth_m), T, K)
    expected = smooth_texture(shift_u=80 * tx / depth_m)
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -5))
    # Bilinear interpolation of this texture is exact to ~ (0.21^2)/8 of its amplitude.
    assert (warped - expected)[interior].abs().max() < 0.02
    # The last columns look past the source's right edge: out of view, read as zero.
    assert not bool(valid[0, 0, :, -1].any())
    assert warped[0, :, :, -1].abs().max() == 0


def test_forward_motion_magnifies_about_the_principal_point() -> None:
    # Moving toward a plane at Z: a target pixel at offset r from the principal point appears at r * Z / (Z - d).
    depth_m, forward = 8.0, 2.0
    T = pose_vec_to_mat(torch.tensor([[0.0, 0.0, -forward, 0.0, 0.0, 0.0]]))  # target->source: source is ahead
    from sfm_ros.models.warp import project_to_source

    pixels, z = project_to_source(torch.full((1, 1, HEIGHT, WIDTH), depth_m), T, K)
    u0, v0 = 47.5, 19.5
    torch.testing.assert_close(pixels[0, 5, 10, 0], torch.tensor(u0 + (10 - u0) * depth_m / (depth_m - forward)))
    torch.testing.assert_close(pixels[0, 5, 10, 1], torch.tensor(v0 + (5 - v0) * depth_m / (depth_m - forward)))
    torch.testing.assert_close(z[0, 5, 10], torch.tensor(depth_m - forward))


def test_gradients_flow_to_depth_and_pose() -> None:
    source = smooth_texture()
    target = smooth_texture(shift_u=1.0)
    depth = torch.full((1, 1, HEIGHT, WIDTH), 10.0, requires_grad=True)
    pose = torch.tensor([[0.05, 0.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    warped, _ = inverse_warp(source, depth, pose_vec_to_mat(pose), K)
    (warped - target).abs().mean().backward()
    assert depth.grad is not None and depth.grad.abs().sum() > 0
    assert pose.grad is not None and pose.grad[0, 0].abs() > 0
    # Moving toward the true shift (tx = 1 px * Z / f = 0.125 m) lowers the error: the gradient says so.
    assert pose.grad[0, 0] < 0


def test_points_behind_the_camera_are_out_of_view() -> None:
    T = pose_vec_to_mat(torch.tensor([[0.0, 0.0, -20.0, 0.0, 0.0, 0.0]]))  # source 20 m ahead of points at 10 m
    warped, valid = inverse_warp(torch.ones(1, 3, HEIGHT, WIDTH), torch.full((1, 1, HEIGHT, WIDTH), 10.0), T, K)
    assert not bool(valid.any())
    assert warped.abs().max() == 0
