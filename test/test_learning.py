"""The learning benchmark's data path and scoring on the bundled rendered streets, training health, and the
regression guard: a short run on the sample must learn depth clearly better than a constant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sfm_ros.bundle import IMAGE_MEAN, IMAGE_STD
from sfm_ros.config import ConfigError
from sfm_ros.geometry import pose_vec_to_mat
from sfm_ros.models.posenet import posenet
from sfm_ros.odometry.network import relative_pose
from test.conftest import REPO
from test.odometry_support import euler_xyz
from training.config import load_train_config
from training.data import load_cache_index, open_source, prepare_cache
from training.health import HealthMonitor, HealthThresholds, training_health
from training.learning_bench import (
    LearningEvaluator,
    chain_motions,
    depth_scores,
    load_variants,
    predicted_poses,
    snippet_ate_mean,
)
from training.normalisation import normalise, to_unit_range
from training.synth_streets import (
    SAMPLE_STREETS,
    default_streets,
    load_street_split,
    street_folders,
    write_street_split,
)

SAMPLE = SAMPLE_STREETS
GUARD_STEPS, GUARD_EVERY, GUARD_RATIO = 700, 50, 0.8


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's streets prepared by `sfm prepare`'s code at the sample's own size."""
    train, val = load_street_split(SAMPLE / "train"), load_street_split(SAMPLE / "val")
    config = load_train_config(None, ["data.height=64", "data.width=208", "data.workers=0",
                                      f"data.sources=[{', '.join(map(str, train.folders))}]",
                                      f"data.val_sources=[{', '.join(map(str, val.folders))}]"])
    return prepare_cache(config.data, tmp_path_factory.mktemp("learning") / "cache", progress=False)


def test_the_sample_is_a_user_recording(sample_cache: Path) -> None:
    val = load_street_split(SAMPLE / "val")
    (sequence,) = open_source(val.folders[0], load_train_config(None).data)  # an image folder + intrinsics.yaml
    assert sequence.size == (64, 208) and len(sequence.stamps_ns) == val.depth.shape[1] == 60
    np.testing.assert_allclose(sequence.K, val.K)
    # 2x-downsampled K of the 416x128 renders (fx 240, cx 208, cy 64) in the pixel-centre convention.
    np.testing.assert_allclose(val.K, [[120, 0, 103.75], [0, 120, 31.75], [0, 0, 1]])
    assert np.all(np.abs(np.diff(sequence.stamps_ns) - 100_000_000) == 0)


def test_street_folders_write_an_archive_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 4, 16, 24, 3), dtype=np.uint8)
    depth = rng.uniform(1, 50, (2, 4, 16, 24)).astype(np.float32)
    poses = np.tile(np.eye(4), (2, 4, 1, 1))
    K = np.array([[20.0, 0, 11.5], [0, 20.0, 7.5], [0, 0, 1]])
    np.savez(tmp_path / "train.npz", images=images, depth=depth, T_world_cam=poses, K=K)
    split = street_folders(tmp_path, "train", tmp_path / "work")
    assert [f.name for f in split.folders] == ["street_00", "street_01"]
    np.testing.assert_array_equal(split.depth, depth)
    (sequence,) = open_source(split.folders[1], load_train_config(None).data)
    np.testing.assert_array_equal(list(sequence.frames())[2], images[1, 2])  # PNG: lossless
    stamp = (tmp_path / "work" / f"{tmp_path.name}_train" / ".source").read_text()
    assert street_folders(tmp_path, "train", tmp_path / "work").folders == split.folders
    assert (tmp_path / "work" / f"{tmp_path.name}_train" / ".source").read_text() == stamp
    with pytest.raises(FileNotFoundError, match="val.npz"):
        street_folders(tmp_path, "val", tmp_path / "work")


