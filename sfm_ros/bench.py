"""Inference latency of depth + pose at batch 1 through a backend (medians; prints JSON via ``sfm bench``)."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.backends import make_backend

__all__ = ["bench_inference", "git_commit", "machine_description"]


def git_commit() -> str:
    """The source tree's commit for RESULTS.md (``git describe --always --dirty``: --dirty flags uncommitted edits), or
    'unknown' where the package is not in a git checkout (an installed wheel)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description() -> dict[str, Any]:
    """CPU, core count, the CPU kernels torch uses and (when torch sees one) the GPU, for RESULTS.md."""
    import os

    info: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
                            "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
        info["cpu"] = cpu_model
    except (OSError, StopIteration):
        pass
    try:
        import torch

        # The CPU kernels torch dispatches to (AVX2, AVX512...): they set the rounding, so a training run repeats
        # to the last digit only where this and the thread count are the same.
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def bench_inference(bundle: str | Path, backend: str = "auto", repeats: int = 30, device: str = "auto",
                    precision: str = "fp16", threads: int = 0, warmup: int = 5) -> dict[str, Any]:
    """Median and p90 latency (ms) of infer_depth, infer_pose and both, on random normalised inputs."""
    engine = make_backend(bundle, backend, device=device, precision=precision, threads=threads)
    meta = engine.metadata
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3 * meta.depth_input_frames, meta.height, meta.width), dtype=np.float32)
    target = np.ascontiguousarray(image[:, :3])
    sources = rng.standard_normal((1, meta.num_sources, 3, meta.height, meta.width), dtype=np.float32)
    for _ in range(warmup):
        engine.infer_depth(image)
        engine.infer_pose(target, sources)
    depth_ms, pose_ms = [], []
    for _ in range(repeats):
        tick = time.perf_counter()
        engine.infer_depth(image)
        mid = time.perf_counter()
        engine.infer_pose(target, sources)
        depth_ms.append((mid - tick) * 1e3)
        pose_ms.append((time.perf_counter() - mid) * 1e3)
    total = np.asarray(depth_ms) + np.asarray(pose_ms)
    return {"backend": engine.description, "input": [meta.height, meta.width], "repeats": repeats,
            "depth_ms_median": float(np.median(depth_ms)), "pose_ms_median": float(np.median(pose_ms)),
            "depth_pose_ms_median": float(np.median(total)), "depth_pose_ms_p90": float(np.percentile(total, 90)),
            "frames_per_s": float(1e3 / np.median(total)), "machine": machine_description()}
