"""Training throughput (images/s) of the full objective at 128x416, 3 frames, mask on. Prints JSON.

Usage: python benchmarks/bench_train.py [--batch-sizes 4 32] [--steps 20] [--modes baseline fast ...]
baseline is the straightforward fp32 eager step of the reference figures; fast is bf16 autocast + channels-last +
one CUDA graph per step (what config/train_kitti.yaml turns on). See training/bench.py for all modes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import git_commit
from training.bench import SPEED_MODES, bench_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--modes", nargs="+", default=["baseline", "fast"], choices=list(SPEED_MODES))
    args = parser.parse_args()
    result = bench_train(args.batch_sizes, args.steps, args.height, args.width, args.device, tuple(args.modes),
                         args.rounds)
    print(json.dumps({"benchmark": "training step", "commit": git_commit(), **result}, indent=1))


if __name__ == "__main__":
    main()
