"""Per-frame depth + pose latency at 128x416, batch 1, for each backend variant asked for. Prints JSON.

Usage: python benchmarks/bench_inference.py [--variants onnxruntime onnxruntime:int8 torch] [--rounds 5]

A variant is BACKEND[:PRECISION][@GRAPH]: GRAPH is the export form, ``restructured`` (default, what `sfm export`
writes) or ``as-trained`` (`--as-trained-graph`); ``:int8`` quantises the export with frames of the repository's
KITTI sample bag, and ``:int8-transposed`` does so keeping the transposed convolutions in fp32
(`sfm quantize --keep-transposed-convs`). Each variant runs in a fresh process per round, and the rounds interleave the
variants, so drift in a shared machine's speed spreads over all of them; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, git_commit, random_bundle, with_int8

# A fresh process per run: torch's OpenMP workers keep spinning after the export and would steal the cores from
# onnxruntime (measured: about 2x slower), which no deployed node suffers.
RUN_ONE = """
import json, sys
from sfm_ros.bench import bench_inference
args = sys.argv[1:]
print(json.dumps(bench_inference(args[0], args[1], int(args[2]), args[3], args[4], int(args[5]))))
"""
FIGURES = ("depth_ms_median", "pose_ms_median", "depth_pose_ms_median", "depth_pose_ms_p90")


def parse_variant(text: str, default_precision: str) -> tuple[str, str, str]:
    """'onnxruntime:int8@as-trained' -> ('onnxruntime', 'int8', 'as-trained').

    ``int8-transposed`` comes back as precision 'int8' on the graph 'restructured+transposed' (its own bundle).
    """
    name, _, graph = text.partition("@")
    backend, _, precision = name.partition(":")
    graph = graph or "restructured"
    if graph not in ("restructured", "as-trained"):
        raise SystemExit(f"variant {text!r}: graph must be 'restructured' or 'as-trained'")
    if precision == "int8-transposed":
        return backend, "int8", f"{graph}+transposed"
    return backend, precision or default_precision, graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", "--backends", nargs="+", default=["onnxruntime", "torch"],
                        help="BACKEND[:PRECISION][@GRAPH], e.g. onnxruntime@as-trained onnxruntime:int8 torch")
    parser.add_argument("--bundle", help="an exported bundle (default: random paper-size networks)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=30, help="frames timed per variant per round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp16", help="precision of variants that name none")
    args = parser.parse_args()
    variants = [parse_variant(v, args.precision) for v in args.variants]
    scratch = Path(tempfile.gettempdir())
    bundles = {}
    for _, precision, graph in variants:
        export_form, _, transposed = graph.partition("+")
        if args.bundle:
            bundles[graph] = Path(args.bundle)
        elif graph not in bundles:
            bundles[graph] = random_bundle(scratch / f"sfm_bench_bundle_{graph}",
                                           restructure=export_form == "restructured")
        if precision == "int8":
            with_int8(bundles[graph], scratch, polyphase=not transposed)
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for text, (backend, precision, graph) in zip(args.variants, variants, strict=True):
            command = [sys.executable, "-c", RUN_ONE, str(bundles[graph]), backend, str(args.repeats), args.device,
                       precision, str(args.threads)]
            output = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
            runs[text].append(json.loads(output.strip().splitlines()[-1]))
    results = []
    for text, (_, _, graph) in zip(args.variants, variants, strict=True):
        rounds = runs[text]
        summary = {"variant": text, "backend": rounds[0]["backend"], "graph": graph, "input": rounds[0]["input"],
                   "repeats": args.repeats, "rounds": args.rounds, "machine": rounds[0]["machine"]}
        for figure in FIGURES:
            values = [r[figure] for r in rounds]
            summary[figure] = float(np.median(values))
            summary[figure.replace("median", "rounds").replace("p90", "p90_rounds")] = values
        summary["frames_per_s"] = 1e3 / summary["depth_pose_ms_median"]
        results.append(summary)
    print(json.dumps({"benchmark": "inference depth+pose, batch 1", "commit": git_commit(), "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
