"""Training data throughput (snippets/s) from a prepared cache, with the default recipe's augmentation
(`sfm bench data`).

A GPU step at batch 32 takes about 2300 snippets/s on an H100 (RESULTS.md); this says how many DataLoader
workers feed that on a given machine. Prints JSON.

Usage: python benchmarks/bench_data.py [--cache DIR] [--workers 0 2 4] [--batch 16] [--epochs 20]
Without --cache it prepares one from the bundled sample at 128x416.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, git_commit
from training.bench import bench_data
from training.config import load_train_config
from training.data import prepare_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="a cache from `sfm prepare cache` (default: the bundled sample)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    cache = args.cache
    if cache is None:
        config = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"), ["data.height=128", "data.width=416"])
        cache = prepare_cache(config.data, Path(tempfile.mkdtemp()) / "cache", progress=False)
    print(json.dumps({**bench_data(cache, args.workers, args.batch, args.epochs), "commit": git_commit()}, indent=1))


if __name__ == "__main__":
    main()
