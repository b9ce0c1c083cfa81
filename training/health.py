"""Is training failing? The two ways SfMLearner fails silently, measured on the outputs of a training step.

- **Collapsed disparity**: the depth net explains image motion by one value everywhere (nearly constant per image)
  or pins most pixels at a bound of ``alpha * sigmoid + beta``, where the sigmoid's gradient vanishes and it stays.
- **Motion near zero**: the pose net's motion moves the image by a fraction of a pixel, so the depth net gets no
  parallax to learn from.

Scale-free measures (the networks choose the scale of depth and translation together), checked after a warm-up and
reported only when they persist, each with what to try.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["HealthMonitor", "HealthThresholds", "training_health"]

ADVICE_COLLAPSE = ("use the default recipe (no --config, or config/train_kitti.yaml: model.initial_disparity=0.3 and "
                   "loss.smooth_weight=0.1 are what keep the paper's from collapsing); check the intrinsics and that "
                   "frames move between snippets")
ADVICE_STILL = ("check that consecutive frames move (data.min_motion_px, data.static_filter), that the intrinsics "
                "match the images, and the frame rate of the source")


@dataclasses.dataclass(frozen=True)
class HealthThresholds:
    """When a statistic counts as failing, and for how long before it is reported."""

    min_disparity_variation: float = 0.05  # per-image std/mean of disparity below this, and not growing: collapsed
    trend_steps: int = 200  # "growing" compares with the variation this many steps earlier (x1.1)
    max_saturated_fraction: float = 0.8  # share of pixels within 2 % of the disparity range's ends
    min_motion_px: float = 0.25  # predicted image motion at the median depth, pixels
    warmup_steps: int = 300  # outputs of a fresh network are nearly constant and still: no verdict before this
    patience: int = 3  # consecutive failing checks before a warning


def training_health(disparity: torch.Tensor, poses: torch.Tensor, K: torch.Tensor, alpha: float,
                    beta: float) -> dict[str, float]:
    """Statistics of one training step's outputs.

    disparity: finest [B,1,H,W]; poses: [B,N,6] (tx ty tz rx ry rz, T_source_target); K: [B,3,3] at H,W.
    Returns: ``disparity_variation`` (median over images of std/mean), ``saturated_fraction`` (pixels within 2 % of
    either end of [beta, alpha + beta]) and ``motion_px`` (mean over snippets and sources of the image motion the
    pose predicts at the median depth, to first order: f |t| / Z + f |r|).
    """
    disparity = disparity.detach().float().flatten(1)
    variation = (disparity.std(dim=1) / disparity.mean(dim=1).clamp_min(1e-12)).median()
    margin = 0.02 * alpha
    saturated = ((disparity > beta + alpha - margin) | (disparity < beta + margin)).float().mean()
    focal = K[:, 0, 0].float().view(-1, 1)
    median_inverse_depth = disparity.median(dim=1).values.view(-1, 1)
    poses = poses.detach().float()
    motion = focal * poses[..., :3].norm(dim=-1) * median_inverse_depth + focal * poses[..., 3:].norm(dim=-1)
    return {"disparity_variation": float(variation), "saturated_fraction": float(saturated),
            "motion_px": float(motion.mean())}


class HealthMonitor:
    """Turns per-step statistics into warnings that persist ``patience`` checks, and says when they clear."""

    def __init__(self, thresholds: HealthThresholds | None = None) -> None:
        self.thresholds = thresholds or HealthThresholds()
        self._streak = {"collapse": 0, "still": 0}
        self._variation: list[tuple[int, float]] = []
        self.active: dict[str, str] = {}

    def problems(self, stats: dict[str, float], growing: bool = False) -> dict[str, str]:
        """The failing conditions of one check (no patience applied): name -> message with advice.

        growing: the disparity variation is rising (a flat start that is learning structure is not a collapse).
        """
        limits = self.thresholds
        found = {}
        if stats["disparity_variation"] < limits.min_disparity_variation and not growing:
            found["collapse"] = (f"disparity has collapsed to nearly one value per image (std/mean "
                                 f"{stats['disparity_variation']:.3f} < {limits.min_disparity_variation}): "
                                 f"{ADVICE_COLLAPSE}")
        elif stats["saturated_fraction"] > limits.max_saturated_fraction:
            found["collapse"] = (f"disparity is pinned at a bound on {100 * stats['saturated_fraction']:.0f} % of "
                                 f"pixels (the sigmoid no longer learns there): {ADVICE_COLLAPSE}")
        if stats["motion_px"] < limits.min_motion_px:
            found["still"] = (f"the predicted motion stays near zero ({stats['motion_px']:.2f} px at the median "
                              f"depth): {ADVICE_STILL}")
        return found

    def update(self, step: int, stats: dict[str, float]) -> tuple[list[str], list[str]]:
        """Feed one check; returns (new warnings, names of warnings that cleared)."""
        variation = stats["disparity_variation"]
        earlier = [value for seen, value in self._variation if seen <= step - self.thresholds.trend_steps]
        growing = bool(earlier) and variation > 1.1 * earlier[-1]
        self._variation = [(seen, value) for seen, value in self._variation
                           if seen > step - 2 * self.thresholds.trend_steps] + [(step, variation)]
        if step < self.thresholds.warmup_steps:
            return [], []
        found = self.problems(stats, growing)
        started, cleared = [], []
        for name in self._streak:
            if name in found:
                self._streak[name] += 1
                if self._streak[name] >= self.thresholds.patience and name not in self.active:
                    self.active[name] = found[name]
                    started.append(found[name])
            else:
                self._streak[name] = 0
                if self.active.pop(name, None) is not None:
                    cleared.append(name)
        return started, cleared
