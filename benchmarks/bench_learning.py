"""Does a training recipe learn? Train on rendered streets, score depth and motion against their exact truth.

The same command as ``sfm bench learning`` (see --help). Each variant (a preset plus overrides) trains for --steps on
synth_streets' training streets, read as image folders through the same cache a recorded drive takes, and is
evaluated on the held-out streets every --eval-every steps: depth abs_rel, sq_rel, rmse, a1 (median-scaled, cap
80 m, pixels with a surface) and the 5-frame snippet ATE, beside the constant-depth and constant-forward baselines.
Prints JSON (and a Markdown table on stderr); writes learning.json, learning_curves.png and one record per
(variant, seed) under --output, which a rerun reuses.

Examples:
  python benchmarks/bench_learning.py --steps 1000                       # the default recipe
  python benchmarks/bench_learning.py --config config/train_paper.yaml --steps 3000 --seeds 0 1 2
  python benchmarks/bench_learning.py --variants benchmarks/learning_ablation.yaml --seeds 0 1 2 --steps 3000
Size: 64x208 on a CPU, 128x416 with CUDA (the paper's), unless --height/--width say otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfm_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "learning", *sys.argv[1:]]))
