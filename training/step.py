"""One optimiser step of the objective, eager or replayed from a CUDA graph; the trainer and ``sfm bench train``
both run it, so the benchmark measures the code that trains.

The speed options keep the maths: bf16 autocast covers the networks only (warp and loss run in fp32),
channels-last is a memory layout, and a CUDA graph replays exactly the kernels an eager step launches.
They apply on CUDA; on a CPU the step is fp32 eager whatever they say.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from training.companion import DepthWithCompanion
from training.losses import LossConfig, sfm_objective
from training.normalisation import normalise

__all__ = ["TrainStep", "depth_net_input", "forward_objective", "learning_rate_factor", "make_optimizer",
           "mirror_where", "previous_frame_indices", "sequence_depth_input"]

# The objective's terms that are one number each, averaged over a depth net's and its companion's objectives.
SCALAR_TERMS = ("total", "photometric", "smoothness", "explainability")


def mirror_where(images: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """images: [B,C,H,W]; mirrored: bool [B]. Each image whose flag is set, flipped left-right; the rest as they are.

    A select rather than indexing, so that a CUDA graph replays it for any flags.
    """
    return torch.where(mirrored[:, None, None, None], images.flip(-1), images)


def depth_net_input(images: torch.Tensor, input_frames: int) -> torch.Tensor:
    """What the depth net reads from a batch of snippets images: [B,L,C,H,W], target in the middle ->
    [B,C*input_frames,H,W]: the target, then (input_frames 2) the frame before it in the snippet (one
    ``data.frame_strides`` gap back, the previous kept frame after the static filter)."""
    center = images.shape[1] // 2
    frames = [images[:, center - offset] for offset in range(input_frames)]
    return torch.cat(frames, dim=1)


def previous_frame_indices(count: int) -> torch.Tensor:
    """For each of ``count`` frames of a sequence, the index of the frame a two-frame depth net reads beside it: the
    one before, and for the first frame, which has none, the one after. Training never shows a reversed pair; every
    frame scored with the one after moved two models' abs_rel by -0.008 to +0.024 (RESULTS), so the first frame of a
    60-frame street moves the mean by less than 0.001 (of the 20-frame LiDAR drive, about 0.001)."""
    if count < 2:
        raise ValueError(f"a two-frame depth net needs sequences of at least 2 frames, got {count}")
    indices = torch.arange(count) - 1
    indices[0] = 1
    return indices


def sequence_depth_input(images: torch.Tensor, indices: torch.Tensor, input_frames: int) -> torch.Tensor:
    """The depth net's input for frames ``indices`` [n] of one sequence of images [N,C,H,W] -> [n,C*input_frames,H,W]
    (``previous_frame_indices`` for the second frame)."""
    if input_frames == 1:
        return images[indices]
    return torch.cat([images[indices], images[previous_frame_indices(len(images))[indices]]], dim=1)


def forward_objective(depth_model: nn.Module, pose_model: nn.Module, images: torch.Tensor, K: torch.Tensor,
                      loss_config: LossConfig, *, amp: bool = False,
                      channels_last: bool = False,
                      depth_mirrored: torch.Tensor | None = None,
                      depth_input_frames: int = 1) -> tuple[torch.Tensor, dict[str, Any]]:
    """Networks + objective on one batch of snippets.

    images: uint8 [B,L,3,H,W] on the networks' device, target in the middle; K: [B,3,3] at H,W.
    depth_mirrored: bool [B] or None. Where set, the depth net sees its target mirrored and its disparities are
    mirrored back: the depth net learns from mirrored views while the pose net and the view synthesis see the
    snippet as recorded (``data.flip_depth``).
    depth_input_frames: what the depth net reads (``depth_net_input``); mirrored as one.
    depth_model may be a ``DepthWithCompanion``: then each of its nets is scored on its own view synthesis through
    the one pose net, and the total and the scalar terms are the two objectives' means.
    Returns (total loss, terms): the loss terms (detached), the finest disparity and mask, the target and a
    warped source for logging (of a companion pair, the two-frame net's). Nothing here reads a value back to the
    host.
    """
    images = normalise(images)
    center = images.shape[1] // 2
    target = images[:, center]
    sources = torch.cat([images[:, :center], images[:, center + 1:]], dim=1)
    depth_input = target if depth_input_frames == 1 else depth_net_input(images, depth_input_frames)
    if channels_last:
        target = target.contiguous(memory_format=torch.channels_last)
        depth_input = target if depth_input_frames == 1 else depth_input.contiguous(memory_format=torch.channels_last)
    # No autocast weight cache: it would hold tensors from outside a CUDA-graph capture (each weight is used once).
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        shown = depth_input if depth_mirrored is None else mirror_where(depth_input, depth_mirrored)
        outputs = depth_model.separate(shown) if isinstance(depth_model, DepthWithCompanion) else (depth_model(shown),)
        if depth_mirrored is not None:
            outputs = tuple(tuple(mirror_where(d, depth_mirrored) for d in disparities) for disparities in outputs)
        poses, masks = pose_model(target, sources)
    # The warp and loss run in fp32 for the same maths with or without mixed precision.
    masks = tuple(m.float() for m in masks)
    # A depth net with a companion (training.companion): each net is scored on its own view synthesis through the
    # one pose net, and the objective is their mean.
    scored = [sfm_objective(target, sources, tuple(d.float() for d in disparities), poses.float(), masks, K,
                            loss_config) for disparities in outputs]
    if len(scored) == 1:
        total, terms = scored[0]
    else:  # the logged disparity and warp are the last net's: the one a bundle keeps
        total = sum(objective for objective, _ in scored) / len(scored)
        terms = {name: (sum(each[name] for _, each in scored) / len(scored) if name in SCALAR_TERMS else value)
                 for name, value in scored[-1][1].items()}
    terms.update(disparity=outputs[-1][0].float().detach(), mask=masks[0].detach() if masks else None, target=target,
                 poses=poses.detach(), K=K)
    return total, terms


def learning_rate_factor(steps_done: int, total_steps: int, decay_start: float, final_factor: float) -> float:
    """The share of the base learning rate for the next optimiser step.

    Constant until ``decay_start`` of the run (a share of ``total_steps``), then a half cosine from 1 down to
    ``final_factor`` at the end; ``decay_start`` 1.0 keeps it constant (the paper). Smaller steps at the end let
    the weights settle instead of wandering between checkpoints at this small batch.
    """
    progress = steps_done / max(total_steps, 1)
    if decay_start >= 1.0 or progress <= decay_start:
        return 1.0
    within = min((progress - decay_start) / (1.0 - decay_start), 1.0)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * within))


def make_optimizer(parameters: Iterable[nn.Parameter], device: torch.device, *, lr: float, betas: tuple[float, float],
                   weight_decay: float = 0.0, cuda_graph: bool = False) -> torch.optim.Adam:
    """Adam with the fused kernel, capturable when the step is a CUDA graph.

    Fused on every device: on CUDA one launch for all parameters; on a CPU one vectorised pass instead of a
    dozen, which is a quarter of a small-image step for these 35 M parameters. The same update up to float
    rounding (about 1e-8 a step)."""
    on_cuda = device.type == "cuda"
    return torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=weight_decay, fused=True,
                            capturable=on_cuda and cuda_graph)


class TrainStep:
    """Forward + objective + backward + Adam on one batch.

    With ``cuda_graph`` (CUDA only) the first ``warmup`` steps run eagerly on a side stream (real steps on real
    batches: they initialise cuDNN, the allocator and Adam's state), the next one is captured, and from then on a
    step is a copy of the batch into static buffers and one graph replay: no per-kernel launch cost and no host
    sync. Every batch must then have the shape of the first. The learning rate is baked into the graph, so a
    schedule that changes it needs an eager step. ``depth_input_frames``: what the depth net reads
    (``depth_net_input``).
    """

    def __init__(self, depth_model: nn.Module, pose_model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_config: LossConfig, device: torch.device, *, amp: bool = False, channels_last: bool = False,
                 cuda_graph: bool = False, compile_objective: bool = False, warmup: int = 3,
                 depth_input_frames: int = 1) -> None:
        on_cuda = device.type == "cuda"
        self.depth_input_frames = depth_input_frames
        self.depth_model, self.pose_model, self.optimizer = depth_model, pose_model, optimizer
        self.loss_config, self.device = loss_config, device
        self.amp, self.channels_last, self.cuda_graph = (amp and on_cuda, channels_last and on_cuda,
                                                         cuda_graph and on_cuda)
        if self.cuda_graph and not all(group.get("capturable") for group in optimizer.param_groups):
            raise ValueError("a CUDA-graph step needs a capturable optimiser (make_optimizer(..., cuda_graph=True))")
        self.warmup = warmup
        # torch.compile of networks + objective together fuses the loss's many small elementwise kernels.
        self.compile_objective = compile_objective and on_cuda
        self._forward = torch.compile(forward_objective) if self.compile_objective else forward_objective
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, Any] = {}
        self._side_stream = torch.cuda.Stream(device) if self.cuda_graph else None

    def describe(self) -> str:
        """The speed path in words, for logs and benchmark tables."""
        parts = ["bf16 autocast" if self.amp else "fp32", *(["channels-last"] if self.channels_last else []),
                 *(["torch.compile"] if self.compile_objective else []),
                 *(["CUDA graph"] if self.cuda_graph else ["eager"])]
        return f"{self.device.type}: " + ", ".join(parts)

    def _eager(self, images: torch.Tensor, K: torch.Tensor, depth_mirrored: torch.Tensor | None) -> dict[str, Any]:
        total, terms = self._forward(self.depth_model, self.pose_model, images, K, self.loss_config,
                                     amp=self.amp, channels_last=self.channels_last, depth_mirrored=depth_mirrored,
                                     depth_input_frames=self.depth_input_frames)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return terms

    def __call__(self, images: torch.Tensor, K: torch.Tensor,
                 depth_mirrored: torch.Tensor | None = None) -> dict[str, Any]:
        """images: uint8 [B,L,3,H,W], K: [B,3,3], depth_mirrored: bool [B] or None (``forward_objective``); any
        device (pinned host memory copies asynchronously).

        Returns the loss terms as device tensors; with a CUDA graph they are overwritten by the next step.
        """
        self.depth_model.train()
        self.pose_model.train()
        self.calls += 1
        images = images.to(self.device, non_blocking=True)
        K = K.to(self.device, dtype=torch.float32, non_blocking=True)
        if depth_mirrored is not None:
            depth_mirrored = depth_mirrored.to(self.device, dtype=torch.bool, non_blocking=True)
        if not self.cuda_graph:
            return self._eager(images, K, depth_mirrored)
        if self._graph is not None:
            if images.shape != self._static["images"].shape:
                raise ValueError(f"a CUDA-graph step was captured for batches of shape "
                                 f"{tuple(self._static['images'].shape)}, got {tuple(images.shape)}")
            if (depth_mirrored is None) != ("depth_mirrored" not in self._static):
                raise ValueError("a CUDA-graph step was captured with depth_mirrored "
                                 f"{'absent' if 'depth_mirrored' not in self._static else 'given'}; keep it so")
            self._static["images"].copy_(images, non_blocking=True)
            self._static["K"].copy_(K, non_blocking=True)
            if depth_mirrored is not None:
                self._static["depth_mirrored"].copy_(depth_mirrored, non_blocking=True)
            self._graph.replay()
            return self._static["terms"]
        if self.calls <= self.warmup:
            self._side_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._side_stream):
                terms = self._eager(images, K, depth_mirrored)
            torch.cuda.current_stream(self.device).wait_stream(self._side_stream)
            return terms
        return self._capture(images, K, depth_mirrored)

    def _capture(self, images: torch.Tensor, K: torch.Tensor, depth_mirrored: torch.Tensor | None) -> dict[str, Any]:
        self._static = {"images": images.clone(), "K": K.clone()}
        if depth_mirrored is not None:
            self._static["depth_mirrored"] = depth_mirrored.clone()
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            total, terms = self._forward(self.depth_model, self.pose_model, self._static["images"],
                                         self._static["K"], self.loss_config, amp=self.amp,
                                         channels_last=self.channels_last,
                                         depth_mirrored=self._static.get("depth_mirrored"),
                                         depth_input_frames=self.depth_input_frames)
            total.backward()
            self.optimizer.step()
        self._graph = graph
        self._static["terms"] = terms
        graph.replay()  # capture records the step without running it
        return terms
