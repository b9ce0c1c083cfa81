"""The node's load without ROS: frames offered at a camera's rate to the node's worker (the newest frame wins) running
the pipeline, for minutes. Reports the processed rate, latency percentiles, each stage's median time, and resident
memory over time (it must stay flat). ``sfm bench node`` runs it; with the node's ``rectify`` the worker undistorts
each frame first, as the node's does, through a lens like KITTI's raw colour camera (``KITTI_RAW_LENS``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sfm_ros.camera import CameraModel, Rectifier
from sfm_ros.config import ConfigError
from sfm_ros.odometry.pipeline import Pipeline
from sfm_ros.worker import LatestFrameWorker

__all__ = ["KITTI_RAW_LENS", "MEMORY_EVERY_S", "as_raw", "bench_node_load", "resident_mb"]

# How often resident memory is sampled: often enough to see a leak's slope within a few minutes.
MEMORY_EVERY_S = 10.0
# About KITTI's raw colour camera's lens (plumb_bob k1 k2 p1 p2 k3): what rectify undistorts in the benchmarks.
KITTI_RAW_LENS = (-0.37, 0.20, 1e-3, -5e-4, -0.07)
# How long the worker may take to finish the last frame after the offers stop.
DRAIN_TIMEOUT_S = 30.0


def resident_mb() -> float:
    """This process's resident memory (MiB) from /proc, or NaN where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def as_raw(frames: list[np.ndarray], camera: CameraModel) -> list[np.ndarray]:
    """Rectified frames (uint8 [H,W,3] seen through ``camera.K``) as ``camera``'s raw lens (D, K_raw, R) would have
    recorded them: each raw pixel samples the rectified frame where OpenCV's undistortPoints puts it, so that
    ``Rectifier`` gives back the frames (up to two interpolations, black beyond the raw view)."""
    pixels = np.stack(np.meshgrid(np.arange(camera.width), np.arange(camera.height)), axis=-1)
    rectified_at = cv2.undistortPoints(pixels.reshape(-1, 1, 2).astype(np.float64), camera.K_raw,
                                       np.asarray(camera.D, dtype=np.float64), R=camera.R, P=camera.K)
    map_x, map_y = (rectified_at.reshape(camera.height, camera.width, 2).astype(np.float32).transpose(2, 0, 1))
    return [cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR) for frame in frames]


def bench_node_load(pipeline: Pipeline, frames: list[np.ndarray], camera: CameraModel, minutes: float,
                    rate_hz: float, progress: bool = False, rectify: bool = False) -> dict[str, Any]:
    """Offer ``frames`` (uint8 [H,W,3] of ``camera``'s size, looped) at ``rate_hz`` for ``minutes`` to a
    ``LatestFrameWorker`` that runs ``pipeline``; each frame's stamp is the time it was offered. With ``rectify`` the
    worker first undistorts each frame with ``camera``'s lens (``Rectifier``), as the node's does, and times it as the
    stage 'rectify'. Returns the offered, processed and dropped counts, the processed rate, offer-to-result latency
    percentiles (ms, waiting included), each stage's median (ms), the worker's errors by kind, and the
    resident-memory timeline [(s, MiB)]."""
    if not frames:
        raise ConfigError("no frames to offer")
    if minutes <= 0 or rate_hz <= 0:
        raise ConfigError(f"--minutes and --rate must be positive, got {minutes} and {rate_hz}")
    latencies: list[float] = []
    stage_timings: dict[str, list[float]] = {}

    rectifier = Rectifier()

    def handle(item: tuple[int, np.ndarray]) -> None:
        offered, rgb = item
        if rectify:
            tick = time.perf_counter_ns()
            rgb = rectifier(rgb, camera)
            stage_timings.setdefault("rectify", []).append((time.perf_counter_ns() - tick) / 1e6)
        estimate = pipeline.process(offered, rgb, camera)
        for stage, milliseconds in estimate.timings_ms.items():
            stage_timings.setdefault(stage, []).append(milliseconds)
        latencies.append((time.perf_counter_ns() - offered) / 1e6)

    worker = LatestFrameWorker(handle)
    seconds = minutes * 60
    period = 1.0 / rate_hz
    memory: list[tuple[float, float]] = []
    bar = None
    if progress:  # tqdm only where asked: a robot's run-time install need not have it
        from tqdm import tqdm

        bar = tqdm(total=round(seconds), desc="node load", unit="s")
    start = next_memory = time.perf_counter()
    offered = 0
    while time.perf_counter() - start < seconds:
        worker.submit((time.perf_counter_ns(), frames[offered % len(frames)]))
        offered += 1
        now = time.perf_counter()
        if now >= next_memory:
            memory.append((round(now - start, 1), round(resident_mb(), 1)))
            next_memory += MEMORY_EVERY_S
        if bar is not None:
            bar.update(round(now - start) - bar.n)
        time.sleep(max(0.0, start + offered * period - time.perf_counter()))
    if bar is not None:
        bar.close()
    worker.wait_idle(DRAIN_TIMEOUT_S)
    worker.stop()
    values = np.asarray(latencies) if latencies else np.full(1, np.nan)
    half = len(memory) // 2
    return {
        "offered_hz": rate_hz, "seconds": seconds, "offered": worker.submitted, "processed": worker.processed,
        "dropped": worker.dropped, "processed_hz": worker.processed / seconds, "errors": dict(worker.errors),
        "latency_ms": {name: float(np.percentile(values, q)) for name, q in (("p50", 50), ("p90", 90), ("p99", 99))},
        "stage_median_ms": {stage: float(np.median(v)) for stage, v in stage_timings.items()},
        "rss_mb_first_half_max": max(m for _, m in memory[:max(half, 1)]),
        "rss_mb_second_half_max": max(m for _, m in memory[half:]) if memory[half:] else None,
        "rss_mb_timeline": memory,
    }
