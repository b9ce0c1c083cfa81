"""`sfm` sub-commands end to end on the bundled sample and ../shared/data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sfm_ros import kitti
from sfm_ros.cli import main
from sfm_ros.evaluate import EvaluationError, read_tum, write_tum
from test.conftest import DRIVE_0001, DRIVE_0060, ODOMETRY_06, shared_path


def test_eval_pose_runs_the_model_on_the_shared_odometry_snippet(small_bundle: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sequence = shared_path("kitti_odometry_seq06_snippet", "sequences", "06")
    code = main(["eval", "pose", "--sequence", str(sequence), "--bundle", str(small_bundle), "--backend",
                 "onnxruntime", "--scale-source", "none", "--output", str(tmp_path / "pose"), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "pose" / "report.json").read_text())
    assert report["num_poses"] == 51 and report["snippet_ate"]["length"] == 5
    assert "<img src='trajectory_sim3.png'" in (tmp_path / "pose" / "index.html").read_text()
    assert json.loads(capsys.readouterr().out)["num_poses"] == 51


def test_eval_pose_against_oxts_and_bag_ground_truth(odometry_bag: Path, tmp_path: Path) -> None:
    stamps, poses = kitti.oxts_camera_poses(DRIVE_0001)
    estimate = tmp_path / "estimate.tum"
    scaled = poses.copy()
    scaled[:, :3, 3] *= 0.5  # an up-to-scale estimate of the right shape
    write_tum(estimate, stamps, scaled)
    assert main(["eval", "pose", "--gt-oxts", str(DRIVE_0001), "--estimate", str(estimate), "--output",
                 str(tmp_path / "oxts")]) == 0
    report = json.loads((tmp_path / "oxts" / "report.json").read_text())
    assert report["sim3"]["ate_rmse_m"] < 1e-3 and report["sim3"]["scale"] == pytest.approx(2.0, rel=1e-3)
    assert report["se3"]["ate_rmse_m"] > 1.0
    assert report["snippet_ate"]["mean"] < 1e-4
    # Ground truth from the bag's Odometry topic, estimate = the KITTI poses themselves.
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    write_tum(tmp_path / "seq06.tum", sequence.stamps_ns, sequence.poses)
    assert main(["eval", "pose", "--gt-bag", str(odometry_bag), "--estimate", str(tmp_path / "seq06.tum"),
                 "--output", str(tmp_path / "bag")]) == 0
    assert json.loads((tmp_path / "bag" / "report.json").read_text())["se3"]["ate_rmse_m"] < 1e-6
    stamps_back, poses_back = read_tum(tmp_path / "seq06.tum")
    np.testing.assert_array_equal(stamps_back, sequence.stamps_ns)
    np.testing.assert_allclose(poses_back, sequence.poses, atol=1e-6)


def test_eval_depth_on_the_bundled_drive_and_the_eigen_list(small_bundle: Path, tmp_path: Path) -> None:
    assert main(["eval", "depth", "--bundle", str(small_bundle), "--drive", str(DRIVE_0060), "--output",
                 str(tmp_path / "drive"), "--quiet"]) == 0
    report = json.loads((tmp_path / "drive" / "report.json").read_text())
    assert report["num_images"] == 20 and 0 < report["metrics"]["abs_rel"] < 2
    assert (tmp_path / "drive" / "depth_grid.png").stat().st_size > 10_000
    # The Eigen list names no frame of drive 0060: a list of our own in its format resolves png -> jpg.
    listing = tmp_path / "list.txt"
    listing.write_text("2011_09_26/2011_09_26_drive_0060_sync/image_02/data/0000000003.png\n"
                       "2011_09_26/2011_09_26_drive_0099_sync/image_02/data/0000000003.png\n")
    assert main(["eval", "depth", "--bundle", str(small_bundle), "--list", str(listing), "--kitti-root",
                 str(DRIVE_0060.parents[1]), "--output", str(tmp_path / "list"), "--quiet"]) == 0
    assert json.loads((tmp_path / "list" / "report.json").read_text())["num_images"] == 1


def test_depth_samples_carry_the_frame_before_and_a_two_frame_net_is_evaluated_on_pairs(
        two_frame_bundle: Path, tmp_path: Path) -> None:
    from sfm_ros.backends import make_backend
    from sfm_ros.evaluate import depth_samples_from_drive, depth_samples_from_list, predict_depth

    frames = DRIVE_0060 / "image_02" / "data"
    samples = depth_samples_from_drive(DRIVE_0060)
    # each frame's before is the drive's previous frame; the first has none, so it gets the one after (as training)
    assert [s.previous.name for s in samples[:3]] == ["0000000001.jpg", "0000000000.jpg", "0000000001.jpg"]
    assert samples[-1].previous == frames / "0000000018.jpg"
    listing = tmp_path / "list.txt"
    listing.write_text("2011_09_26/2011_09_26_drive_0060_sync/image_02/data/0000000000.png\n"
                       "2011_09_26/2011_09_26_drive_0060_sync/image_02/data/0000000007.png\n")
    listed = depth_samples_from_list(listing, DRIVE_0060.parents[1])
    assert [s.previous for s in listed] == [frames / "0000000001.jpg", frames / "0000000006.jpg"]
    assert main(["eval", "depth", "--bundle", str(two_frame_bundle), "--drive", str(DRIVE_0060), "--output",
                 str(tmp_path / "drive"), "--quiet"]) == 0
    assert json.loads((tmp_path / "drive" / "report.json").read_text())["num_images"] == 20
    rgb = np.zeros((64, 208, 3), np.uint8)
    with pytest.raises(EvaluationError, match="reads two frames .* no frame before or after it"):
        predict_depth(make_backend(two_frame_bundle, "onnxruntime"), rgb)


class PairRecordingBackend:
    """A two-frame depth net's stand-in that keeps each depth input and answers a constant disparity."""

    description = "pair recorder"

    def __init__(self) -> None:
        from sfm_ros.bundle import BundleMetadata

        self.metadata = BundleMetadata(height=64, width=208, dispnet={"alpha": 10.0, "beta": 0.01, "input_frames": 2})
        self.inputs: list[np.ndarray] = []

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        self.inputs.append(image)
        return np.full((1, 1, 64, 208), 0.1, np.float32)


