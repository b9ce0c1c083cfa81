"""Training throughput of the full objective through the trainer's own step (``sfm bench train``), and of the
augmented snippets the DataLoader feeds it (``sfm bench data``).

Synthetic uint8 snippets (random pixels: the cost of a step does not depend on them) wait in pinned host
memory, as the DataLoader leaves them, and each step copies its batch in, so the figure includes the transfer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfm_ros.models import DispNet, PoseExpNet
from training.losses import LossConfig
from training.step import TrainStep, make_optimizer
from training.trainer import resolve_device

__all__ = ["SPEED_MODES", "bench_data", "bench_train", "build_step", "synthetic_batch"]

# name -> speed options. "baseline" is the straightforward PyTorch step of the reference figures: fp32 eager,
# default (foreach) Adam. "fast" is what config/train_kitti.yaml turns on.
SPEED_MODES: dict[str, dict[str, Any]] = {
    "baseline": {"amp": False, "channels_last": False, "cuda_graph": False, "compile": "none"},
    "amp": {"amp": True, "channels_last": True, "cuda_graph": False, "compile": "none"},
    "amp-nchw": {"amp": True, "channels_last": False, "cuda_graph": False, "compile": "none"},
    "fp32-graph": {"amp": False, "channels_last": False, "cuda_graph": True, "compile": "none"},
    "bf16-graph": {"amp": True, "channels_last": False, "cuda_graph": True, "compile": "none"},
    "graph": {"amp": True, "channels_last": True, "cuda_graph": True, "compile": "none"},
    "compile-networks-graph": {"amp": True, "channels_last": True, "cuda_graph": True, "compile": "networks"},
    "fast": {"amp": True, "channels_last": True, "cuda_graph": True, "compile": "objective"},
}


def build_step(mode: str, device: torch.device) -> TrainStep:
    """Paper-size networks (seed 0), Adam and the TrainStep of one speed mode; sets cuDNN's autotuner for it."""
    options = SPEED_MODES[mode]
    on_cuda = device.type == "cuda"
    # cuDNN's autotuner picks the fastest convolution algorithms (same maths); the reference step has it off.
    torch.backends.cudnn.benchmark = mode != "baseline"
    torch.manual_seed(0)
    depth_net, pose_net = DispNet().to(device), PoseExpNet(2, with_mask=True).to(device)
    if options["channels_last"] and on_cuda:
        depth_net = depth_net.to(memory_format=torch.channels_last)
        pose_net = pose_net.to(memory_format=torch.channels_last)
    parameters = [*depth_net.parameters(), *pose_net.parameters()]
    if mode == "baseline":
        optimizer = torch.optim.Adam(parameters, lr=2e-4, betas=(0.9, 0.999))
    else:
        optimizer = make_optimizer(parameters, device, lr=2e-4, betas=(0.9, 0.999), cuda_graph=options["cuda_graph"])
    depth_model, pose_model = depth_net, pose_net
    if options["compile"] == "networks" and on_cuda:
        depth_model, pose_model = torch.compile(depth_net), torch.compile(pose_net)
    return TrainStep(depth_model, pose_model, optimizer, LossConfig(), device, amp=options["amp"],
                     channels_last=options["channels_last"], cuda_graph=options["cuda_graph"],
                     compile_objective=options["compile"] == "objective")


