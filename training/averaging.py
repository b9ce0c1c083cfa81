"""A moving average of the networks' weights (optim.average_decay): what the bundle and the evaluations take.

The last step's weights carry the noise of the last batches; their average over the last few hundred steps lands
nearer the middle of the valley the steps wander in (Polyak averaging; the weight EMA of many training recipes).
torch's ``AveragedModel`` keeps the averaged copy; ``moving_average`` says how each step enters it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["averaged_copy", "moving_average"]


def moving_average(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``AveragedModel``'s avg_fn for an average whose newest step weighs max(1 - decay, 1 / (n + 1)) after n steps
    in it: the plain mean of all steps until n + 1 reaches 1 / (1 - decay), then the exponential moving average with
    ``decay``, so a run shorter than that horizon averages its own steps instead of leaning on its first ones."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"the average's decay must lie in (0, 1), got {decay}")

    def average(averaged: torch.Tensor, current: torch.Tensor, steps_averaged: torch.Tensor) -> torch.Tensor:
        weight = torch.clamp(1.0 / (steps_averaged.to(averaged.dtype) + 1.0), min=1.0 - decay)
        return averaged + weight.to(averaged.device) * (current - averaged)

    return average


def averaged_copy(network: nn.Module, decay: float) -> AveragedModel:
    """An averaged copy of ``network`` (``moving_average``); its first ``update_parameters`` copies the weights."""
    return AveragedModel(network, avg_fn=moving_average(decay))