def test_the_evaluations_give_a_two_frame_net_each_image_then_its_frame_before() -> None:
    from sfm_ros.backends import preprocess
    from sfm_ros.evaluate import depth_samples_from_drive, evaluate_dense_depth, evaluate_depth

    backend = PairRecordingBackend()
    frames = DRIVE_0060 / "image_02" / "data"
    evaluate_depth(backend, depth_samples_from_drive(DRIVE_0060)[:3], progress=False)
    for given, (image, before) in zip(backend.inputs, [(0, 1), (1, 0), (2, 1)], strict=True):
        expected = [preprocess(kitti.load_rgb(frames / f"{index:010d}.jpg"), backend.metadata)
                    for index in (image, before)]
        np.testing.assert_array_equal(given, np.concatenate(expected, axis=1))
    dense = PairRecordingBackend()
    images = [np.full((64, 208, 3), value, np.uint8) for value in (10, 20)]
    evaluate_dense_depth(dense, images, [np.ones((64, 208))] * 2,
                         previous_images=[np.full((64, 208, 3), value, np.uint8) for value in (30, 40)])
    assert [(round((i[0, 0, 0, 0] + 1) * 127.5), round((i[0, 3, 0, 0] + 1) * 127.5)) for i in dense.inputs] == [
        (10, 30), (20, 40)]
    with pytest.raises(EvaluationError, match="pass each image's frame before as previous_images"):
        evaluate_dense_depth(dense, images, [np.ones((64, 208))] * 2)
    alone = dataclasses.replace(depth_samples_from_drive(DRIVE_0060)[5], previous=None)
    with pytest.raises(EvaluationError, match=r"0000000005.jpg \(and 0 more\) has no frame before or after it"):
        evaluate_depth(PairRecordingBackend(), [alone], progress=False)


