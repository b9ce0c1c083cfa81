"""DispNet: disparity from one image, the depth network of SfMLearner (Zhou et al. 2017, Fig. 4a), or from the image
and the frame before it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sfm_ros.models.blocks import conv_relu, crop_like, downsample_pair, upconv_relu, xavier_init

ENCODER_CHANNELS = (32, 64, 128, 256, 512, 512, 512)
ENCODER_KERNELS = (7, 5, 3, 3, 3, 3, 3)
DECODER_CHANNELS = (512, 512, 256, 128, 64, 32, 16)
NUM_SCALES = 4
INPUT_FRAMES = (1, 2)  # the target alone (the paper), or it and the frame before (bundle.DEPTH_INPUT_FRAMES)


class DispNet(nn.Module):
    """Encoder of 7 stride-2 conv pairs, transposed-conv decoder with skips, 4 disparity scales.

    Args:
        alpha, beta: disparity = alpha * sigmoid(x) + beta (paper: 10 and 0.01), so depth = 1/disparity
            lies in (1/10.01, 100).
        input_frames: 1, the paper's single image; or 2, the target and the frame before it stacked on the channels,
            so that the depth can be read from the parallax between them and not only from the image's content
            (only the first convolution changes: 3 * input_frames input channels).

    Input: image [B,3*input_frames,H,W] normalised as the bundle says, the target's channels first.
    Output: a tuple of 4 disparities, finest first, [B,1,H,W], [B,1,H/2,W/2], [B,1,H/4,W/4], [B,1,H/8,W/8] (the
    same in training and evaluation).
    H and W must be multiples of 8 so that every scale of the loss pyramid has an integer size (128x416
    is the paper's); odd intermediate encoder sizes are aligned by cropping, as the paper's code does.
    """

    def __init__(self, alpha: float = 10.0, beta: float = 0.01, input_frames: int = 1) -> None:
        super().__init__()
        if input_frames not in INPUT_FRAMES:
            raise ValueError(f"input_frames must be one of {INPUT_FRAMES}, got {input_frames}")
        self.alpha = alpha
        self.beta = beta
        self.input_frames = input_frames
        enc, dec = ENCODER_CHANNELS, DECODER_CHANNELS
        in_channels = (3 * input_frames, *enc[:-1])
        self.encoder = nn.ModuleList(
            downsample_pair(c_in, c_out, k) for c_in, c_out, k in zip(in_channels, enc, ENCODER_KERNELS, strict=True)
        )
        up_in = (enc[6], *dec[:-1])
        self.upconvs = nn.ModuleList(upconv_relu(c_in, c_out, 3) for c_in, c_out in zip(up_in, dec, strict=True))
        # iconv inputs: upconv output + skip (+ upsampled coarser disparity for the 3 finest stages).
        skip_channels = (enc[5], enc[4], enc[3], enc[2], enc[1], enc[0], 0)
        extra_disp = (0, 0, 0, 0, 1, 1, 1)
        self.iconvs = nn.ModuleList(
            conv_relu(d + s + e, d) for d, s, e in zip(dec, skip_channels, extra_disp, strict=True)
        )
        # Disparity heads on the last 4 decoder stages (1/8, 1/4, 1/2, 1/1).
        self.disp_heads = nn.ModuleList(nn.Conv2d(c, 1, 3, padding=1) for c in dec[3:])
        xavier_init(self)

    def initialise_disparity(self, disparity: float) -> None:
        """Start every scale's output near ``disparity`` (the heads' bias at the sigmoid's inverse) instead of at the
        middle of the range, alpha / 2 + beta, which the paper's zero bias gives."""
        if not self.beta < disparity < self.alpha + self.beta:
            raise ValueError(f"initial disparity must lie in ({self.beta}, {self.alpha + self.beta}), got {disparity}")
        fraction = (disparity - self.beta) / self.alpha
        with torch.no_grad():
            for head in self.disp_heads:
                head.bias.fill_(math.log(fraction / (1 - fraction)))

    def _disparity(self, head: int, features: torch.Tensor) -> torch.Tensor:
        return self.alpha * torch.sigmoid(self.disp_heads[head](features)) + self.beta

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = image.shape[-2:]
        if image.shape[-3] != 3 * self.input_frames:
            raise ValueError(f"DispNet reads {self.input_frames} frame(s), {3 * self.input_frames} channels; "
                             f"got {image.shape[-3]}")
        if height % 8 or width % 8:
            raise ValueError(f"DispNet input H and W must be multiples of 8, got H={height}, W={width}")
        skips = []
        x = image
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        disparities: list[torch.Tensor] = []
        for i in range(7):
            skip = skips[5 - i] if i < 6 else image
            x = crop_like(self.upconvs[i](x), skip)
            parts = [x] if i == 6 else [x, skip]
            if disparities:
                parts.append(crop_like(F.interpolate(disparities[-1], scale_factor=2, mode="bilinear",
                                                     align_corners=False), skip))
            x = self.iconvs[i](torch.cat(parts, dim=1))
            if i >= 3:
                disparities.append(self._disparity(i - 3, x))
        return tuple(reversed(disparities))


def dispnet(*, alpha: float = 10.0, beta: float = 0.01, input_frames: int = 1) -> DispNet:
    """Build the paper's DispNet (Xavier-initialised)."""
    return DispNet(alpha=alpha, beta=beta, input_frames=input_frames)
