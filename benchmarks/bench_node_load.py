"""Node-level load test without ROS: real KITTI frames offered at 30 Hz to the node's worker (newest frame wins)
running the pipeline, for several minutes. Reports latency percentiles, processed/dropped frames, and resident
memory over time (it must stay flat). Prints JSON.

Usage: python benchmarks/bench_node_load.py [--minutes 3] [--rate 30] [--backend onnxruntime] [--precision int8]
       [--odometry chain|frame_to_frame|keyframes] [--no-ground-motion] [--ground-plane mounting|fit]
       [--side-slip-sigma S] [--alignment-depth-sigma S] [--bundle B]; the odometry's defaults are the node's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, git_commit, random_bundle, with_int8
from sfm_ros import kitti
from sfm_ros.bench import machine_description
from sfm_ros.camera import CameraModel
from sfm_ros.config import ODOMETRY_MODES, PipelineConfig, ScaleConfig
from sfm_ros.odometry.pipeline import Pipeline
from sfm_ros.worker import LatestFrameWorker


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32", help="int8: quantise the bundle with the sample bag first")
    parser.add_argument("--bundle")
    parser.add_argument("--odometry", default=PipelineConfig().odometry, choices=ODOMETRY_MODES,
                        help="how a frame's pose is found (pipeline.odometry; default: the node's)")
    parser.add_argument("--ground-motion", action=argparse.BooleanOptionalAction, default=ScaleConfig().ground_motion,
                        help="each step's length measured on the ground (scale.ground_motion; default: the node's)")
    parser.add_argument("--ground-plane", default=ScaleConfig().ground_plane, choices=("mounting", "fit"),
                        help="the camera-height scale's ground plane (scale.ground_plane; default: the node's)")
    parser.add_argument("--side-slip-sigma", type=float, default=PipelineConfig().side_slip_sigma,
                        help="the alignments' side-slip prior (pipeline.side_slip_sigma; 0: off)")
    parser.add_argument("--alignment-depth-sigma", type=float, default=PipelineConfig().alignment_depth_sigma,
                        help="the predicted depth's relative error in the alignments (pipeline.alignment_depth_sigma; "
                             "0: off)")
    args = parser.parse_args()
    scratch = Path(tempfile.gettempdir())
    bundle = Path(args.bundle) if args.bundle else random_bundle(scratch / "sfm_bench_bundle")
    if args.precision == "int8":
        with_int8(bundle, scratch)
    sequence = kitti.kitti_odometry_sequence(REPO / "test" / "data" / "kitti_odometry" / "sequences" / "06")
    frames = [kitti.load_rgb(p) for p in sequence.image_paths]
    camera = CameraModel(K=sequence.K, height=sequence.size[0], width=sequence.size[1])
    pipeline = Pipeline(PipelineConfig(bundle=str(bundle), backend=args.backend, precision=args.precision,
                                       max_frame_gap_s=5.0, odometry=args.odometry,
                                       side_slip_sigma=args.side_slip_sigma,
                                       alignment_depth_sigma=args.alignment_depth_sigma),
                        ScaleConfig(source="camera_height", ground_motion=args.ground_motion,
                                    ground_plane=args.ground_plane))
    latencies: list[float] = []
    stage_timings: dict[str, list[float]] = {}

    def handle(item: tuple[int, np.ndarray]) -> None:
        offered, rgb = item
        estimate = pipeline.process(offered, rgb, camera)
        for stage, milliseconds in estimate.timings_ms.items():
            stage_timings.setdefault(stage, []).append(milliseconds)
        latencies.append((time.perf_counter_ns() - offered) / 1e6)  # offer -> result, including waiting

    worker = LatestFrameWorker(handle)
    period = 1.0 / args.rate
    start = time.perf_counter()
    memory = []
    next_memory = start
    i = 0
    while time.perf_counter() - start < args.minutes * 60:
        worker.submit((time.perf_counter_ns(), frames[i % len(frames)]))
        i += 1
        now = time.perf_counter()
        if now >= next_memory:
            memory.append((round(now - start, 1), round(resident_mb(), 1)))
            next_memory += 10.0
        time.sleep(max(0.0, start + i * period - time.perf_counter()))
    worker.wait_idle(30)
    worker.stop()
    values = np.asarray(latencies)
    half = len(memory) // 2
    print(json.dumps({
        "benchmark": "node load (worker + pipeline), KITTI 1226x370 frames", "commit": git_commit(),
        "backend": pipeline.backend.description, "odometry": args.odometry,
        "ground_motion": args.ground_motion, "ground_plane": args.ground_plane,
        "side_slip_sigma": args.side_slip_sigma,
        "alignment_depth_sigma": args.alignment_depth_sigma,
        "offered_hz": args.rate, "seconds": args.minutes * 60,
        "offered": worker.submitted, "processed": worker.processed, "dropped": worker.dropped,
        "processed_hz": worker.processed / (args.minutes * 60), "errors": dict(worker.errors),
        "latency_ms": {p: float(np.percentile(values, q)) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))},
        "stage_median_ms": {stage: float(np.median(v)) for stage, v in stage_timings.items()},
        "rss_mb_first_half_max": max(m for _, m in memory[:max(half, 1)]),
        "rss_mb_second_half_max": max(m for _, m in memory[half:]) if memory[half:] else None,
        "rss_mb_timeline": memory, "machine": machine_description()}, indent=1))


if __name__ == "__main__":
    main()
