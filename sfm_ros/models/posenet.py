"""PoseExpNet: relative poses and explainability masks (Zhou et al. 2017, Fig. 4b)."""

from __future__ import annotations

import torch
from torch import nn

from sfm_ros.models.blocks import conv_relu, crop_like, upconv_relu, xavier_init

ENCODER_CHANNELS = (16, 32, 64, 128, 256)
ENCODER_KERNELS = (7, 5, 3, 3, 3)
POSE_CHANNELS = (256, 256)
MASK_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class PoseExpNet(nn.Module):
    """Target and N sources stacked on channels -> N poses and (optionally) N explainability masks.

    Args:
        num_sources: source frames per snippet (2 for 3-frame snippets).
        with_mask: build the explainability decoder (training; can be left out at export).
        pose_scale: poses are ``pose_scale`` times the spatial mean of a 1x1 conv (paper: 0.01), which keeps
            the initial motion small.

    Input: target [B,3,H,W] and sources [B,N,3,H,W], normalised as the bundle says.
    Output: poses [B,N,6] = [tx ty tz rx ry rz] of T_source_target (target -> source; up-to-scale metres,
    radians, R = Rx Ry Rz), and masks: a tuple of 4 scales [B,N,H/2^s,W/2^s] in (0,1), finest first, or an
    empty tuple without the mask head. The output structure is the same in training and evaluation.
    """

    def __init__(self, num_sources: int = 2, with_mask: bool = True, pose_scale: float = 0.01) -> None:
        super().__init__()
        if num_sources < 1:
            raise ValueError(f"num_sources must be >= 1, got {num_sources}")
        self.num_sources = num_sources
        self.with_mask = with_mask
        self.pose_scale = pose_scale
        in_channels = (3 * (1 + num_sources), *ENCODER_CHANNELS[:-1])
        self.encoder = nn.ModuleList(
            conv_relu(c_in, c_out, k, stride=2)
            for c_in, c_out, k in zip(in_channels, ENCODER_CHANNELS, ENCODER_KERNELS, strict=True)
        )
        self.pose_convs = nn.Sequential(conv_relu(ENCODER_CHANNELS[-1], POSE_CHANNELS[0], 3, stride=2),
                                        conv_relu(POSE_CHANNELS[0], POSE_CHANNELS[1], 3, stride=2))
        self.pose_head = nn.Conv2d(POSE_CHANNELS[1], 6 * num_sources, kernel_size=1)
        if with_mask:
            up_in = (ENCODER_CHANNELS[-1], *MASK_DECODER_CHANNELS[:-1])
            self.mask_upconvs = nn.ModuleList(
                upconv_relu(c_in, c_out, 4) for c_in, c_out in zip(up_in, MASK_DECODER_CHANNELS, strict=True)
            )
            # Mask heads on the last 4 decoder stages (1/8, 1/4, 1/2, 1/1).
            self.mask_heads = nn.ModuleList(
                nn.Conv2d(c, num_sources, 3, padding=1) for c in MASK_DECODER_CHANNELS[1:]
            )
        xavier_init(self)

    def forward(self, target: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if sources.dim() != 5 or sources.shape[1] != self.num_sources:
            raise ValueError(f"sources must be [B,{self.num_sources},3,H,W], got {tuple(sources.shape)}")
        x = torch.cat([target, sources.flatten(1, 2)], dim=1)
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        pose = self.pose_head(self.pose_convs(x)).mean(dim=(2, 3))
        pose = self.pose_scale * pose.view(-1, self.num_sources, 6)
        if not self.with_mask:
            return pose, ()
        skips = (features[3], features[2], features[1], features[0], target)
        masks: list[torch.Tensor] = []
        for i, upconv in enumerate(self.mask_upconvs):
            x = crop_like(upconv(x), skips[i])
            if i >= 1:
                masks.append(torch.sigmoid(self.mask_heads[i - 1](x)))
        return pose, tuple(reversed(masks))


def posenet(*, num_sources: int = 2, with_mask: bool = True, pose_scale: float = 0.01) -> PoseExpNet:
    """Build the paper's PoseExpNet (Xavier-initialised)."""
    return PoseExpNet(num_sources=num_sources, with_mask=with_mask, pose_scale=pose_scale)