def synthetic_batch(batch: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 snippets [B,3,3,H,W] and KITTI-like K [B,3,3], pinned on the host when training on CUDA."""
    images = torch.randint(0, 256, (batch, 3, 3, height, width), dtype=torch.uint8)
    K = torch.tensor([[0.58 * width, 0, width / 2], [0, 1.92 * height, height / 2], [0, 0, 1]]).expand(batch, 3, 3)
    if device.type == "cuda":
        return images.pin_memory(), K.contiguous().pin_memory()
    return images, K.contiguous()


def _bench_one(mode: str, batch: int, steps: int, rounds: int, height: int, width: int,
               device: torch.device) -> dict[str, Any]:
    options = SPEED_MODES[mode]
    on_cuda = device.type == "cuda"
    step = build_step(mode, device)
    images, K = synthetic_batch(batch, height, width, device)
    synchronize = torch.cuda.synchronize if on_cuda else (lambda: None)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    tick = time.perf_counter()
    for _ in range(step.warmup + 3):  # eager warm-up, capture, and a replay or two
        terms = step(images, K)
    synchronize()
    warmup_s = time.perf_counter() - tick
    round_s = []
    for _ in range(rounds):
        tick = time.perf_counter()
        for _ in range(steps):
            terms = step(images, K)
        synchronize()
        round_s.append(time.perf_counter() - tick)
    loss = float(terms["total"])
    if not np.isfinite(loss):
        raise RuntimeError(f"{mode} at batch {batch}: the loss is {loss}")
    step_s = float(np.median(round_s)) / steps
    networks_compiled = options["compile"] == "networks" and on_cuda
    result = {"mode": mode, "path": step.describe() + (" (networks compiled)" if networks_compiled else ""),
              "batch": batch, "step_ms_median": step_s * 1e3, "images_per_s": batch / step_s,
              "warmup_s": warmup_s, "loss": loss}
    if on_cuda:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def bench_train(batch_sizes: list[int], steps: int = 20, height: int = 128, width: int = 416,
                device: str = "auto", modes: tuple[str, ...] = ("baseline", "fast"),
                rounds: int = 3) -> dict[str, Any]:
    """Images/s (target frames per second) of forward + objective + backward + Adam, 3 frames, mask on.

    Each (mode, batch) runs its warm-up, then ``rounds`` rounds of ``steps`` steps with one synchronisation per
    round; the median round gives the figure. A mode that fails is reported with its error, not skipped.
    """
    from sfm_ros.bench import machine_description

    unknown = set(modes) - set(SPEED_MODES)
    if unknown:
        raise ValueError(f"unknown speed modes {sorted(unknown)}; choose from {list(SPEED_MODES)}")
    torch_device = resolve_device(device)
    results = []
    for mode in modes:
        for batch in batch_sizes:
            try:
                results.append(_bench_one(mode, batch, steps, rounds, height, width, torch_device))
            except Exception as exc:  # one failing mode must not hide the others' figures
                results.append({"mode": mode, "batch": batch, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            finally:
                torch.compiler.reset()
                if torch_device.type == "cuda":
                    torch.cuda.empty_cache()
    return {"device": str(torch_device), "torch": torch.__version__, "input": [height, width], "frames": 3,
            "mask": True, "steps": steps, "rounds": rounds, "results": results, "machine": machine_description()}


def bench_data(cache_dir: str | Path, workers: list[int], batch: int = 16, epochs: int = 20) -> dict[str, Any]:
    """Augmented training snippets/s from a prepared cache through the DataLoader, per worker count: the default
    recipe's augmentation (training/config.py's DataConfig), reading the cache as a training run does."""
    from torch.utils.data import DataLoader

    from sfm_ros.bench import machine_description
    from training.config import DataConfig
    from training.data import DataError, SnippetDataset

    data = DataConfig()
    dataset = SnippetDataset(cache_dir, "train", data.sequence_length, data.augment, data.scale_crop_max, seed=0,
                             flip=data.flip, frame_strides=data.frame_strides, flip_depth=data.flip_depth,
                             colour_augment=data.colour_augment)
    if len(dataset) < batch:
        raise DataError(f"{len(dataset)} training snippets in {cache_dir} are fewer than one batch of {batch}")
    results = []
    for count in workers:
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=count, drop_last=True,
                            persistent_workers=count > 0)
        seen, tick = 0, time.perf_counter()
        for _ in range(epochs):
            for snippets in loader:
                seen += snippets["images"].shape[0]
        results.append({"workers": count, "snippets_per_s": seen / (time.perf_counter() - tick)})
    return {"benchmark": "training data", "cache": str(cache_dir), "snippets": len(dataset),
            "input": list(dataset[0]["images"].shape[-2:]), "batch": batch, "epochs": epochs, "results": results,
            "machine": machine_description()}
