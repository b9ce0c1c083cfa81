"""Where a training step spends its GPU time: torch.profiler tables of the eager step (the kernels a CUDA graph
replays are the same). Prints the top kernels by device time per step.

Usage: python benchmarks/profile_train.py [--mode amp|amp-nchw|baseline] [--batch-sizes 4 32] [--rows 25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.bench import SPEED_MODES, build_step, synthetic_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--mode", default="amp", choices=[m for m, o in SPEED_MODES.items() if not o["cuda_graph"]],
                        help="an eager speed mode of training/bench.py (amp: bf16 + channels-last; "
                             "amp-nchw: without channels-last)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    device = torch.device("cuda")
    for batch in args.batch_sizes:
        step = build_step(args.mode, device)
        images, K = synthetic_batch(batch, 128, 416, device)
        for _ in range(5):
            step(images, K)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step(images, K)
            torch.cuda.synchronize()
        events = prof.key_averages()
        total_us = sum(e.self_device_time_total for e in events) / args.steps
        print(f"\n=== {args.mode}, batch {batch}: {total_us / 1e3:.2f} ms of kernels per step ===")
        rows = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[: args.rows]
        for event in rows:
            per_step = event.self_device_time_total / args.steps
            print(f"{per_step / 1e3:7.3f} ms {100 * per_step / total_us:5.1f}% x{event.count // args.steps:4d}  "
                  f"{event.key[:110]}")


if __name__ == "__main__":
    main()
