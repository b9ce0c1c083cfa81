"""`sfm replay` and `sfm quantize` on the bags robots record: bad CameraInfo messages skipped and counted as the
node does, a camera chosen among several, and intrinsics given instead of a CameraInfo topic. Real MCAP bags
(rosbags) of KITTI frames, real onnxruntime on the test bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sfm_ros import kitti
from sfm_ros.bags import BagWriter, open_reader, read_camera_frames
from sfm_ros.camera import CameraModel
from sfm_ros.cli import main
from sfm_ros.ros_io import make_camera_info, make_header, rgb_to_image_msg
from test.conftest import ODOMETRY_06

FRAMES = 8
BAD_INFO_FRAMES = (3, 5)  # CameraInfo messages with fx = 0 before these frames


def _write_bag(path: Path, cameras: dict[str, bool], bad_info: tuple[int, ...] = ()) -> Path:
    """KITTI frames at 10 Hz on /<camera>/image_raw (frame id <camera>; cam_b's mirrored) with CameraInfo on
    /<camera>/camera_info where ``cameras[camera]``."""
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    with BagWriter(path) as writer:
        types = writer.types
        for i in range(FRAMES):
            stamp = 1_000_000_000 + i * 100_000_000
            rgb = kitti.load_rgb(sequence.image_paths[i])
            for camera, with_info in cameras.items():
                header = make_header(types, stamp, camera)
                if with_info:
                    K = sequence.K.copy()
                    if i in bad_info:
                        K[0, 0] = 0.0
                    model = CameraModel(K=K, height=rgb.shape[0], width=rgb.shape[1], frame_id=camera)
                    writer.write(f"/{camera}/camera_info", make_camera_info(types, model, header), stamp)
                image = rgb[:, ::-1].copy() if camera == "cam_b" else rgb
                writer.write(f"/{camera}/image_raw", rgb_to_image_msg(types, image, header), stamp)
    return path


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("camera_bags")
    return {"bad_info": _write_bag(root / "bad_info", {"camera": True}, BAD_INFO_FRAMES),
            "two_cameras": _write_bag(root / "two_cameras", {"cam_a": True, "cam_b": True}),
            "no_info": _write_bag(root / "no_info", {"camera": False})}


def _replay(bag: Path, bundle: Path, output: Path, *extra: str) -> int:
    return main(["replay", str(bag), "--output", str(output), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--set", "scale.source=none", "--quiet", *extra])


def _output_frame_ids(output: Path) -> set[str]:
    """The header frame ids of the depth images replay wrote (each its input frame's)."""
    from sfm_ros.bags import open_typestore

    typestore = open_typestore()
    with open_reader(output / "sfm_output") as reader:
        images = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/Image"]
        return {typestore.deserialize_cdr(raw, c.msgtype).header.frame_id
                for c, _, raw in reader.messages(connections=images)}


def test_replay_skips_and_counts_bad_camera_info(bags: dict, small_bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay(bags["bad_info"], small_bundle, tmp_path / "out") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out[captured.out.index("{"):captured.out.rindex("}") + 1])
    kinds = {kind: count for kind, count in summary["malformed"].items() if kind.startswith("CameraInfo ")}
    assert list(kinds.values()) == [len(BAD_INFO_FRAMES)], summary["malformed"]
    assert "no usable intrinsics" in next(iter(kinds))
    # Every frame is processed: a frame after a bad CameraInfo keeps the last usable one, as the node does.
    assert summary["frames_in"] == summary["frames_out"] == FRAMES
    assert f"skipped {len(BAD_INFO_FRAMES)} messages that could not be used" in captured.err


def test_a_camera_is_chosen_among_several(bags: dict, small_bundle: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay(bags["two_cameras"], small_bundle, tmp_path / "auto") == 2
    assert "several image topics, choose one with --image-topic" in capsys.readouterr().err
    assert _replay(bags["two_cameras"], small_bundle, tmp_path / "b", "--image-topic", "/cam_b/image_raw",
                   "--camera-info-topic", "/cam_b/camera_info") == 0
    assert "cam_b" in _output_frame_ids(tmp_path / "b") and "cam_a" not in _output_frame_ids(tmp_path / "b")
    # quantize reads its calibration frames from the chosen camera, and refuses to guess as replay does.
    assert main(["quantize", str(small_bundle), str(bags["two_cameras"]), "--quiet"]) == 2
    assert "choose one with --image-topic" in capsys.readouterr().err
    from sfm_ros.backends import preprocess
    from sfm_ros.bundle import read_metadata
    from sfm_ros.calibration import calibration_windows

    metadata = read_metadata(small_bundle)
    window = next(calibration_windows(bags["two_cameras"], metadata, 1, image_topic="/cam_b/image_raw",
                                      info_topic="/cam_b/camera_info"))
    cam_b = [f.rgb for f in read_camera_frames(bags["two_cameras"], image_topic="/cam_b/image_raw",
                                               info_topic="/cam_b/camera_info")]
    assert np.array_equal(window["target"], preprocess(cam_b[1], metadata))  # the middle frame of cam_b's first 3


def test_replay_honours_given_intrinsics(bags: dict, small_bundle: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay(bags["no_info"], small_bundle, tmp_path / "no") == 2
    assert "no sensor_msgs/CameraInfo topic in the bag: give the intrinsics" in capsys.readouterr().err
    assert _replay(bags["no_info"], small_bundle, tmp_path / "bad", "--set", "use_camera_info=false") == 2
    assert "intrinsics must be fx fy cx cy" in capsys.readouterr().err
    K = kitti.kitti_odometry_sequence(ODOMETRY_06).K
    intrinsics = f"intrinsics=[{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}]"
    assert _replay(bags["no_info"], small_bundle, tmp_path / "given", "--set", "use_camera_info=false",
                   "--set", intrinsics) == 0
    captured = capsys.readouterr().out
    summary = json.loads(captured[captured.index("{"):captured.rindex("}") + 1])
    assert summary["frames_out"] == FRAMES
