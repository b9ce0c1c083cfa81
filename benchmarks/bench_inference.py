"""Per-frame depth + pose latency at 128x416, batch 1, for each backend available here. Prints JSON.

Usage: python benchmarks/bench_inference.py [--backends onnxruntime torch] [--threads 2] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, git_commit, random_bundle

# Each backend is timed in a fresh process: torch's OpenMP workers keep spinning after the export and would
# steal the cores from onnxruntime (measured: about 2x slower), which no deployed node suffers.
RUN_ONE = """
import json, sys
from sfm_ros.bench import bench_inference
args = sys.argv[1:]
print(json.dumps(bench_inference(args[0], args[1], int(args[2]), args[3], args[4], int(args[5]))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--bundle", help="an exported bundle (default: random paper-size networks)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp16")
    args = parser.parse_args()
    bundle = Path(args.bundle) if args.bundle else random_bundle(Path(tempfile.gettempdir()) / "sfm_bench_bundle")
    results = []
    for name in args.backends:
        command = [sys.executable, "-c", RUN_ONE, str(bundle), name, str(args.repeats), args.device, args.precision,
                   str(args.threads)]
        output = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "inference depth+pose, batch 1", "commit": git_commit(), "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
