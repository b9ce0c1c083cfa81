"""A moving average of the networks' weights (optim.average_decay): what the bundle and the evaluations take.

The last step's weights carry the noise of the last batches; their average over the last hundred steps or so lands
nearer the middle of the valley the steps wander in (Polyak averaging; the weight EMA of many training recipes).
Not torch's ``AveragedModel``: it keeps its count in a CPU tensor that it copies to the weights' device for every
parameter, a host sync each (about 100 a step here), where this keeps a Python count and one fused update.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """A copy of ``network`` holding the average of its weights over the steps given to ``update``: the newest step
    weighs max(1 - decay, 1 / (n + 1)) after n steps in it, so the plain mean of all steps until n + 1 reaches
    1 / (1 - decay), then the exponential moving average with ``decay``; a run shorter than that horizon averages its
    own steps instead of leaning on its first ones."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must lie in (0, 1), got {decay}")
        self.network = copy.deepcopy(network).requires_grad_(False)
        self.decay = decay
        self.steps = 0  # the steps averaged so far; none yet: the copy holds the weights it was made from

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Take ``network``'s weights (the same architecture) into the average."""
        weight = max(1.0 - self.decay, 1.0 / (self.steps + 1))
        torch._foreach_lerp_(list(self.network.parameters()), list(network.parameters()), weight)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "weights": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["weights"], strict=True)
        self.steps = int(state["steps"])
