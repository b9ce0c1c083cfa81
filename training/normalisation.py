"""The networks' input range in torch, from the one definition in ``sfm_ros.bundle`` (IMAGE_MEAN, IMAGE_STD)."""

from __future__ import annotations

import torch

from sfm_ros.bundle import IMAGE_MEAN, IMAGE_STD

__all__ = ["normalise", "to_unit_range"]


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [...,3,H,W] -> float in the networks' range ((rgb/255 - IMAGE_MEAN) / IMAGE_STD)."""
    return (images.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Normalised images -> [0, 1] (the inverse of ``normalise`` up to the /255), e.g. for SSIM's constants."""
    return images * IMAGE_STD + IMAGE_MEAN
