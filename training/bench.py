"""Training throughput of the full objective on synthetic snippets (``sfm bench train``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from sfm_ros.models import DispNet, PoseExpNet
from training.losses import LossConfig, sfm_objective
from training.trainer import resolve_device

__all__ = ["bench_train"]


def bench_train(batch_sizes: list[int], steps: int = 20, height: int = 128, width: int = 416,
                device: str = "auto", fast: bool = True, warmup: int = 5) -> dict[str, Any]:
    """Images/s (target frames per second) of forward + objective + backward + Adam, 3 frames, mask on.

    fast: bf16 autocast + channels-last on CUDA (the maths of the loss stays fp32); otherwise fp32 eager.
    """
    from sfm_ros.bench import machine_description

    torch_device = resolve_device(device)
    on_cuda = torch_device.type == "cuda"
    results = []
    for batch in batch_sizes:
        torch.manual_seed(0)
        depth_net, pose_net = DispNet().to(torch_device), PoseExpNet(2, with_mask=True).to(torch_device)
        if fast and on_cuda:
            depth_net = depth_net.to(memory_format=torch.channels_last)
            pose_net = pose_net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam([*depth_net.parameters(), *pose_net.parameters()], lr=2e-4)
        images = torch.rand(batch, 3, 3, height, width, device=torch_device) * 2 - 1
        K = torch.tensor([[0.58 * width, 0, width / 2], [0, 1.92 * height, height / 2], [0, 0, 1]],
                         device=torch_device).expand(batch, 3, 3)
        config = LossConfig()
        times = []
        for step in range(warmup + steps):
            if on_cuda:
                torch.cuda.synchronize()
            tick = time.perf_counter()
            target, sources = images[:, 1], images[:, [0, 2]]
            with torch.autocast(torch_device.type, dtype=torch.bfloat16, enabled=fast and on_cuda):
                disparities = depth_net(target)
                poses, masks = pose_net(target, sources)
            total, _ = sfm_objective(target, sources, tuple(d.float() for d in disparities), poses.float(),
                                     tuple(m.float() for m in masks), K, config)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if on_cuda:
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - tick)
        median = float(np.median(times))
        results.append({"batch": batch, "step_ms_median": median * 1e3, "images_per_s": batch / median})
    return {"mode": "bf16+channels_last" if fast and on_cuda else "fp32 eager", "device": str(torch_device),
            "input": [height, width], "frames": 3, "mask": True, "steps": steps, "results": results,
            "machine": machine_description()}