def test_written_split_refuses_a_street_missing_frames(tmp_path: Path) -> None:
    images = np.zeros((1, 3, 8, 8, 3), dtype=np.uint8)
    out = write_street_split(tmp_path / "s", images, np.ones((1, 3, 8, 8)), np.tile(np.eye(4), (1, 3, 1, 1)),
                             np.eye(3))
    (out / "street_00" / "000001.png").unlink()
    with pytest.raises(ValueError, match="2 frames, its ground truth 3"):
        load_street_split(out)


def test_depth_scores_are_median_scaled_eigen_metrics() -> None:
    rng = np.random.default_rng(1)
    gt = rng.uniform(2, 60, (3, 8, 10))
    gt[:, 0] = 0.0  # sky: no surface, not scored
    assert depth_scores(gt * 7.0 + (gt == 0), gt)["abs_rel"] == pytest.approx(0.0, abs=1e-6)  # float32 resize
    # A constant prediction, median-scaled, predicts median(gt) everywhere: abs_rel = mean |gt - m| / gt.
    expected = np.mean([np.mean(np.abs(g[g > 0] - np.median(g[g > 0])) / g[g > 0]) for g in gt])
    assert depth_scores(np.ones_like(gt), gt)["abs_rel"] == pytest.approx(expected, rel=1e-6)


def test_chained_motions_and_snippet_ate() -> None:
    forward = np.eye(4)
    forward[2, 3] = -1.0  # points of camera i are 1 m closer in camera i+1: the camera moved 1 m along +z
    poses = chain_motions(np.repeat(forward[None], 6, axis=0))
    np.testing.assert_allclose(poses[:, :3, 3], [[0, 0, k] for k in range(7)])
    assert snippet_ate_mean([poses], [poses]) == pytest.approx(0.0, abs=1e-12)
    # Any constant speed is the same up to the snippet's scale; moving sideways is not.
    np.testing.assert_allclose(snippet_ate_mean([poses], [chain_motions(np.repeat((forward * [1, 1, 1, 1])[None],
                                                                                 6, axis=0))]), 0.0, atol=1e-12)
    sideways = np.eye(4)
    sideways[0, 3] = -1.0
    assert snippet_ate_mean([poses], [chain_motions(np.repeat(sideways[None], 6, axis=0))]) > 0.3


class Oracle:
    """A network stand-in that answers with the truth of the sample's validation streets, found by the frame shown."""

    training = False

    def __init__(self, frames: list[np.ndarray], split, invert: bool = False) -> None:
        self.lookup = {normalise(torch.from_numpy(f).permute(2, 0, 1)).numpy().tobytes(): (s, i)
                       for s, street in enumerate(frames) for i, f in enumerate(street)}
        self.split, self.invert = split, invert

    def eval(self) -> None:
        pass

    def train(self, mode: bool = True) -> None:
        pass

    def where(self, image: torch.Tensor) -> tuple[int, int]:
        return self.lookup[image.numpy().tobytes()]


class DepthOracle(Oracle):
    input_frames = 1

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        disparity = []
        for image in images:
            street, frame = self.where(image[:3])
            if self.input_frames == 2:  # the truth only when the second frame is the one before (the first: after)
                assert self.where(image[3:]) == (street, frame - 1 if frame else 1)
            truth = self.split.depth[street, frame]
            disparity.append(torch.from_numpy(np.where(truth > 0, 1 / np.maximum(truth, 1e-6), 0.01)))
        return (torch.stack(disparity)[:, None].float(),)


