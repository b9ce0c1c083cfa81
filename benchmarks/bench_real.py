"""With a short real recording, which start gives the better model? The learning benchmark's real-video track.

The same command as ``sfm bench real`` (see --help). Trains on KITTI 00 frames 0-149 (written as an image folder with
intrinsics.yaml, read through the training cache as a user's recording is) from scratch and from a rendered-streets
bundle (fine-tuned, as ``sfm train --init-from``), and scores those two and the bundle alone on frames none trained
on: 5-frame snippet ATE on 00 frames 150-199 and 06 frames 0-50, Eigen depth against the LiDAR of raw drive
2011_09_26_0060, beside constant forward motion and one constant depth. Every start runs at the bundle's input size.
Prints JSON (and a Markdown table on stderr); writes real.json and one record per (start, seed) under --output, which
a rerun reuses.

Example:
  python benchmarks/bench_real.py --bundle runs/bench_learning/work/runs/defaults_seed0/bundle --steps 2000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfm_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "real", *sys.argv[1:]]))
