"""Fine-tuning from a bundle (``sfm train --init-from``) and the learning benchmark's real-video track on real KITTI
frames: the frame folders it trains on, its motion and LiDAR depth scorers, and a tiny run of all three starts."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sfm_ros.bundle import BundleError, BundleMetadata, load_networks, read_metadata, save_networks, sha256_file
from sfm_ros.metrics import garg_crop_mask
from sfm_ros.models import DispNet, PoseExpNet
from test.conftest import shared_path
from test.odometry_support import euler_xyz
from training.config import load_train_config
from training.data import network_frames, open_source, prepare_cache
from training.normalisation import normalise
from training.real_bench import (
    STARTS,
    FrameRange,
    LidarDepthScorer,
    MotionScorer,
    bench_real,
    parse_frame_range,
    write_frame_range,
)

SIZE = ["data.height=32", "data.width=104"]
# KITTI 00's calibration (its PROVENANCE.md): fx = fy, cx, cy of P0 at 1241x376.
FX_00, CX_00, CY_00, WIDTH_00, HEIGHT_00 = 718.856, 607.1928, 185.2157, 1241, 376


@pytest.fixture(scope="module")
def seq00() -> Path:
    return shared_path("kitti_odometry_seq00_200", "sequences", "00")


@pytest.fixture(scope="module")
def drive0060() -> Path:
    return shared_path("kitti_raw_2011_09_26", "2011_09_26", "2011_09_26_drive_0060_sync")


@pytest.fixture(scope="module")
def folders(seq00: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("frames")
    seq06 = shared_path("kitti_odometry_seq06_snippet", "sequences", "06")
    return {"train": write_frame_range(FrameRange(seq00, 0, 15), out / "00_0-15"),
            "test00": write_frame_range(FrameRange(seq00, 150, 199), out / "00_150-199"),
            "test06": write_frame_range(FrameRange(seq06, 0, 50), out / "06_0-50")}


@pytest.fixture(scope="module")
def real_cache(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_train_config(None, [*SIZE, "data.workers=0", f"data.sources=[{folders['train']}]"])
    return prepare_cache(config.data, tmp_path_factory.mktemp("real") / "cache", progress=False)


def random_bundle(folder: Path, seed: int, height: int = 32, width: int = 104, with_mask: bool = True) -> Path:
    torch.manual_seed(seed)
    return save_networks(folder, DispNet(), PoseExpNet(2, with_mask=with_mask),
                         BundleMetadata(height=height, width=width,
                                        posenet={"with_mask": with_mask, "pose_scale": 0.01},
                                        training={"steps": 123, "sources": ["rendered streets"]}))


# ---- sfm train --init-from --------------------------------------------------------------------------------------

def test_init_from_starts_both_networks_at_the_bundles_weights(real_cache: Path, folders: dict[str, Path],
                                                              tmp_path: Path) -> None:
    from training.trainer import Trainer

    bundle = random_bundle(tmp_path / "streets", seed=7)
    common = [*SIZE, "data.workers=0"]
    tuned = Trainer(load_train_config(None, [*common, f"model.init_from={bundle}"]), real_cache, tmp_path / "tuned")
    scratch = Trainer(load_train_config(None, common), real_cache, tmp_path / "scratch")
    assert not tuned.optimizer.state  # a fresh optimiser: no Adam moments carried over
    frames, _ = network_frames(folders["train"], load_train_config(None, SIZE).data)
    images = normalise(torch.from_numpy(frames[:3]).permute(0, 3, 1, 2))  # three real KITTI 00 frames
    depth_net, pose_net, _ = load_networks(bundle)
    with torch.no_grad():
        for trainer in (tuned, scratch):
            trainer.depth_net.eval()
            trainer.pose_net.eval()
        expected = depth_net(images[1:2])[0], pose_net(images[1:2], images[None, [0, 2]])
        tuned_out = tuned.depth_net(images[1:2])[0], tuned.pose_net(images[1:2], images[None, [0, 2]])
        scratch_out = scratch.depth_net(images[1:2])[0]
    torch.testing.assert_close(tuned_out[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(tuned_out[1][0], expected[1][0], rtol=0, atol=0)  # motions
    torch.testing.assert_close(tuned_out[1][1][0], expected[1][1][0], rtol=0, atol=0)  # explainability mask
    assert not torch.allclose(scratch_out, expected[0])  # a random start is not the bundle
    # The run's own bundle says where it started.
    written = read_metadata(tuned.save_bundle())
    start = written.training["init_from"]
    assert start["bundle"] == str(bundle.resolve()) and start["steps"] == 123
    assert start["depth_sha256"] == sha256_file(bundle / "depth.safetensors")
    assert start["pose_sha256"] == sha256_file(bundle / "pose.safetensors")


def test_a_bundle_of_another_network_configuration_is_refused(real_cache: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from sfm_ros.cli import main
    from training.trainer import Trainer

    bundle = random_bundle(tmp_path / "other", seed=0, height=64, width=208, with_mask=False)
    config = load_train_config(None, [*SIZE, "data.workers=0", f"model.init_from={bundle}"])
    with pytest.raises(BundleError) as error:
        Trainer(config, real_cache, tmp_path / "run")
    message = str(error.value)
    assert "input: bundle 64x208, config 32x104 (data.height, data.width)" in message
    assert "mask: bundle False, config True (model.with_mask)" in message
    assert "sources" not in message  # what agrees is not named
    # The command says it in one line, before preparing any data (here sources that do not even exist).
    code = main(["train", "--init-from", str(bundle), "--output", str(tmp_path / "cli"), "--set",
                 f"data.sources=[{tmp_path / 'nowhere'}]", "--set", "data.height=32", "--set", "data.width=104"])
    assert code == 2 and "input: bundle 64x208, config 32x104" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


# ---- the real track's data and scorers ---------------------------------------------------------------------------

def test_a_frame_range_is_written_as_a_users_image_folder(seq00: Path, folders: dict[str, Path]) -> None:
    folder = folders["test00"]
    written = sorted(folder.glob("*.png"))
    assert [p.name for p in written] == [f"{n:06d}.png" for n in range(150, 200)]
    assert all(filecmp.cmp(p, seq00 / "image_0" / p.name, shallow=False) for p in written)  # byte for byte
    # Read as a user's recording: native size and K, then K at network size by the pixel-centre rule by hand.
    data = load_train_config(None, SIZE).data
    (sequence,) = open_source(folder, data)
    assert sequence.size == (HEIGHT_00, WIDTH_00) and len(sequence.stamps_ns) == 50
    np.testing.assert_allclose(sequence.K, [[FX_00, 0, CX_00], [0, FX_00, CY_00], [0, 0, 1]])
    frames, K = network_frames(folder, data)
    sx, sy = 104 / WIDTH_00, 32 / HEIGHT_00
    np.testing.assert_allclose(K, [[FX_00 * sx, 0, (CX_00 + 0.5) * sx - 0.5], [0, FX_00 * sy, (CY_00 + 0.5) * sy - 0.5],
                                   [0, 0, 1]], rtol=1e-12)
    assert frames.shape == (50, 32, 104, 3)
    # The ground truth of exactly those frames: lines 151-200 of the official pose file.
    official = np.loadtxt(seq00.parents[1] / "poses" / "00.txt")
    np.testing.assert_allclose(np.loadtxt(folder / "poses.txt"), official[150:200], rtol=1e-8, atol=1e-9)
    with pytest.raises(Exception, match="holds 10 of frames 190-209"):
        write_frame_range(FrameRange(seq00, 190, 209), folder.parent / "too_far")
    assert parse_frame_range("a/b/00:0-149") == FrameRange(Path("a/b/00"), 0, 149)
    with pytest.raises(ValueError, match="SEQUENCE_DIR:FIRST-LAST"):
        parse_frame_range("a/b/00:149-0")


# Turns a camera motion's direction of travel (camera z) to its right (camera x): sideways instead of ahead.
SIDEWAYS = np.array([[0.0, 0, 1, 0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]])


class PoseOracle:
    """A pose net that answers with a frame range's true motions, finding each target frame by its pixels;
    ``wrong``: "inverted" answers each motion's inverse, "sideways" turns each translation to the right."""

    training = False
    num_sources = 2

    def __init__(self, scorer: MotionScorer, wrong: str = "") -> None:
        self.lookup = {image.numpy().tobytes(): i for i, image in enumerate(scorer.images)}
        assert len(self.lookup) == len(scorer.images)  # every frame differs, so the lookup is unambiguous
        self.truth, self.wrong = scorer.truth, wrong

    def eval(self) -> None:
        pass

    def __call__(self, target: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        vectors = []
        for image in target:
            i = self.lookup[image.numpy().tobytes()]
            row = []
            for source in (i - 1, i + 1):
                T = np.linalg.inv(self.truth[source]) @ self.truth[i]  # T_source_target
                if self.wrong == "inverted":
                    T = np.linalg.inv(T)
                elif self.wrong == "sideways":
                    T[:3, 3] = SIDEWAYS[:3, :3] @ T[:3, 3]
                row.append(np.r_[T[:3, 3], euler_xyz(T[:3, :3])])
            vectors.append(row)
        return torch.tensor(np.asarray(vectors), dtype=torch.float32), ()


def test_the_motion_scorer_scores_the_true_motions_of_real_06_as_perfect(folders: dict[str, Path]) -> None:
    scorer = MotionScorer(folders["test06"], load_train_config(None, SIZE).data)
    assert len(scorer.truth) == 51
    np.testing.assert_allclose(scorer.truth[0], np.eye(4), atol=1e-9)  # 06's pose file starts at identity
    forward = scorer.baseline()
    assert 0.005 < forward < 0.1  # a mostly straight drive: constant forward motion is a fair guess, not perfect
    assert scorer.score(PoseOracle(scorer), torch.device("cpu")) < 1e-4  # float32 pose vectors
    assert scorer.score(PoseOracle(scorer, wrong="sideways"), torch.device("cpu")) > 10 * forward
    # The snippet ATE's own blind spot: its per-snippet least-squares scale takes a negative sign, so on a nearly
    # straight drive a pose net that has the direction of travel backwards scores better than constant forward
    # motion (measured 0.0045 against 0.028 on 06 frames 0-50; on the rendered streets' turns it does not).
    assert scorer.score(PoseOracle(scorer, wrong="inverted"), torch.device("cpu")) < forward


@pytest.fixture(scope="module")
def lidar(drive0060: Path) -> LidarDepthScorer:
    return LidarDepthScorer(drive0060, load_train_config(None, SIZE).data, grey=True)


def test_the_lidar_scorer_scores_the_lidar_itself_as_perfect(lidar: LidarDepthScorer) -> None:
    assert len(lidar.truth) == 20 and lidar.truth[0].shape == (375, 1242)
    # About 16k of each scan's points land inside image_02 (the data's PROVENANCE.md).
    assert all(15_000 < np.count_nonzero(gt) < 17_500 for gt in lidar.truth)
    assert np.array_equal(lidar.frames[..., 0], lidar.frames[..., 2])  # shown in grey, as the training frames
    perfect = lidar.score_depths(lidar.truth)
    assert perfect["abs_rel"] == 0.0 and perfect["a1"] == 1.0
    # One constant depth, median-scaled, is the median of the scored LiDAR depths (Garg crop, 1 mm to 80 m).
    expected = []
    for gt in lidar.truth:
        values = gt[(gt > 1e-3) & (gt < 80) & garg_crop_mask(*gt.shape)]
        expected.append(np.mean(np.abs(values - np.median(values)) / values))
    assert lidar.baseline()["abs_rel"] == pytest.approx(np.mean(expected), rel=1e-9)

    class ConstantDisparity(torch.nn.Module):  # through the network path: depth = 1 / disparity
        input_frames = 1

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
            return (torch.full((len(images), 1, *images.shape[2:]), 0.25),)

    assert lidar.score(ConstantDisparity(), torch.device("cpu"))["abs_rel"] == pytest.approx(np.mean(expected))

    seen: list[torch.Tensor] = []

    class TwoFrames(ConstantDisparity):
        input_frames = 2

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
            seen.append(images)
            return super().forward(images)

    assert lidar.score(TwoFrames(), torch.device("cpu"))["abs_rel"] == pytest.approx(np.mean(expected))
    pairs = torch.cat(seen)  # each LiDAR frame beside the drive's frame before it (the first: after it)
    torch.testing.assert_close(pairs[:, :3], lidar.images)
    torch.testing.assert_close(pairs[:, 3:], lidar.images[[1, *range(19)]])


def test_a_tiny_real_track_scores_all_three_starts(seq00: Path, drive0060: Path, folders: dict[str, Path],
                                                   tmp_path: Path) -> None:
    bundle = random_bundle(tmp_path / "streets", seed=3)
    result = bench_real(bundle, tmp_path / "out", FrameRange(seq00, 0, 15), [FrameRange(seq00, 150, 199)],
                        drive0060, steps=2, eval_every=2, seeds=(0,), overrides=["data.workers=0"], progress=False)
    assert [row["start"] for row in result["table"]] == list(STARTS)
    assert result["input"] == [32, 104] and result["grey"]
    keys = {"ate_00_150-199", "depth_abs_rel", "depth_sq_rel", "depth_rmse", "depth_a1"}
    assert keys <= set(result["baselines"])
    starts = result["starts"]
    assert [row["step"] for row in starts["scratch"][0]["curve"]] == [0, 2]
    assert starts["streets"][0]["steps"] == 0
    # The fine-tuned start begins exactly where the bundle alone is; from scratch begins elsewhere.
    streets, tuned, scratch = (starts[s][0]["curve"][0] for s in ("streets", "finetune", "scratch"))
    assert all(tuned[k] == streets[k] for k in keys)
    assert scratch["depth_abs_rel"] != streets["depth_abs_rel"]
    record = json.loads((tmp_path / "out" / "records" / "finetune_seed0.json").read_text())
    assert record["init_from"]["bundle"] == str(bundle.resolve())
    assert record["config"]["data"]["sources"] == [str(tmp_path / "out" / "work" / "frames" / "00_0-15")]


def test_the_command_names_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sfm_ros.cli import main

    code = main(["bench", "real", "--bundle", str(tmp_path / "b"), "--train", f"{tmp_path / 'nowhere'}:0-149",
                 "--output", str(tmp_path / "out")])
    assert code == 2 and f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
