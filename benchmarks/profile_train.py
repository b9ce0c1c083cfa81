"""Where a training step spends its GPU time: torch.profiler tables of the eager step (the kernels a CUDA graph
replays are the same). Prints the top kernels and the top aten operators by device time.

Usage: python benchmarks/profile_train.py [--mode amp] [--batch-sizes 4 32] [--rows 25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfm_ros.models import DispNet, PoseExpNet
from training.losses import LossConfig
from training.step import TrainStep, make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    for batch in args.batch_sizes:
        torch.manual_seed(0)
        depth_net, pose_net = DispNet().to(device), PoseExpNet(2, with_mask=True).to(device)
        if args.channels_last:
            depth_net = depth_net.to(memory_format=torch.channels_last)
            pose_net = pose_net.to(memory_format=torch.channels_last)
        optimizer = make_optimizer([*depth_net.parameters(), *pose_net.parameters()], device, lr=2e-4,
                                   betas=(0.9, 0.999))
        step = TrainStep(depth_net, pose_net, optimizer, LossConfig(), device, amp=args.amp,
                         channels_last=args.channels_last)
        images = torch.randint(0, 256, (batch, 3, 3, 128, 416), dtype=torch.uint8, device=device)
        K = torch.tensor([[241.0, 0, 208], [0, 246, 64], [0, 0, 1]], device=device).expand(batch, 3, 3)
        for _ in range(5):
            step(images, K)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step(images, K)
            torch.cuda.synchronize()
        events = prof.key_averages()
        total_us = sum(e.self_device_time_total for e in events) / args.steps
        print(f"\n=== batch {batch}: {total_us / 1e3:.2f} ms of kernels per step ===")
        rows = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[: args.rows]
        for event in rows:
            per_step = event.self_device_time_total / args.steps
            print(f"{per_step / 1e3:7.3f} ms {100 * per_step / total_us:5.1f}% x{event.count // args.steps:4d}  "
                  f"{event.key[:110]}")


if __name__ == "__main__":
    main()
