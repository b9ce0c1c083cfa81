"""The SfMLearner objective as plain tensor functions (Zhou et al. 2017, Sec. 3).

Per scale s (images area-downsampled to the disparity's size, intrinsics scaled) and per source i:
  L_vs  = mean |I_t - warp(I_s)| * E_i               (view synthesis, explainability-weighted)
  L_reg = lambda_e * mean CE(E_i, 1)                 (keeps E away from the trivial all-zero mask)
  L_sm  = lambda_s / decay^s * (|d_xx| + |d_xy| + |d_yx| + |d_yy|) on disparity (paper: decay 2)
and the total is the sum over scales and sources. Every weight and every deviation from the paper is a
field of ``LossConfig``; ``config/train_paper.yaml`` spells out the paper's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sfm_ros.models.warp import inverse_warp, pose_vec_to_mat, scale_intrinsics
from training.normalisation import to_unit_range

SMOOTHNESS_TARGETS = ("disparity", "depth")
# What a sample that warps out of the source view reads: the nearest edge pixel, as the authors' sampler clamps its
# coordinates. Reading zero (mid-grey) instead, sfm_ros's first default, was measured and deleted (RESULTS, "Out-of-view
# samples read as mid-grey, re-measured on val_unseen"); the validity mask decides whether such a pixel costs anything.
OUT_OF_VIEW_SAMPLE = "border"


@dataclass(frozen=True)
class LossConfig:
    """Weights and optional terms of the objective. Defaults: the recommended recipe, which is the paper's with
    ``smooth_weight`` 0.1 and out-of-view pixels free (``validity_mask`` with ``validity_mean`` "all");
    ``config/train_paper.yaml`` holds the paper's own values."""

    num_scales: int = 4
    # lambda_s (paper 0.5); scale s uses lambda_s / smooth_decay^s. 0.1 by default: at 0.5 the smoothness term
    # flattens the disparity faster than view synthesis can shape it (docs/training.md, "Each default").
    smooth_weight: float = 0.1
    smooth_decay: float = 2.0  # paper 2; the PyTorch reference implementation uses 2.3
    # What second-order smoothness acts on: "disparity" (paper) or "depth" (the PyTorch reference). Disparity over
    # its per-image mean (monodepth2's) was measured and deleted (RESULTS, "Whole snippets mirrored, and smoothness on
    # normalised disparity, re-measured on val_unseen").
    smoothness_target: str = "disparity"
    explain_weight: float = 0.2  # lambda_e; 0 disables the mask (unweighted photometric error)
    ssim_weight: float = 0.0  # 0 = the paper's pure L1; 0.85 mixes (1-SSIM)/2 in, as monodepth2 does
    min_over_sources: bool = False  # per-pixel minimum of the error over sources instead of the sum
    # monodepth2's auto-masking was measured and deleted (RESULTS, "monodepth2's auto-masking alone on today's
    # default"): it lost on the rendered streets, which hold nothing it is for (a camera standing still, objects
    # moving with it); the data's static filter drops recorded frames where the camera stands.
    # Pixels that warp out of the source view: ignored (paper: they count, against what the sampler reads there).
    # True by default, with validity_mean "all": on the learning benchmark the default learns on every path with it.
    validity_mask: bool = True
    # With validity_mask, what the photometric mean is over: "in_view" (only the pixels that stay in view) or "all"
    # (out-of-view pixels count as a perfect match, as in the PyTorch reference: a pixel that truly leaves the view is
    # not charged, so near surfaces at the image's edges are not pushed far to stay in view).
    validity_mean: str = "all"
    # Synthesise every scale at the input's full size from its disparity (and mask) upsampled bilinearly, instead of
    # at the scale's own size (paper); monodepth2's remedy for the coarse scales' holes and texture copies.
    full_resolution: bool = False

    def __post_init__(self) -> None:
        if self.smoothness_target not in SMOOTHNESS_TARGETS:
            raise ValueError(f"smoothness_target must be one of {SMOOTHNESS_TARGETS}, got {self.smoothness_target!r}")
        if self.validity_mean not in ("in_view", "all"):
            raise ValueError(f"validity_mean must be 'in_view' or 'all', got {self.validity_mean!r}")
        if self.smooth_decay < 1.0:
            raise ValueError(f"smooth_decay must be >= 1, got {self.smooth_decay}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ValueError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")
        if not 1 <= self.num_scales <= 4:
            raise ValueError(f"num_scales must be 1..4, got {self.num_scales}")


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) / 2 per pixel over 3x3 windows (reflection-padded). x, y: [B,C,H,W] -> [B,C,H,W] in [0,1]."""
    c1, c2 = 0.01**2, 0.03**2
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x**2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y**2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return ((1 - numerator / denominator) / 2).clamp(0, 1)


def photometric_error(target: torch.Tensor, synthesised: torch.Tensor, ssim_weight: float = 0.0) -> torch.Tensor:
    """Per-pixel error [B,1,H,W]: channel-mean L1, optionally mixed with SSIM dissimilarity.

    Images are in the networks' normalised range (L1 there, as in the paper); SSIM is computed on them mapped back
    to [0, 1], where its constants are defined.
    """
    l1 = (target - synthesised).abs().mean(dim=1, keepdim=True)
    if ssim_weight == 0.0:
        return l1
    dssim = ssim_dissimilarity(to_unit_range(target), to_unit_range(synthesised)).mean(dim=1, keepdim=True)
    return ssim_weight * dssim + (1 - ssim_weight) * l1


def second_order_smoothness(disparity: torch.Tensor) -> torch.Tensor:
    """Paper's smoothness: mean |d_xx| + |d_xy| + |d_yx| + |d_yy| of disparity [B,1,H,W] -> scalar."""
    dx = disparity[:, :, :, 1:] - disparity[:, :, :, :-1]
    dy = disparity[:, :, 1:, :] - disparity[:, :, :-1, :]
    dxx = dx[:, :, :, 1:] - dx[:, :, :, :-1]
    dxy = dx[:, :, 1:, :] - dx[:, :, :-1, :]
    dyx = dy[:, :, :, 1:] - dy[:, :, :, :-1]
    dyy = dy[:, :, 1:, :] - dy[:, :, :-1, :]
    return dxx.abs().mean() + dxy.abs().mean() + dyx.abs().mean() + dyy.abs().mean()


