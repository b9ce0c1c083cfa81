"""`make demo` on a reduced schedule: every step runs on the bundled sample and the report renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test.conftest import SAMPLE
from training.demo import run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    assert run_demo(output, steps=6, sample=SAMPLE, quiet=True) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["training"]["steps"] == 6
    assert report["replay"]["frames_out"] == 51
    assert set(report["depth"]["metrics"]) == {"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"}
    assert report["pose"]["snippet_ate"]["mean"] > 0
    # The rendered streets: depth against the exact depth, the node's trajectory against the true one.
    assert set(report["streets"]["depth"]["metrics"]) >= {"abs_rel", "a1"}
    assert report["streets"]["pose"]["num_poses"] == 60
    page = (output / "index.html").read_text()
    for image in ("streets/depth_grid.png", "streets/trajectory/trajectory_se3.png", "depth/depth_grid.png",
                  "replay/report/trajectory_sim3.png"):
        assert image in page and (output / image).stat().st_size > 10_000
    for name in ("depth.onnx", "pose.onnx", "depth_fp16.onnx", "sfm.json"):
        assert (output / "train" / "bundle" / name).is_file()
