"""DispNet and PoseExpNet: the paper's parameter counts, output shapes and value ranges at every scale."""

from __future__ import annotations

import pytest
import torch

from sfm_ros.bundle import DEPTH_INPUT_FRAMES
from sfm_ros.models import DispNet, PoseExpNet, dispnet, posenet
from sfm_ros.models.dispnet import INPUT_FRAMES


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_paper_architecture() -> None:
    assert count(dispnet()) == 31_596_900
    assert count(posenet(num_sources=2, with_mask=False)) == 1_590_668


@pytest.mark.parametrize(("height", "width"), [(128, 416), (64, 208), (96, 320)])
def test_dispnet_scales_and_range(height: int, width: int) -> None:
    torch.manual_seed(0)
    net = DispNet(alpha=10.0, beta=0.01)
    for mode in (net.train, net.eval):
        mode()
        with torch.no_grad():
            outputs = net(torch.randn(2, 3, height, width))
        assert isinstance(outputs, tuple) and len(outputs) == 4
        for scale, disparity in enumerate(outputs):
            assert disparity.shape == (2, 1, height // 2**scale, width // 2**scale)
            assert float(disparity.min()) > 0.01 and float(disparity.max()) < 10.01


def test_initial_disparity_sets_every_head_by_the_inverse_sigmoid() -> None:
    net = DispNet(alpha=10.0, beta=0.01)
    for head in net.disp_heads:
        torch.nn.init.zeros_(head.weight)  # outputs are then alpha * sigmoid(bias) + beta exactly
    net.initialise_disparity(0.3)
    # sigmoid(b) = (0.3 - 0.01) / 10 = 0.029 -> b = log(0.029 / 0.971)
    assert float(net.disp_heads[0].bias.detach()) == pytest.approx(-3.51103, abs=1e-5)
    with torch.no_grad():
        for disparity in net(torch.randn(1, 3, 64, 208)):
            torch.testing.assert_close(disparity, torch.full_like(disparity, 0.3))
    with pytest.raises(ValueError, match="initial disparity"):
        net.initialise_disparity(10.5)


def test_dispnet_rejects_sizes_the_pyramid_cannot_halve() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        DispNet()(torch.zeros(1, 3, 100, 416))


def test_posenet_outputs_and_mask_scales() -> None:
    torch.manual_seed(0)
    net = PoseExpNet(num_sources=2, with_mask=True, pose_scale=0.01)
    target, sources = torch.randn(1, 3, 128, 416), torch.randn(1, 2, 3, 128, 416)
    for mode in (net.train, net.eval):
        mode()
        with torch.no_grad():
            poses, masks = net(target, sources)
        assert poses.shape == (1, 2, 6)
        assert float(poses.abs().max()) < 0.05  # 0.01 x a mean of conv outputs: small initial motion
        assert [m.shape for m in masks] == [(1, 2, 128 // 2**s, 416 // 2**s) for s in range(4)]
        assert all(float(m.min()) > 0 and float(m.max()) < 1 for m in masks)
    poses_only, empty = PoseExpNet(num_sources=4, with_mask=False)(target, torch.randn(1, 4, 3, 128, 416))
    assert poses_only.shape == (1, 4, 6) and empty == ()


def test_posenet_checks_the_source_count() -> None:
    with pytest.raises(ValueError, match=r"\[B,2,3,H,W\]"):
        PoseExpNet(num_sources=2)(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="num_sources"):
        PoseExpNet(num_sources=0)


def test_xavier_initialisation_zero_bias() -> None:
    net = DispNet()
    conv = net.encoder[0][0][0]
    weight, bias = conv.weight.detach(), conv.bias.detach()
    assert float(bias.abs().max()) == 0
    fan_in, fan_out = 3 * 49, 32 * 49
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert float(weight.abs().max()) <= bound


def test_inference_copies_compute_the_same_functions() -> None:
    from sfm_ros.models.inference import SplitInputConv, inference_copies

    torch.manual_seed(0)
    depth_net, pose_net = DispNet().eval(), PoseExpNet(3, with_mask=True).eval()
    original_state = {k: v.clone() for k, v in depth_net.state_dict().items()}
    fast_depth, fast_pose = inference_copies(depth_net, pose_net)
    # the three finest iconvs (129, 65, 17 input channels) and the pose net's 12-channel input are split
    assert sum(isinstance(m, SplitInputConv) for m in fast_depth.modules()) == 3
    assert fast_pose.encoder[0][0].group_sizes == [3, 3, 3, 3]
    image, sources = torch.randn(1, 3, 64, 208), torch.randn(1, 3, 3, 64, 208)
    with torch.no_grad():
        for fast, slow in zip(fast_depth(image), depth_net(image), strict=True):
            torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
        (fast_poses, fast_masks), (poses, masks) = fast_pose(image, sources), pose_net(image, sources)
    torch.testing.assert_close(fast_poses, poses, rtol=1e-5, atol=1e-7)
    for fast, slow in zip(fast_masks, masks, strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, original_state[k]) for k, v in depth_net.state_dict().items())  # originals untouched


def test_split_input_conv_refuses_groups_that_do_not_cover_the_inputs() -> None:
    from sfm_ros.models.inference import split_input_conv

    with pytest.raises(ValueError, match="do not split the 9 input channels"):
        split_input_conv(torch.nn.Conv2d(9, 4, 3), [3, 3])


def test_crop_like_only_slices_when_sizes_differ() -> None:
    from sfm_ros.models.blocks import crop_like

    x = torch.randn(1, 2, 8, 14)
    assert crop_like(x, torch.empty(1, 1, 8, 14)) is x
    assert crop_like(x, torch.empty(1, 1, 8, 13)).shape == (1, 2, 8, 13)


def test_a_two_frame_dispnet_differs_only_in_its_first_convolutions_inputs() -> None:
    # Three more input channels into the first 7x7 convolution's 32 filters: 3 * 32 * 7 * 7 = 4704 weights.
    assert count(dispnet(input_frames=2)) - count(dispnet()) == 3 * 32 * 7 * 7
    net = DispNet(input_frames=2).eval()
    with torch.no_grad():
        disparities = net(torch.zeros(2, 6, 64, 208))
    assert [tuple(d.shape) for d in disparities] == [(2, 1, 64, 208), (2, 1, 32, 104), (2, 1, 16, 52), (2, 1, 8, 26)]
    with pytest.raises(ValueError, match=r"reads 2 frame\(s\), 6 channels; got 3"):
        net(torch.zeros(1, 3, 64, 208))
    with pytest.raises(ValueError, match="input_frames must be one of"):
        DispNet(input_frames=3)
    assert INPUT_FRAMES == DEPTH_INPUT_FRAMES  # what a bundle may say is what the network builds
