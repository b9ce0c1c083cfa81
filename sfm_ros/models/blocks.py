"""Small layer helpers shared by DispNet and PoseExpNet (each name has one meaning)."""

from __future__ import annotations

import torch
from torch import nn


def conv_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (same padding) + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2),
        nn.ReLU(inplace=True),
    )


def downsample_pair(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """DispNet encoder stage: stride-2 conv then stride-1 conv, both with ReLU."""
    return nn.Sequential(conv_relu(in_channels, out_channels, kernel_size, stride=2),
                         conv_relu(out_channels, out_channels, kernel_size))


def upconv_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Transposed conv doubling the size (kernel 3: output_padding 1; kernel 4: padding 1) + ReLU."""
    if kernel_size == 3:
        layer = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
    elif kernel_size == 4:
        layer = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
    else:
        raise ValueError(f"upconv kernel_size must be 3 or 4, got {kernel_size}")
    return nn.Sequential(layer, nn.ReLU(inplace=True))


def crop_like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Crop [B,C,H,W] to reference's H,W from the top-left (the paper's code aligns odd sizes this way)."""
    if tensor.shape[2:] == reference.shape[2:]:
        return tensor  # no Slice node in the exported graph (20 of them cost onnxruntime ~1.5 ms at 128x416)
    return tensor[:, :, : reference.shape[2], : reference.shape[3]]


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv, as in the paper."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
