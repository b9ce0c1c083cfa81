"""Every command ends with one line naming the problem and the fix (exit code 2), never a traceback: the CLI's
commands and `sfm_node` (a real rclpy process) on a missing, empty or broken bundle."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sfm_ros.cli import main
from test.conftest import DRIVE_0060, REPO


def test_replay_without_a_bundle_says_how_to_give_one(odometry_bag: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("sfm:\n  ros__parameters:\n    publish_tf: true\n")
    assert main(["replay", str(odometry_bag), "--output", str(tmp_path / "out"), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfm replay: error: no model bundle: give --bundle BUNDLE") and err.count("\n") == 1


def test_metric_depth_without_any_scale_is_a_message(small_bundle: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Random weights predict a nearly constant depth: no frame's ground plane lies within 30 deg of the camera's
    # down axis, so no frame gets a scale.
    assert main(["eval", "depth", "--bundle", str(small_bundle), "--drive", str(DRIVE_0060), "--metric-scale",
                 "--output", str(tmp_path / "depth"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfm eval: error: metric scale failed on all 20 images") and "--camera-height" in err


def test_an_unloadable_onnx_file_is_a_message(small_bundle: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from sfm_ros.bundle import sha256_file

    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle, copy)
    (copy / "depth.onnx").write_bytes(b"not a model")
    metadata = json.loads((copy / "sfm.json").read_text())
    metadata["onnx"]["depth"]["sha256"] = sha256_file(copy / "depth.onnx")  # consistent, but not a model
    (copy / "sfm.json").write_text(json.dumps(metadata))
    assert main(["bench", "inference", "--bundle", str(copy), "--backend", "onnxruntime", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime cannot load" in err and "depth.onnx" in err and "re-export the bundle" in err


NODE = "import sys; from sfm_ros.node import main; main(sys.argv[1:])"


@pytest.mark.rclpy
@pytest.mark.skipif(importlib.util.find_spec("rclpy") is None, reason="rclpy is not installed")
@pytest.mark.parametrize(("bundle", "expected"), [
    ("", "pipeline.bundle is empty: give the model bundle folder"),
    ("missing", "does not exist"),
    ("broken", "is not valid JSON"),
    ("unexported", "has no exported depth model: run `sfm export"),
])
def test_sfm_node_with_a_bad_bundle_exits_2_with_one_line(small_bundle: Path, tmp_path: Path, bundle: str,
                                                          expected: str) -> None:
    path = {"": "''", "missing": str(tmp_path / "missing")}.get(bundle, str(tmp_path / bundle))  # YAML '': empty
    if bundle in ("broken", "unexported"):
        shutil.copytree(small_bundle, path)
        metadata = json.loads((Path(path) / "sfm.json").read_text())
        if bundle == "broken":
            (Path(path) / "sfm.json").write_text(json.dumps(metadata)[:-20])
        else:
            metadata["onnx"] = {}
            (Path(path) / "sfm.json").write_text(json.dumps(metadata))
    result = subprocess.run(
        [sys.executable, "-c", NODE, "--ros-args", "-p", f"pipeline.bundle:={path}", "-p", "publish_tf:=false",
         "-p", "lookup_extrinsic_from_tf:=false", "-p", "pipeline.backend:=onnxruntime"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and expected in output, output
    assert len([line for line in output.splitlines() if "FATAL" in line]) == 1, output
