"""Node-level load test without ROS (`sfm bench node`): real KITTI frames offered at 30 Hz to the node's worker
(newest frame wins) running the pipeline, for several minutes. Reports latency percentiles, processed/dropped
frames, and resident memory over time (it must stay flat). Prints JSON.

Without --bundle it exports randomly initialised paper-size networks (latency does not depend on the weights); with
--precision int8 it quantises the bundle on the sample bag first. The odometry runs with the node's defaults;
--set KEY=VALUE changes one (e.g. pipeline.odometry=chain).

Usage: python benchmarks/bench_node_load.py [--minutes 3] [--rate 30] [--backend onnxruntime] [--precision int8]
       [--bundle B] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import random_bundle, with_int8
from sfm_ros.cli import main as sfm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32", help="int8: quantise the bundle with the sample bag first")
    parser.add_argument("--bundle")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a node parameter")
    args = parser.parse_args()
    scratch = Path(tempfile.gettempdir())
    bundle = Path(args.bundle) if args.bundle else random_bundle(scratch / "sfm_bench_bundle")
    if args.precision == "int8":
        with_int8(bundle, scratch)
    # A machine too slow for the offered rate leaves gaps between the frames it takes: measured on its rate, not on
    # tracking restarts.
    overrides = [f"pipeline.precision={args.precision}", "pipeline.max_frame_gap_s=5.0", *args.set]
    command = ["bench", "node", "--bundle", str(bundle), "--backend", args.backend, "--minutes", str(args.minutes),
               "--rate", str(args.rate), "--quiet"]
    sys.exit(sfm([*command, *(item for override in overrides for item in ("--set", override))]))


if __name__ == "__main__":
    main()
