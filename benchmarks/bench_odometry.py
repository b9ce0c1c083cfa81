"""What a robot gets from the run-time Pipeline: metric odometry and depth against exact truth (prints JSON).

The same command as ``sfm bench odometry`` (see --help): every held-out rendered street and the given KITTI odometry
sequences through the node's pipeline with its own metric scale; SE(3)/Sim(3) ATE, RPE, end-point drift, step-length
ratio, metric depth abs_rel, healthy-scale share, per-stage latency; plots under --output.

Example:
  python benchmarks/bench_odometry.py --bundle runs/streets/bundle --kitti test/data/kitti_odometry/sequences/06
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfm_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "odometry", *sys.argv[1:]]))