def test_prepare_kitti_to_bag_from_a_raw_drive_with_oxts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Drive 0060 has no OXTS in the sample; 0001 has OXTS but no images: a missing ground truth is an error.
    assert main(["prepare", "kitti-to-bag", str(DRIVE_0060), str(tmp_path / "bag"), "--quiet"]) == 0
    assert "20 frames" in capsys.readouterr().out
    assert main(["prepare", "kitti-to-bag", str(DRIVE_0060), str(tmp_path / "bag"), "--quiet"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_kitti_to_bag_attaches_oxts_ground_truth(tmp_path: Path) -> None:
    from sfm_ros.bags import read_odometry

    # The sample's drive 0001 carries OXTS only; attached to drive 0060's 20 frames it exercises the conversion.
    assert main(["prepare", "kitti-to-bag", str(DRIVE_0060), str(tmp_path / "bag"), "--oxts", str(DRIVE_0001),
                 "--compressed", "--quiet"]) == 0
    stamps, poses, topic = read_odometry(tmp_path / "bag")
    assert topic == "/ground_truth/odom" and len(stamps) == 20
    expected = kitti.oxts_camera_poses(DRIVE_0001, 2)[1][:20]
    np.testing.assert_allclose(poses, expected, atol=1e-6)


def test_prepare_cache_export_and_bench_commands(small_bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from test.conftest import REPO

    preset = str(REPO / "config" / "train_cpu_small.yaml")
    assert main(["prepare", "cache", "--config", preset, "--set", "data.height=32", "--set", "data.width=104",
                 "--out", str(tmp_path / "cache"), "--quiet"]) == 0
    assert (tmp_path / "cache" / "frames.npy").is_file() and (tmp_path / "cache" / "index.json").is_file()
    capsys.readouterr()
    assert main(["bench", "data", "--cache", str(tmp_path / "cache"), "--workers", "0", "--batch", "2",
                 "--epochs", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input"] == [32, 104] and data["snippets"] >= 2
    assert [row["workers"] for row in data["results"]] == [0] and data["results"][0]["snippets_per_s"] > 0
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle)
    assert main(["export", str(bundle), "--no-fp16"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["opset"] == 17 and exported["models"]["depth"]["tensorrt_missing"] == {"10": [], "8.5": []}
    assert main(["bench", "inference", "--bundle", str(bundle), "--backend", "onnxruntime", "--repeats", "2"]) == 0
    inference = json.loads(capsys.readouterr().out)
    assert inference["input"] == [64, 208] and inference["depth_pose_ms_median"] > 0
    assert main(["bench", "train", "--device", "cpu", "--batch-sizes", "1", "--steps", "1", "--height", "32",
                 "--width", "104", "--modes", "baseline", "fast"]) == 0
    training = json.loads(capsys.readouterr().out)
    baseline, fast = training["results"]
    assert baseline["mode"] == "baseline" and baseline["images_per_s"] > 0
    assert fast["path"] == "cpu: fp32, eager"  # the speed options apply on CUDA only


def test_bench_node_offers_real_frames_to_the_worker_and_reports_what_it_kept_up_with(
        small_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two seconds of the repository's KITTI 06 frames offered at 10 Hz to the node's worker and pipeline."""
    assert main(["bench", "node", "--bundle", str(small_bundle), "--backend", "onnxruntime", "--minutes",
                 str(2 / 60), "--rate", "10", "--quiet"]) == 0
    captured = capsys.readouterr()
    load = json.loads(captured.out)
    assert 19 <= load["offered"] <= 21  # 2 s at 10 Hz
    assert load["processed"] > 0 and load["processed"] + load["dropped"] == load["offered"]
    assert load["errors"] == {}
    assert load["processed_hz"] == pytest.approx(load["processed"] / 2.0)
    assert 0 < load["latency_ms"]["p50"] <= load["latency_ms"]["p90"]
    assert {"depth", "pose", "total"} <= set(load["stage_median_ms"])
    assert load["rss_mb_timeline"] and load["rss_mb_timeline"][0][1] > 0
    assert "1226x370" in load["benchmark"] and f"{load['processed_hz']:.1f} Hz" in captured.err


def test_bench_node_with_rectify_undistorts_each_frame_in_the_worker_as_the_node_does(
        small_bundle: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``--set rectify=true`` offers the frames as raw ones of a KITTI-like lens: the pipeline sees exactly what
    ``Rectifier`` makes of them, which is the KITTI frame again (so the odometry's geometry is as without rectify),
    and the rectification is timed as a stage of its own."""
    from sfm_ros import kitti
    from sfm_ros.benchmarks.node_load import KITTI_RAW_LENS, as_raw
    from sfm_ros.camera import CameraModel, Rectifier
    from sfm_ros.odometry.pipeline import Pipeline

    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    first = kitti.load_rgb(sequence.image_paths[0])
    lens = CameraModel(K=sequence.K, height=first.shape[0], width=first.shape[1], D=KITTI_RAW_LENS, K_raw=sequence.K)
    (raw,) = as_raw([first], lens)
    expected = Rectifier()(raw, lens)
    height, width = first.shape[:2]
    middle = (slice(height // 4, -height // 4), slice(width // 4, -width // 4))
    as_recorded = np.abs(raw[middle].astype(float) - first[middle]).mean()
    assert np.abs(expected[middle].astype(float) - first[middle]).mean() < 0.3 * as_recorded
    seen = []
    process = Pipeline.process
    monkeypatch.setattr(Pipeline, "process", lambda self, stamp, rgb, camera: (seen.append(rgb),
                                                                                process(self, stamp, rgb, camera))[1])
    assert main(["bench", "node", "--bundle", str(small_bundle), "--backend", "onnxruntime", "--minutes",
                 str(1 / 60), "--rate", "2", "--set", "rectify=true", "--quiet"]) == 0
    load = json.loads(capsys.readouterr().out)
    assert load["rectify"] is True and load["stage_median_ms"]["rectify"] > 0
    assert np.array_equal(seen[0], expected)  # the first frame offered is the sequence's first


def test_bench_node_says_what_is_wrong_with_its_frames_or_its_duration(small_bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "node", "--bundle", str(small_bundle), "--kitti", str(tmp_path / "absent")]) == 2
    assert f"no KITTI odometry sequence at {tmp_path / 'absent'}" in capsys.readouterr().err
    assert main(["bench", "node", "--bundle", str(small_bundle), "--minutes", "0"]) == 2
    assert "--minutes and --rate must be positive, got 0.0 and 30.0" in capsys.readouterr().err