class PoseOracle(Oracle):
    num_sources = 2

    def __call__(self, target: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        vectors = []
        reach = self.num_sources // 2
        for image in target:
            street, frame = self.where(image)
            T = self.split.T_world_cam[street]
            row = []
            for source in [frame + k for k in range(-reach, reach + 1) if k != 0]:
                T_source_target = np.linalg.inv(T[source]) @ T[frame]
                if self.invert:
                    T_source_target = np.linalg.inv(T_source_target)
                row.append(np.r_[T_source_target[:3, 3], euler_xyz(T_source_target[:3, :3])])
            vectors.append(row)
        return torch.tensor(np.asarray(vectors), dtype=torch.float32), ()


def test_the_evaluator_scores_the_truth_as_perfect(sample_cache: Path) -> None:
    split = load_street_split(SAMPLE / "val")
    evaluator = LearningEvaluator(split, load_train_config(None, ["data.height=64", "data.width=208"]).data)
    # The evaluator reads the frames exactly as the training cache holds them.
    index = load_cache_index(sample_cache)
    cached = next(s for s in index["sequences"] if s["split"] == "val" and s["name"] == split.folders[0].name)
    frames = np.load(sample_cache / "frames.npy", mmap_mode="r")
    np.testing.assert_array_equal(evaluator.frames[0], frames[cached["offset"]: cached["offset"] + cached["count"]])
    depth, pose = DepthOracle(evaluator.frames, split), PoseOracle(evaluator.frames, split)
    # euler_xyz is the inverse of the runtime's pose_vec_to_mat (checked here so the oracle is right).
    T = np.linalg.inv(split.T_world_cam[0, 5]) @ split.T_world_cam[0, 4]
    np.testing.assert_allclose(pose_vec_to_mat(np.r_[T[:3, 3], euler_xyz(T[:3, :3])]), T, atol=1e-9)
    scores = evaluator.evaluate(depth, pose, torch.device("cpu"), 10.0, 0.01)
    assert scores["abs_rel"] < 2e-3 and scores["a1"] > 0.999  # float16 depth and float32 disparity
    depth.input_frames = 2
    assert evaluator.evaluate(depth, pose, torch.device("cpu"), 10.0, 0.01)["abs_rel"] == scores["abs_rel"]
    depth.input_frames = 1
    assert scores["snippet_ate"] < 1e-5
    base = evaluator.baselines()
    assert base["constant_depth_abs_rel"] > 0.3 and 0.01 < base["constant_forward_snippet_ate"] < 0.1
    five_frames = PoseOracle(evaluator.frames, split)
    five_frames.num_sources = 4  # the paper's odometry snippets: sources t-2, t-1, t+1, t+2
    assert evaluator.evaluate(depth, five_frames, torch.device("cpu"), 10.0, 0.01)["snippet_ate"] < 1e-5
    inverted = PoseOracle(evaluator.frames, split, invert=True)
    # Motions of the wrong direction (the per-snippet scale may even flip sign) lose to constant forward motion.
    wrong = evaluator.evaluate(depth, inverted, torch.device("cpu"), 10.0, 0.01)["snippet_ate"]
    assert wrong > base["constant_forward_snippet_ate"]


class NetworkBackend:
    """The pose half of a runtime backend over a torch pose net: what the node's ``relative_pose`` calls."""

    def __init__(self, pose_net: torch.nn.Module) -> None:
        self.pose_net = pose_net

    def infer_pose(self, target: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, None]:
        with torch.no_grad():
            poses = self.pose_net(torch.from_numpy(target), torch.from_numpy(sources))[0]
        return poses[0].double().numpy(), None


@pytest.mark.parametrize("num_sources", [2, 4])
def test_the_benchmark_chains_the_pose_net_as_the_node_does(num_sources: int) -> None:
    # A pose net with random weights (and a large pose scale, so every step differs) over random frames: the
    # benchmark's trajectory must be the node's, window by window, for the paper's 3- and 5-frame snippets.
    torch.manual_seed(num_sources)
    pose_net = posenet(num_sources=num_sources, with_mask=False, pose_scale=0.5).double().eval()
    images = torch.randn(9, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        bench = predicted_poses(pose_net, images, torch.device("cpu"))
    backend, length = NetworkBackend(pose_net), num_sources + 1
    frames = [image[None].numpy() for image in images]
    node = {}
    for newest in range(length - 1, len(frames)):
        T_prev_current, T_catch_up, _ = relative_pose(backend, frames[newest - length + 1: newest + 1],
                                                      first=newest == length - 1)
        if T_catch_up is not None:  # frame t-1 in the first frame's camera
            node[newest - 1] = T_catch_up
        node[newest] = node[newest - 1] @ T_prev_current
    assert len(bench) == len(frames)
    for frame, pose in node.items():
        np.testing.assert_allclose(bench[frame], pose, atol=1e-9)
    # The frames before the node's first pose (none for 3 frames) take the first window's: T_0<-c @ inv(T_k<-c).
    center = length // 2
    with torch.no_grad():
        first = pose_net(images[center][None], images[[k for k in range(length) if k != center]][None])[0][0]
    T_source_target = [pose_vec_to_mat(vector.numpy()) for vector in first]
    T_source_target.insert(center, np.eye(4))
    for frame in range(1, length - 2):
        np.testing.assert_allclose(bench[frame], T_source_target[0] @ np.linalg.inv(T_source_target[frame]), atol=1e-9)
    with pytest.raises(ValueError, match="fewer than the pose net's window"):
        predicted_poses(pose_net, images[: length - 1], torch.device("cpu"))
    assert np.linalg.norm(bench[-1][:3, 3]) > 0.01  # the steps are not all zero


def test_one_normalisation_for_networks_and_ssim() -> None:
    ramp = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    np.testing.assert_allclose(to_unit_range(normalise(ramp)).numpy(), ramp.numpy() / 255.0, atol=1e-6)
    np.testing.assert_allclose(normalise(ramp).numpy(), (ramp.numpy() / 255.0 - IMAGE_MEAN) / IMAGE_STD, atol=1e-6)


# ---- health ----------------------------------------------------------------------------------------------------

def test_health_statistics_by_hand() -> None:
    K = torch.tensor([[[100.0, 0, 50], [0, 100.0, 20], [0, 0, 1]]])
    # Disparity 2 on one half and 6 on the other: mean 4, std 2 -> variation 0.5; no pixel near 0.01 or 10.01.
    disparity = torch.cat([torch.full((1, 1, 4, 5), 2.0), torch.full((1, 1, 4, 5), 6.0)], dim=3)
    poses = torch.tensor([[[0.03, 0.0, 0.04, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.002, 0.0]]])
    stats = training_health(disparity, poses, K, alpha=10.0, beta=0.01)
    assert stats["disparity_variation"] == pytest.approx(2.0 / 4.0 * math.sqrt(40 / 39), rel=1e-6)  # unbiased std
    assert stats["saturated_fraction"] == 0.0
    # Median disparity: the lower middle of 20 twos and 20 sixes is 2. Source 0: 100 x 0.05 x 2 = 10 px; source 1:
    # 100 x 0.002 = 0.2 px; mean 5.1 px.
    assert stats["motion_px"] == pytest.approx(5.1, rel=1e-5)
    pinned = torch.full((1, 1, 4, 10), 10.0)
    pinned[..., :2] = 3.0
    assert training_health(pinned, poses, K, 10.0, 0.01)["saturated_fraction"] == pytest.approx(0.8)


def test_a_flat_start_that_grows_is_not_a_collapse() -> None:
    # Measured: the paper's recipe flattens (0.049 at step 100 -> 0.039 at 300); a low-disparity start is flat but
    # learning (0.008 at 100 -> 0.018 at 300 -> 0.048 at 400). Only the first is a collapse.
    def verdicts(curve: list[float]) -> list[str]:
        monitor = HealthMonitor(HealthThresholds(warmup_steps=300, patience=3, trend_steps=200))
        said = []
        for i, variation in enumerate(curve):
            said += monitor.update(20 * i, {"disparity_variation": variation, "saturated_fraction": 0.0,
                                            "motion_px": 5.0})[0]
        return said
    shrinking = list(np.linspace(0.049, 0.03, 26))
    rising = list(np.linspace(0.008, 0.048, 26))
    assert len(verdicts(shrinking)) == 1 and verdicts(rising) == []


def test_health_monitor_warns_after_warmup_and_patience_and_clears() -> None:
    monitor = HealthMonitor(HealthThresholds(warmup_steps=100, patience=3))
    flat = {"disparity_variation": 0.01, "saturated_fraction": 0.0, "motion_px": 3.0}
    good = {"disparity_variation": 0.3, "saturated_fraction": 0.0, "motion_px": 3.0}
    assert monitor.update(50, flat) == ([], [])  # a fresh network is flat: no verdict yet
    assert monitor.update(120, flat) == ([], []) and monitor.update(140, flat) == ([], [])
    started, _ = monitor.update(160, flat)
    assert len(started) == 1 and "collapsed" in started[0] and "initial_disparity" in started[0]
    assert monitor.update(180, flat) == ([], [])  # said once
    assert monitor.update(200, good) == ([], ["collapse"])
    still = {**good, "motion_px": 0.01}
    for step in (220, 240):
        monitor.update(step, still)
    started, _ = monitor.update(260, still)
    assert "near zero" in started[0] and "min_motion_px" in started[0]


def test_the_trainer_reports_health_in_its_log_summary_and_tensorboard(sample_cache: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A run whose thresholds call any output collapsed and still: its first step says both, in the printed log and
    in the summary, and the tensorboard log marks the step failing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.trainer import Trainer

    config = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"),
                               ["data.workers=0", "run.progress=false", "optim.max_steps=1"])
    output = Path(str(sample_cache) + "_run")
    trainer = Trainer(config, sample_cache, output)
    trainer.health = HealthMonitor(HealthThresholds(min_disparity_variation=float("inf"),
                                                    min_motion_px=float("inf"), warmup_steps=0, patience=1))
    summary = trainer.fit()
    out = capsys.readouterr().out
    assert "WARNING step 1" in out and "collapsed" in out and "near zero" in out
    assert [w["step"] for w in summary["health_warnings"]] == [1, 1]
    assert summary["history"][0]["disparity_variation"] > 0  # measured on the real step's disparity
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    assert [event.value for event in events.Scalars("health/failing")] == [1.0]


@pytest.mark.slow
def test_the_default_recipe_learns_depth_on_the_bundled_streets(tmp_path: Path) -> None:
    """The regression guard: a short run of the default recipe on the repository's rendered streets must beat a
    constant depth clearly (by a fifth) on the held-out ones; the paper's recipe, which collapses, stays at the
    constant's 0.42. The best of the checkpoints, every 50 steps, because a short run on 320 frames wobbles by up to
    0.08 from one checkpoint to the next; its curves (two threads and one, 700 steps) are in RESULTS ("Fused Adam on
    the CPU"). `make test` runs it on one core beside the rest of the suite, about 9 minutes: a step costs what the
    full-size networks' backward pass costs (35 M parameters), not what the 32x104 images do."""
    from training.learning_bench import run_learning

    record = run_learning(SAMPLE, None, ["data.workers=0"], steps=GUARD_STEPS, eval_every=GUARD_EVERY, seed=0,
                          work_dir=tmp_path, height=32, width=104, progress=False)
    constant = record["baselines"]["constant_depth_abs_rel"]
    curve = [row["abs_rel"] for row in record["curve"]]
    shown = f"val abs_rel every {GUARD_EVERY} steps: {[round(v, 3) for v in curve]}; bar {GUARD_RATIO * constant:.3f}"
    print(shown)
    assert min(curve[1:]) < GUARD_RATIO * constant, shown
    assert record["curve"][-1]["disparity_variation"] > 0.1  # structure, not one value per image
    # The last weights are scored beside the average: the same networks before the first step, others after it.
    first, last = record["curve"][0], record["curve"][-1]
    assert first["last_abs_rel"] == first["abs_rel"]
    assert last["last_abs_rel"] != last["abs_rel"]


def test_every_variant_of_the_learning_ablation_builds_a_config(tmp_path: Path) -> None:
    """A variant whose key or value is mistyped would fail only when its run starts (half an hour into a sweep):
    every shipped variant loads, and a mistyped one is refused by name."""
    variants = load_variants(REPO / "benchmarks" / "learning_ablation.yaml")
    assert "recommended" in variants and "paper" in variants
    for name, spec in variants.items():
        preset = REPO / spec["preset"] if spec["preset"] else None
        config = load_train_config(preset, spec["set"])
        assert config.data.height > 0, name
    mistyped = tmp_path / "variants.yaml"
    mistyped.write_text("typo:\n  preset: null\n  set: [loss.smooth_wieght=0.2]\n")
    with pytest.raises(ConfigError, match="smooth_wieght"):
        load_train_config(None, load_variants(mistyped)["typo"]["set"])


def test_seed_spread_by_hand() -> None:
    from training.learning_bench import seed_spread

    records = [{"final": {"abs_rel": 0.2, "a1": 0.7}}, {"final": {"abs_rel": 0.3, "a1": 0.5}}]
    assert seed_spread(records, ["abs_rel"]) == pytest.approx({"abs_rel": 0.25, "abs_rel_min": 0.2,
                                                               "abs_rel_max": 0.3})


def test_the_table_shows_the_last_weights_beside_the_average() -> None:
    from training.learning_bench import format_table, summarise

    def record(seed: int, averaged: float, last: float | None) -> dict:
        final = {"step": 10}
        for weights, value in (("", averaged), ("last_", last)):
            if value is not None:  # optim.average_decay 0: no last_ keys
                final.update({f"{weights}{split}{key}": value + offset
                              for split, offset in (("", 0.0), ("unseen_", 0.1))
                              for key in ("abs_rel", "a1", "snippet_ate")})
        return {"seed": seed, "steps": 10, "collapsed": seed == 1, "final": final}

    table = summarise({"averaged": [record(0, 0.2, 0.25), record(1, 0.3, 0.35)], "plain": [record(0, 0.4, None)]})
    assert table[0]["unseen_abs_rel"] == pytest.approx(0.35) and table[0]["last_unseen_abs_rel"] == pytest.approx(0.4)
    assert not any(key.startswith("last_") for key in table[1])
    base = {f"{split}{key}": value for split in ("", "unseen_") for key, value in
            (("constant_depth_abs_rel", 0.417), ("constant_depth_a1", 0.321), ("constant_forward_snippet_ate", 0.0346))}
    rows = format_table({"baselines": base, "table": table}).splitlines()
    assert rows[3:] == [
        "| averaged | 2 | 0.250 (0.200-0.300) | 0.250 (0.200-0.300) | 0.2500 (0.2000-0.3000) | "
        "0.350 (0.300-0.400) | 0.350 (0.300-0.400) | 0.3500 (0.3000-0.4000) | 1/2 |",
        "| averaged (last weights) | 2 | 0.300 (0.250-0.350) | 0.300 (0.250-0.350) | 0.3000 (0.2500-0.3500) | "
        "0.400 (0.350-0.450) | 0.400 (0.350-0.450) | 0.4000 (0.3500-0.4500) | - |",
        "| plain | 1 | 0.400 | 0.400 | 0.4000 | 0.500 | 0.500 | 0.5000 | 0/1 |"]


def test_the_benchmarks_say_when_they_fall_back_to_the_sample_streets(tmp_path: Path, capsys) -> None:
    """Without ../shared/data/synth_streets the benchmarks take the repository's sample, and say so: its figures are
    not those of RESULTS, and a run that silently scored the sample once passed for a real one."""
    assert default_streets(tmp_path) == tmp_path and capsys.readouterr().err == ""
    assert default_streets(tmp_path / "missing") == SAMPLE_STREETS
    assert "not comparable" in capsys.readouterr().err and (SAMPLE_STREETS / "val").is_dir()
