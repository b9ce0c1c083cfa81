"""A two-frame depth net trained beside a single-frame companion (``model.depth_companion``).

Both DispNets are scored on their own view synthesis through the one pose net, so each learns in its units; only the
two-frame net goes into the bundle. Trained beside the companion, the two-frame net keeps most of its lead on
surfaces never seen and on a real drive, and wins back the familiar streets it loses when trained alone
(benchmarks/RESULTS.md, "A two-frame depth net trained beside a single-frame companion"); the companion's own depth,
and the two fused, transfer worse, so neither is kept.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sfm_ros.models import DispNet

__all__ = ["DepthWithCompanion", "deployed_depth_net"]


class DepthWithCompanion(nn.Module):
    """The two-frame DispNet a bundle keeps (``two_frame``) and its single-frame training companion
    (``companion``).

    ``forward`` is the two-frame net's, so evaluations and the bundle see the network the node runs;
    ``separate`` gives both nets' disparities for the objective. image: [B,6,H,W], the target's channels first.
    """

    input_frames: ClassVar[int] = 2

    def __init__(self, alpha: float = 10.0, beta: float = 0.01) -> None:
        super().__init__()
        self.companion = DispNet(alpha, beta, input_frames=1)  # built first: the measured runs' initialisation
        self.two_frame = DispNet(alpha, beta, input_frames=2)

    def initialise_disparity(self, disparity: float) -> None:
        """Start both nets' disparity near ``disparity`` (``DispNet.initialise_disparity``)."""
        self.two_frame.initialise_disparity(disparity)
        self.companion.initialise_disparity(disparity)

    def separate(self, image: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """image [B,6,H,W] -> (the companion's 4 disparities, on the target alone; the two-frame net's), finest
        first. The two-frame net last, as the measured runs summed their gradients."""
        if image.shape[1] != 3 * self.input_frames:
            raise ValueError(f"DepthWithCompanion reads 2 frames, 6 channels; got {image.shape[1]}")
        return self.companion(image[:, :3]), self.two_frame(image)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """image [B,6,H,W] -> the two-frame net's 4 disparities, finest first."""
        return self.two_frame(image)


def deployed_depth_net(depth_net: nn.Module) -> nn.Module:
    """The depth net a bundle keeps: a companion pair's two-frame net, any other net itself."""
    return depth_net.two_frame if isinstance(depth_net, DepthWithCompanion) else depth_net
