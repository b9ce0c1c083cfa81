"""Inference copies of the trained networks, restructured for CPU runtimes; the same functions, no retraining.

onnxruntime's fast CPU convolution (the NCHWc kernels) takes input channel counts that are multiples of 8, or
fewer than 8 for a layer reading an image. Three places in the paper's networks miss it and fall back to a kernel
2-3x slower (benchmarks/RESULTS.md): PoseExpNet's first convolution reads 9 stacked channels (3 frames x RGB), and
DispNet's three finest iconvs read 129, 65 and 17 channels (features, skip and the upsampled disparity). A
convolution is linear in its input channels, so each of these becomes a sum of convolutions over channel groups
that do take the fast path: one per frame for PoseExpNet, and [features + skip, disparity] for DispNet. Outputs
equal the originals to float rounding (measured: 3e-6 of the disparity); TensorRT fuses either form.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sfm_ros.models.dispnet import DispNet
from sfm_ros.models.posenet import PoseExpNet

__all__ = ["SplitInputConv", "inference_copies", "split_input_conv"]

FAST_CHANNEL_MULTIPLE = 8  # onnxruntime's NCHWc block on AVX2 (16 on AVX-512, which 8-aligned groups also suit)


class SplitInputConv(nn.Module):
    """conv(x) computed as sum_k conv_k(x[:, group k]): one Conv2d per input-channel group, bias on the first.

    Input [B, sum(group_sizes), H, W]; output as the original convolution's.
    """

    def __init__(self, convs: list[nn.Conv2d], group_sizes: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.group_sizes = list(group_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.group_sizes, dim=1)
        out = self.convs[0](groups[0])
        for conv, group in zip(self.convs[1:], groups[1:], strict=True):
            out = out + conv(group)
        return out


def split_input_conv(conv: nn.Conv2d, group_sizes: list[int]) -> SplitInputConv:
    """The same convolution as ``conv``, over input-channel groups of ``group_sizes`` (summing to its inputs)."""
    if sum(group_sizes) != conv.in_channels or conv.groups != 1:
        raise ValueError(f"groups {group_sizes} do not split the {conv.in_channels} input channels of {conv}")
    weight = conv.weight.detach()
    convs, start = [], 0
    for index, size in enumerate(group_sizes):
        part = nn.Conv2d(size, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                         dilation=conv.dilation, bias=index == 0 and conv.bias is not None)
        part.weight.data.copy_(weight[:, start:start + size])
        if part.bias is not None:
            part.bias.data.copy_(conv.bias.detach())
        convs.append(part)
        start += size
    return SplitInputConv(convs, group_sizes)


def inference_copies(depth_net: DispNet, pose_net: PoseExpNet) -> tuple[DispNet, PoseExpNet]:
    """Deep copies of both networks with the slow-path convolutions split (see the module docstring).

    The copies keep their classes and forward passes; only the affected Conv2d modules are replaced, so they
    must not be saved as checkpoints (their state-dict keys differ).
    """
    depth_net, pose_net = copy.deepcopy(depth_net), copy.deepcopy(pose_net)
    for stage in depth_net.iconvs:
        conv = stage[0]
        remainder = conv.in_channels % FAST_CHANNEL_MULTIPLE
        if remainder and conv.in_channels > FAST_CHANNEL_MULTIPLE:
            stage[0] = split_input_conv(conv, [conv.in_channels - remainder, remainder])
    first = pose_net.encoder[0][0]
    pose_net.encoder[0][0] = split_input_conv(first, [3] * (first.in_channels // 3))
    return depth_net, pose_net