def explainability_regularisation(mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each mask pixel toward 1 ("explainable"): mean -log(E). mask: [B,N,H,W] in (0,1)."""
    return -torch.log(mask.clamp_min(1e-6)).mean()


def area_resized(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images [B,C,H,W] area-averaged to ``size`` (h, w); the same tensor when already that size."""
    return images if tuple(images.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(images, size)


def smoothness_input(disparity: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """What the second-order term smooths (``config.smoothness_target``), from disparity [B,1,h,w]."""
    if config.smoothness_target == "depth":
        return 1.0 / disparity
    return disparity


def sfm_objective(target: torch.Tensor, sources: torch.Tensor, disparities: tuple[torch.Tensor, ...],
                  poses: torch.Tensor, masks: tuple[torch.Tensor, ...], K: torch.Tensor,
                  config: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full objective for one batch of snippets.

    target: [B,3,H,W], sources: [B,N,3,H,W] (normalised images); disparities: finest-first tuple of
    [B,1,H/2^s,W/2^s]; poses: [B,N,6] (T_source_target vectors); masks: finest-first tuple of
    [B,N,H/2^s,W/2^s], or () for no explainability; K: [B,3,3] at H,W.
    Returns (total, terms) where terms holds each component (detached) and a warped source for logging.
    """
    batch, num_sources = sources.shape[:2]
    height, width = target.shape[-2:]
    use_mask = bool(masks) and config.explain_weight > 0
    transforms = [pose_vec_to_mat(poses[:, i]) for i in range(num_sources)]
    photometric = target.new_zeros(())
    smoothness = target.new_zeros(())
    regulariser = target.new_zeros(())
    warped_for_log = None
    for scale in range(config.num_scales):
        disparity = disparities[scale]
        scale_mask = masks[scale] if use_mask else None
        if config.full_resolution and scale:
            # Smoothness stays on the scale's own disparity; view synthesis happens at full size.
            disparity_for_view = F.interpolate(disparity, (height, width), mode="bilinear", align_corners=False)
            if use_mask:
                scale_mask = F.interpolate(scale_mask, (height, width), mode="bilinear", align_corners=False)
        else:
            disparity_for_view = disparity
        scaled_h, scaled_w = disparity_for_view.shape[-2:]
        target_s = area_resized(target, (scaled_h, scaled_w))
        sources_s = area_resized(sources.flatten(0, 1), (scaled_h, scaled_w)).view(
            batch, num_sources, 3, scaled_h, scaled_w)
        K_s = scale_intrinsics(K, scaled_w / width, scaled_h / height)
        depth = 1.0 / disparity_for_view
        errors, valids = [], []
        for i in range(num_sources):
            warped, valid = inverse_warp(sources_s[:, i], depth, transforms[i], K_s, padding_mode=OUT_OF_VIEW_SAMPLE)
            error = photometric_error(target_s, warped, config.ssim_weight)
            if use_mask:
                error = error * scale_mask[:, i : i + 1]
                # The regulariser is on the mask the network made, at its own size.
                regulariser = regulariser + config.explain_weight * explainability_regularisation(
                    masks[scale][:, i : i + 1])
            errors.append(error)
            valids.append(valid if config.validity_mask else torch.ones_like(valid))
            if scale == 0 and i == 0:
                warped_for_log = warped.detach()
        stacked, valid = torch.cat(errors, dim=1), torch.cat(valids, dim=1)  # [B,N,h,w]
        if config.min_over_sources:
            # Invalid samples must never win the minimum.
            candidates = torch.where(valid > 0, stacked, stacked.detach().max() + 1.0)
            per_pixel = candidates.min(dim=1, keepdim=True).values
            pixel_valid = valid.amax(dim=1, keepdim=True)
        else:
            per_pixel, pixel_valid = stacked, valid
        per_pixel = per_pixel * pixel_valid
        # Mean over (valid) pixels per source, summed over sources; with every flag off this is the paper's sum
        # of per-source means.
        count = (pixel_valid.sum(dim=(0, 2, 3)).clamp_min(1.0) if config.validity_mean == "in_view"
                 else torch.full_like(pixel_valid[0, :, 0, 0], pixel_valid[:, 0].numel()))
        scale_photometric = (per_pixel.sum(dim=(0, 2, 3)) / count).sum()
        photometric = photometric + scale_photometric
        weight = config.smooth_weight / config.smooth_decay**scale
        smoothness = smoothness + weight * second_order_smoothness(smoothness_input(disparity, config))
    total = photometric + smoothness + regulariser
    terms = {"total": total.detach(), "photometric": photometric.detach(), "smoothness": smoothness.detach(),
             "explainability": regulariser.detach(), "warped": warped_for_log}
    return total, terms
