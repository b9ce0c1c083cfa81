"""The odometry benchmark: drift by hand, and the node's pipeline over the bundled streets and KITTI sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test.conftest import ODOMETRY_06, REPO
from training.odometry_bench import drift_curve


def test_drift_curve_by_hand() -> None:
    gt = np.tile(np.eye(4), (4, 1, 1))
    gt[:, 2, 3] = [0.0, 1.0, 2.0, 3.0]  # 1 m forward a frame
    est = gt.copy()
    est[:, 0, 3] = [0.0, 0.1, 0.2, 0.4]  # creeping sideways
    shifted = np.eye(4)
    shifted[:3, 3] = [5.0, -2.0, 7.0]  # a different world origin changes nothing: both start from their first pose
    distance, error = drift_curve(shifted @ gt, est)
    np.testing.assert_allclose(distance, [0, 1, 2, 3])
    np.testing.assert_allclose(error, [0, 0.1, 0.2, 0.4])


def test_the_benchmark_runs_the_nodes_pipeline_on_every_sequence(small_bundle: Path, tmp_path: Path) -> None:
    from sfm_ros.cli import main

    assert main(["bench", "odometry", "--bundle", str(small_bundle), "--backend", "onnxruntime", "--data",
                 str(REPO / "test" / "data" / "synth_streets"), "--kitti", str(ODOMETRY_06), "--output",
                 str(tmp_path), "--quiet", "--params", str(REPO / "config" / "sfm.yaml")]) == 0
    street = json.loads((tmp_path / "street_00" / "report.json").read_text())
    assert street["num_poses"] == 60
    for image in ("drift.png", "street_00/trajectory_se3.png", "odometry_06_0/trajectory_se3.png"):
        assert (tmp_path / image).stat().st_size > 10_000


def test_the_benchmark_reports_the_figures_the_issue_asks_for(small_bundle: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from sfm_ros.cli import main

    assert main(["bench", "odometry", "--bundle", str(small_bundle), "--backend", "onnxruntime", "--no-streets",
                 "--kitti", str(ODOMETRY_06), "--output", str(tmp_path), "--quiet", "--scale-source",
                 "camera_height"]) == 0
    result = json.loads(capsys.readouterr().out)
    (sequence,) = result["sequences"]
    for key in ("ate_se3_m", "ate_sim3_m", "rpe_trans_m_per_frame", "end_point_drift_percent",
                "step_length_ratio_median", "healthy_scale_share", "latency_ms_median"):
        assert key in sequence, key
    assert set(sequence["latency_ms_median"]) == {"preprocess", "depth", "pose", "scale", "refine", "total"}
    assert sequence["frames"] == 51 and 55 < sequence["distance_m"] < 65  # sequence 06 drives ~1.2 m a frame
    assert "commit" in result and result["overall"]["ate_se3_m"] == sequence["ate_se3_m"]
