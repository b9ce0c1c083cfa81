"""Recordings cut short: a real bag truncated at several points, and a bag folder without metadata.yaml, are read
as far as they are intact, by every command that reads bags, and never written to."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from sfm_ros.bags import BagError, BagRecoveredWarning, open_reader, read_camera_frames, read_odometry


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def full_frames(odometry_bag: Path) -> list:
    return list(read_camera_frames(odometry_bag))


def cut(odometry_bag: Path, folder: Path, fraction: float, keep_metadata: bool = True) -> Path:
    storage = next(odometry_bag.glob("*.mcap"))
    folder.mkdir(parents=True)
    data = storage.read_bytes()
    (folder / storage.name).write_bytes(data[: int(len(data) * fraction)])
    if keep_metadata:
        shutil.copy(odometry_bag / "metadata.yaml", folder / "metadata.yaml")
    return folder


@pytest.mark.parametrize("fraction", [0.2, 0.55, 0.9, 0.999])
def test_a_truncated_mcap_yields_every_intact_frame(odometry_bag: Path, full_frames: list, tmp_path: Path,
                                                    fraction: float) -> None:
    bag = cut(odometry_bag, tmp_path / "cut", fraction)
    before = _digest(bag)
    with pytest.warns(BagRecoveredWarning, match=r"recovered \d+ messages .* cut short after byte"):
        frames = list(read_camera_frames(bag))
    # A prefix of the recording, frame for frame, and about as much of it as the bytes kept.
    assert 0 < len(frames) < len(full_frames)
    assert abs(len(frames) / len(full_frames) - fraction) < 0.1
    for found, expected in zip(frames, full_frames, strict=False):
        assert found.stamp_ns == expected.stamp_ns
        np.testing.assert_array_equal(found.rgb, expected.rgb)
    assert _digest(bag) == before  # nothing written to the input


def test_a_bag_folder_without_metadata_is_read_whole(odometry_bag: Path, full_frames: list, tmp_path: Path) -> None:
    bag = cut(odometry_bag, tmp_path / "no_metadata", 1.0, keep_metadata=False)
    with pytest.warns(BagRecoveredWarning, match="no metadata.yaml.*nothing lost"):
        frames = list(read_camera_frames(bag))
    assert [f.stamp_ns for f in frames] == [f.stamp_ns for f in full_frames]
    stamps, poses, topic = read_odometry(bag)
    assert topic == "/ground_truth/odom" and len(stamps) == len(full_frames) and poses.shape[1:] == (4, 4)
    assert sorted(p.name for p in bag.iterdir()) == [next(odometry_bag.glob("*.mcap")).name]


def test_nothing_recoverable_is_a_clear_error(tmp_path: Path, odometry_bag: Path) -> None:
    bag = cut(odometry_bag, tmp_path / "header_only", 0.0000001)
    with pytest.raises(BagError, match="no intact message could be recovered"), open_reader(bag):
        pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BagError, match="no .mcap or .db3 storage file"), open_reader(empty):
        pass


def test_commands_read_a_recording_cut_short(odometry_bag: Path, small_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="preparing a training cache needs torch (absent in the run-time test venv)")
    from sfm_ros.config import PipelineConfig, ScaleConfig
    from sfm_ros.odometry.pipeline import Pipeline
    from sfm_ros.replay import replay_bag
    from training.config import load_train_config
    from training.data import prepare_cache

    bag = cut(odometry_bag, tmp_path / "killed_recorder", 0.6, keep_metadata=False)
    before = _digest(bag)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagRecoveredWarning)
        config = load_train_config(None, [f"data.sources=[{bag}]", "data.height=32", "data.width=104",
                                          "data.static_filter=none", "data.workers=0"])
        cache = prepare_cache(config.data, tmp_path / "cache", progress=False)
        pipeline = Pipeline(PipelineConfig(bundle=str(small_bundle), backend="onnxruntime"),
                            ScaleConfig(source="none"))
        summary = replay_bag(bag, pipeline, tmp_path / "replay", progress=False)
    kept = summary.frames_in
    assert 20 < kept < 51 and summary.frames_out == kept
    assert (np.load(cache / "frames.npy", mmap_mode="r").shape[0]) == kept
    assert summary.evaluation is not None  # the ground truth recovered with the frames
    assert _digest(bag) == before


def test_a_sqlite_bag_without_metadata_is_read(odometry_bag: Path, full_frames: list, tmp_path: Path) -> None:
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from sfm_ros.bags import open_typestore

    typestore = open_typestore()
    bag = tmp_path / "sqlite_bag"
    with Reader(odometry_bag) as reader, Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connections = {}
        for connection, stamp, raw in reader.messages():
            if connection.topic not in ("/camera/image_raw", "/camera/camera_info"):
                continue
            if connection.topic not in connections:
                connections[connection.topic] = writer.add_connection(connection.topic, connection.msgtype,
                                                                      typestore=typestore)
            writer.write(connections[connection.topic], stamp, raw)
    (bag / "metadata.yaml").unlink()
    with pytest.warns(BagRecoveredWarning, match="no metadata.yaml"):
        frames = list(read_camera_frames(bag))
    assert [f.stamp_ns for f in frames] == [f.stamp_ns for f in full_frames]
    np.testing.assert_array_equal(frames[-1].rgb, full_frames[-1].rgb)
