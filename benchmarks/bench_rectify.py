"""What the node's ``rectify`` costs a frame: undistorting a raw image (``camera.Rectifier``, one OpenCV thread) at
common camera sizes, with a plumb_bob lens like KITTI's raw colour camera. Prints JSON: the one-off lookup maps and
the median per frame, in milliseconds.

Usage: python benchmarks/bench_rectify.py [--frames 100] [--sizes 1241x376 640x480 1280x720]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import git_commit
from sfm_ros.bench import machine_description
from sfm_ros.benchmarks.node_load import KITTI_RAW_LENS
from sfm_ros.camera import CameraModel, Rectifier


def time_size(width: int, height: int, frames: int) -> dict[str, float]:
    """Milliseconds to rectify a random width x height image: the first frame (it builds the maps) and the median of
    ``frames`` more."""
    K = np.array([[0.6 * width, 0.0, width / 2], [0.0, 0.6 * width, height / 2], [0.0, 0.0, 1.0]])
    camera = CameraModel(K=K, height=height, width=width, D=KITTI_RAW_LENS, K_raw=K)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rectifier = Rectifier()
    tick = time.perf_counter()
    rectifier(image, camera)
    maps_ms = (time.perf_counter() - tick) * 1e3
    per_frame = []
    for _ in range(frames):
        tick = time.perf_counter()
        rectifier(image, camera)
        per_frame.append((time.perf_counter() - tick) * 1e3)
    return {"size": f"{width}x{height}", "first_frame_ms": maps_ms, "median_ms": float(np.median(per_frame))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--sizes", nargs="+", default=["1241x376", "640x480", "1280x720"], help="WIDTHxHEIGHT")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    results = [time_size(width, height, args.frames) for width, height in sizes]
    print(json.dumps({"benchmark": "rectify", "results": results, "machine": machine_description(),
                      "commit": git_commit()}, indent=1))


if __name__ == "__main__":
    main()
