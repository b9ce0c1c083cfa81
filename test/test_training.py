"""Training data sources on real data, snippets and augmentation, exact resume after a kill, learning."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sfm_ros import kitti
from sfm_ros.bags import BagError, kitti_to_bag
from sfm_ros.config import ConfigError
from sfm_ros.models import DispNet, PoseExpNet
from test.conftest import DRIVE_0060, ODOMETRY_06, REPO, view_synthesis_error
from training.companion import DepthWithCompanion
from training.config import DataConfig, load_train_config
from training.data import (
    DataError,
    SnippetDataset,
    open_source,
    prepare_cache,
    random_colour_jitter,
    random_flip,
    random_scale_crop,
)
from training.normalisation import normalise
from training.step import (
    TrainStep,
    depth_net_input,
    forward_objective,
    learning_rate_factor,
    mirror_where,
    previous_frame_indices,
    sequence_depth_input,
)
from training.trainer import CheckpointError, Trainer, load_checkpoint

TINY = ["data.height=32", "data.width=104", "optim.batch_size=2", "data.workers=0", "run.progress=false",
        "run.log_every=1", "data.augment=true"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"), TINY)
    return prepare_cache(config.data, tmp_path_factory.mktemp("cache") / "tiny", progress=False)


def test_kitti_raw_source_honours_the_static_list_and_motion_filter() -> None:
    (sequence,) = open_source(DRIVE_0060, DataConfig(kitti_camera=(2,)))
    assert sequence.static_keys[0] == "2011_09_26 2011_09_26_drive_0060_sync 0000000000"
    with pytest.raises(DataError, match="after static filtering"):
        prepare_cache(DataConfig(sources=(str(DRIVE_0060),), kitti_camera=(2,), static_filter="list"),
                      Path("/nonexistent/never-written"), progress=False)


def test_eigen_test_scenes_are_excluded(tmp_path: Path) -> None:
    # Pretend the sample drive is an Eigen test scene by naming it so.
    root = tmp_path / "2011_09_26"
    shutil.copytree(DRIVE_0060.parent, root, ignore=shutil.ignore_patterns("*0001*", "velodyne*"))
    (root / "2011_09_26_drive_0060_sync").rename(root / "2011_09_26_drive_0117_sync")
    config = DataConfig(sources=(str(root / "2011_09_26_drive_0117_sync"),), kitti_camera=(2,),
                        static_filter="none")
    with pytest.raises(DataError, match="no training sequence"):
        prepare_cache(config, tmp_path / "cache", progress=False)


def test_odometry_bag_and_image_folder_sources_agree(odometry_bag: Path, tmp_path: Path) -> None:
    (from_kitti,) = open_source(ODOMETRY_06, DataConfig())
    (from_bag,) = open_source(odometry_bag, DataConfig())
    np.testing.assert_allclose(from_bag.K, from_kitti.K)
    np.testing.assert_array_equal(from_bag.stamps_ns, from_kitti.stamps_ns)
    first_bag, first_kitti = next(from_bag.frames()), next(from_kitti.frames())
    np.testing.assert_array_equal(first_bag, first_kitti)
    folder = tmp_path / "images"
    folder.mkdir()
    for path in list(ODOMETRY_06.glob("image_0/*.jpg"))[:5]:
        shutil.copy(path, folder)
    with pytest.raises(DataError, match=r"intrinsics\.yaml"):
        open_source(folder, DataConfig())
    (folder / "intrinsics.yaml").write_text(yaml.safe_dump({"fx": 707.0912, "fy": 707.0912, "cx": 601.8873,
                                                            "cy": 183.1104}))
    (from_folder,) = open_source(folder, DataConfig())
    np.testing.assert_allclose(from_folder.K, from_kitti.K)
    assert len(from_folder.stamps_ns) == 5


def test_compressed_bag_source(tmp_path: Path) -> None:
    bag = kitti_to_bag(kitti.kitti_raw_drive(DRIVE_0060, 2), tmp_path / "jpeg", compressed=True, progress=False)
    (sequence,) = open_source(bag, DataConfig())
    frames = list(sequence.frames())
    assert len(frames) == 20 and frames[0].shape == (375, 1242, 3)
    # JPEG at quality 95 of a JPEG: close to the original frame.
    assert np.abs(frames[0].astype(int) - kitti.load_rgb(kitti.kitti_raw_drive(DRIVE_0060).image_paths[0])).mean() < 3


def test_bad_sources_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "missing", DataConfig())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="not a KITTI raw drive"):
        open_source(tmp_path / "notes", DataConfig())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "frame.png").write_bytes(b"not a png")
    (broken / "intrinsics.yaml").write_text("fx: 1\nfy: 1\ncx: 0\ncy: 0\n")
    with pytest.raises(kitti.KittiError, match="cannot read image"):
        open_source(broken, DataConfig())
    empty = tmp_path / "empty_bag"
    from sfm_ros.bags import BagWriter

    with BagWriter(empty):
        pass
    with pytest.raises(BagError, match="no sensor_msgs Image"):
        open_source(empty, DataConfig())


def test_bag_with_wrong_encoding_and_missing_topic(tmp_path: Path) -> None:
    from sfm_ros.bags import BagWriter
    from sfm_ros.ros_io import CameraModel, make_camera_info, make_header

    bag = tmp_path / "yuv"
    with BagWriter(bag) as writer:
        types = writer.types
        header = make_header(types, 1, "cam")
        writer.write("/cam/camera_info", make_camera_info(types, CameraModel(np.eye(3) * 100, 4, 4), header), 1)
        writer.write("/cam/image_raw", types.Image(header=header, height=4, width=4, encoding="yuv422",
                                                   is_bigendian=0, step=8, data=np.zeros(32, np.uint8)), 1)
    with pytest.raises(Exception, match="unsupported image encoding 'yuv422'"):
        open_source(bag, DataConfig())
    with pytest.raises(BagError, match="'/other' is not in the bag"):
        open_source(bag, DataConfig(image_topic="/other"))


def test_scale_crop_keeps_projections_consistent() -> None:
    rng = np.random.default_rng(0)
    images = np.zeros((3, 64, 208, 3), np.uint8)
    K = np.array([[120.0, 0, 103.5], [0, 120.0, 31.5], [0, 0, 1]])
    point = np.array([0.7, -0.3, 6.0])
    u, v = (K @ point)[:2] / point[2]
    images[:, round(v), round(u)] = 255
    augmented, K_aug = random_scale_crop(images, K, rng, 1.15)
    u_aug, v_aug = (K_aug @ point)[:2] / point[2]
    bright = np.unravel_index(np.argmax(augmented[1, :, :, 0]), augmented.shape[1:3])
    assert abs(bright[0] - v_aug) <= 1.0 and abs(bright[1] - u_aug) <= 1.0
    assert augmented.shape == images.shape


def test_flip_mirrors_the_snippet_and_its_camera() -> None:
    images = np.zeros((3, 64, 208, 3), dtype=np.uint8)
    K = np.array([[120.0, 0, 100.5], [0, 120.0, 31.5], [0, 0, 1]])
    point = np.array([0.7, -0.3, 6.0])
    u, v = (K @ point)[:2] / point[2]
    images[:, round(v), round(u)] = 255
    flips = 0
    for seed in range(8):
        flipped, K_flip = random_flip(images, K, np.random.default_rng(seed))
        if K_flip is K:  # left as it was
            assert flipped is images
            continue
        flips += 1
        # The mirrored image shows the mirrored world (-X, Y, Z) through K with cx -> W - 1 - cx.
        assert K_flip[0, 2] == pytest.approx(208 - 1 - 100.5)
        u_flip, v_flip = (K_flip @ (point * [-1, 1, 1]))[:2] / point[2]
        bright = np.unravel_index(np.argmax(flipped[1, :, :, 0]), flipped.shape[1:3])
        assert abs(bright[0] - v_flip) <= 0.5 and abs(bright[1] - u_flip) <= 0.5
    assert 0 < flips < 8


def test_mirror_where_flips_only_the_flagged_images() -> None:
    images = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).view(2, 1, 1, 3)
    mirrored = mirror_where(images, torch.tensor([True, False]))
    assert mirrored.flatten().tolist() == [3.0, 2.0, 1.0, 4.0, 5.0, 6.0]


def test_flip_depth_draws_a_flag_and_leaves_the_snippet_as_recorded(tiny_cache: Path) -> None:
    plain = SnippetDataset(tiny_cache, "train", 3, augment=True, seed=3)
    flagged = SnippetDataset(tiny_cache, "train", 3, augment=True, seed=3, flip_depth=True)
    flags = []
    for index in range(len(plain)):
        item, with_flag = plain[index], flagged[index]
        assert "depth_mirrored" not in item
        # The flag is drawn after the scale-crop: the images and camera are those of a run without it.
        np.testing.assert_array_equal(with_flag["images"].numpy(), item["images"].numpy())
        np.testing.assert_array_equal(with_flag["K"].numpy(), item["K"].numpy())
        flags.append(bool(with_flag["depth_mirrored"]))
    assert 10 < sum(flags) < len(flags) - 10  # about half of 49


def test_flip_depth_shows_only_the_depth_net_a_mirrored_target(tiny_cache: Path) -> None:
    batch = torch.utils.data.default_collate([SnippetDataset(tiny_cache, "train", 3)[i] for i in (0, 20)])
    torch.manual_seed(0)
    depth_net, pose_net = DispNet(), PoseExpNet(2, with_mask=True)
    config = load_train_config(None, []).loss
    flags = torch.tensor([True, False])
    with torch.no_grad():
        _, terms = forward_objective(depth_net, pose_net, batch["images"], batch["K"], config, depth_mirrored=flags)
        _, recorded = forward_objective(depth_net, pose_net, batch["images"], batch["K"], config)
        target = normalise(batch["images"][:, 1])
        # Independently: the depth net on the mirrored image, its output mirrored back; the second one as it is.
        mirrored_back = depth_net(target[:1].flip(-1))[0].flip(-1)
        as_recorded = depth_net(target[1:])[0]
    torch.testing.assert_close(terms["disparity"][:1], mirrored_back)
    torch.testing.assert_close(terms["disparity"][1:], as_recorded)
    assert (terms["disparity"][0] - recorded["disparity"][0]).abs().max() > 1e-4  # the untrained net is not symmetric
    torch.testing.assert_close(terms["poses"], recorded["poses"])  # the pose net sees the snippet as recorded


def test_the_trainer_passes_the_depth_flags_to_its_step(tiny_cache: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor | None] = []
    original = TrainStep.__call__

    def recording(self: TrainStep, images: torch.Tensor, K: torch.Tensor,
                  depth_mirrored: torch.Tensor | None = None) -> dict:
        seen.append(depth_mirrored)
        return original(self, images, K, depth_mirrored)

    monkeypatch.setattr(TrainStep, "__call__", recording)
    histories = {}
    for flip_depth in (False, True):
        seen.clear()
        config = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"),
                                   [*TINY, "optim.max_steps=2", f"data.flip_depth={str(flip_depth).lower()}",
                                    f"run.output={tmp_path / str(flip_depth)}", "run.checkpoint_every=1000"])
        histories[flip_depth] = [row["total"] for row in Trainer(config, tiny_cache).fit()["history"]]
        if flip_depth:
            assert all(flags.dtype == torch.bool and flags.shape == (2,) for flags in seen)
            assert any(bool(flags.any()) for flags in seen)  # some target was mirrored in these two batches
        else:
            assert seen == [None, None]
    assert histories[True] != histories[False]


def frames_numbered(count: int) -> torch.Tensor:
    """[count,3,2,2] images, each filled with its index."""
    return torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 3, 2, 2).clone()


@pytest.mark.parametrize("length", [3, 5])
def test_the_depth_net_reads_the_target_then_the_frame_before_it(length: int) -> None:
    snippets = frames_numbered(length)[None].repeat(2, 1, 1, 1, 1)  # [2,L,3,2,2], frame l filled with l
    center = length // 2
    single, two = depth_net_input(snippets, 1), depth_net_input(snippets, 2)
    assert single.shape == (2, 3, 2, 2) and bool((single == center).all())
    assert two.shape == (2, 6, 2, 2)
    assert bool((two[:, :3] == center).all()) and bool((two[:, 3:] == center - 1).all())


def test_a_sequences_first_frame_reads_the_one_after_it() -> None:
    assert previous_frame_indices(4).tolist() == [1, 0, 1, 2]
    with pytest.raises(ValueError, match="at least 2 frames"):
        previous_frame_indices(1)
    images = frames_numbered(4)
    pairs = sequence_depth_input(images, torch.tensor([0, 3]), 2)
    assert pairs[:, 0, 0, 0].tolist() == [0.0, 3.0] and pairs[:, 3, 0, 0].tolist() == [1.0, 2.0]
    torch.testing.assert_close(sequence_depth_input(images, torch.tensor([2]), 1), images[2:3])


def test_a_two_frame_depth_net_sees_the_frame_before_its_target(tiny_cache: Path) -> None:
    batch = torch.utils.data.default_collate([SnippetDataset(tiny_cache, "train", 3)[i] for i in (0, 20)])
    torch.manual_seed(0)
    depth_net, pose_net = DispNet(input_frames=2), PoseExpNet(2, with_mask=True)
    config = load_train_config(None, []).loss
    with torch.no_grad():
        _, terms = forward_objective(depth_net, pose_net, batch["images"], batch["K"], config,
                                     depth_mirrored=torch.tensor([True, False]), depth_input_frames=2)
        images = normalise(batch["images"])
        # Independently: both frames mirrored as one for the first snippet; as recorded for the second.
        pair = torch.cat([images[:, 1], images[:, 0]], dim=1)
        torch.testing.assert_close(terms["disparity"][:1], depth_net(pair[:1].flip(-1))[0].flip(-1))
        torch.testing.assert_close(terms["disparity"][1:], depth_net(pair[1:])[0])
        with_target_twice = depth_net(torch.cat([images[1:, 1], images[1:, 1]], dim=1))[0]
    assert (terms["disparity"][1:] - with_target_twice).abs().max() > 1e-4  # the second frame counts


def test_a_depth_net_and_its_companion_are_each_scored_on_their_own_view_synthesis(tiny_cache: Path) -> None:
    batch = torch.utils.data.default_collate([SnippetDataset(tiny_cache, "train", 3)[i] for i in (0, 20)])
    torch.manual_seed(0)
    pair, pose_net = DepthWithCompanion(), PoseExpNet(2, with_mask=True)
    pair.initialise_disparity(0.3)
    config = load_train_config(None, []).loss
    flags = torch.tensor([True, False])
    total, terms = forward_objective(pair, pose_net, batch["images"], batch["K"], config, depth_mirrored=flags,
                                     depth_input_frames=2)
    # Independently: each net as the only depth net, with the same pose net; the objective is their mean.
    two, two_terms = forward_objective(pair.two_frame, pose_net, batch["images"], batch["K"], config,
                                       depth_mirrored=flags, depth_input_frames=2)
    companion, companion_terms = forward_objective(pair.companion, pose_net, batch["images"], batch["K"], config,
                                                   depth_mirrored=flags)
    assert abs(float(two.detach() - companion.detach())) > 1e-3  # they disagree, so a mean of one twice would show
    torch.testing.assert_close(total, (two + companion) / 2)
    for name in ("photometric", "smoothness"):
        torch.testing.assert_close(terms[name], (two_terms[name] + companion_terms[name]) / 2)
    torch.testing.assert_close(terms["explainability"], two_terms["explainability"])  # one mask, counted once
    torch.testing.assert_close(terms["disparity"], two_terms["disparity"])  # what the bundle keeps
    # Each net learns from its own view synthesis only (half of it): nothing of the other is on its path.
    total.backward()
    in_pair = {name: parameter.grad.clone() for name, parameter in pair.named_parameters()}
    pose_in_pair = [parameter.grad.clone() for parameter in pose_net.parameters()]
    pair.zero_grad()
    pose_net.zero_grad()
    (companion / 2).backward()
    for name, parameter in pair.companion.named_parameters():
        torch.testing.assert_close(in_pair[f"companion.{name}"], parameter.grad)
    assert all(parameter.grad is None for parameter in pair.two_frame.parameters())
    # The pose net learns from both (half of each).
    (two / 2).backward()
    for paired, both in zip(pose_in_pair, (p.grad for p in pose_net.parameters()), strict=True):
        torch.testing.assert_close(paired, both)
    assert any(float(g.abs().max()) > 0 for g in pose_in_pair)
    with pytest.raises(ValueError, match="reads 2 frames, 6 channels; got 3"):
        pair.separate(torch.zeros(1, 3, 32, 104))


def test_a_two_frame_bundle_records_it_and_exports_a_six_channel_depth_model(tiny_cache: Path, tmp_path: Path
                                                                            ) -> None:
    from sfm_ros.bundle import BundleError, load_networks, read_metadata
    from sfm_ros.export import export_bundle
    from training.trainer import initialise_from_bundle

    preset = str(REPO / "config" / "train_cpu_small.yaml")
    common = [*TINY, "optim.max_steps=1", "run.checkpoint_every=1000", "run.val_every_epochs=1000"]
    config = load_train_config(preset, [*common, "model.depth_input_frames=2", f"run.output={tmp_path / 'two'}"])
    trainer = Trainer(config, tiny_cache)
    trainer.fit()
    bundle = trainer.save_bundle()
    assert read_metadata(bundle).dispnet["input_frames"] == 2
    depth_net = load_networks(bundle)[0]
    assert next(m for m in depth_net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 6
    assert export_bundle(bundle, fp16=False)["models"]["depth"]["inputs"]["image"][1] == 6
    single = load_train_config(preset, [*common, f"run.output={tmp_path / 'one'}"])
    single_trainer = Trainer(single, tiny_cache)
    assert "input_frames" not in read_metadata(single_trainer.save_bundle()).dispnet  # as older releases wrote it
    with pytest.raises(BundleError, match=r"depth_frames: bundle 2, config 1 \(model.depth_input_frames\)"):
        initialise_from_bundle(single_trainer.depth_net, single_trainer.pose_net, bundle, single)


def test_a_companion_trains_beside_the_two_frame_net_and_stays_out_of_the_bundle(tiny_cache: Path, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    from sfm_ros.bundle import load_networks, read_metadata
    from training import trainer as trainer_module

    preset = str(REPO / "config" / "train_cpu_small.yaml")
    common = [*TINY, "run.checkpoint_every=1000", "run.val_every_epochs=1000", "model.depth_input_frames=2",
              "model.depth_companion=true"]
    config = load_train_config(preset, [*common, "optim.max_steps=2", f"run.output={tmp_path / 'c'}"])
    trainer = Trainer(config, tiny_cache)
    start = {name: value.clone() for name, value in trainer.depth_net.state_dict().items()}
    trainer.fit()
    assert all(not torch.equal(start[name], value) for name, value in trainer.depth_net.state_dict().items()
               if name.endswith("weight"))  # both nets learnt
    bundle = trainer.save_bundle()
    assert read_metadata(bundle).dispnet == {"alpha": 10.0, "beta": 0.01, "input_frames": 2}  # a two-frame bundle
    depth_net = load_networks(bundle)[0]
    averaged = trainer.averaged[0].network.state_dict()
    assert depth_net.state_dict().keys() == averaged.keys()
    for name, value in depth_net.state_dict().items():  # the two-frame net's averaged weights, nothing else
        torch.testing.assert_close(value, averaged[name].cpu())
    # Validation scores the two-frame net alone: as a run without a companion holding the same weights does.
    alone = Trainer(load_train_config(preset, [*common[:-1], "optim.max_steps=2", f"run.output={tmp_path / 'a'}"]),
                    tiny_cache)
    alone.fit()
    for average, trained in zip(alone.averaged, trainer.averaged, strict=True):
        average.network.load_state_dict(trained.network.state_dict())
    assert alone.validate() == trainer.validate()
    # Fine-tuning from it with a companion: the two-frame net starts from the bundle, the companion afresh.
    tuned = Trainer(load_train_config(preset, [*common, "optim.max_steps=1", f"model.init_from={bundle}",
                                               f"run.output={tmp_path / 't'}"]), tiny_cache)
    for name, value in depth_net.state_dict().items():
        torch.testing.assert_close(tuned.depth_net.two_frame.state_dict()[name], value)
    fresh = Trainer(config, tiny_cache, tmp_path / "fresh")  # the same seed, no bundle
    for name, value in fresh.depth_net.companion.state_dict().items():
        torch.testing.assert_close(tuned.depth_net.companion.state_dict()[name], value)
    monkeypatch.setattr(trainer_module, "_init_distributed", lambda: (0, 2))
    with pytest.raises(ValueError, match="depth_companion is not supported with several processes"):
        Trainer(config, tiny_cache, tmp_path / "ddp")


class FixedDraws:
    """A random generator whose draws are given: random() -> ``first``, then uniform() -> the queued values."""

    def __init__(self, first: float, uniforms: list[float]) -> None:
        self.first, self.uniforms = first, list(uniforms)

    def random(self) -> float:
        return self.first

    def uniform(self, low: float, high: float) -> float:
        value = self.uniforms.pop(0)
        assert low <= value <= high
        return value


def jitter(images: np.ndarray, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
           hue: float = 0.0) -> np.ndarray:
    return random_colour_jitter(images, FixedDraws(0.0, [brightness, contrast, saturation, hue]))


def test_colour_jitter_by_hand() -> None:
    grey = np.array([[[[100, 100, 100], [50, 50, 50], [150, 150, 150]]]], dtype=np.uint8)  # [1,1,3,3]
    assert jitter(grey, brightness=1.2)[0, 0].tolist() == [[120] * 3, [60] * 3, [180] * 3]
    # Contrast scales the distance from the mean grey (100): 50 -> 60, 150 -> 140.
    assert jitter(grey, contrast=0.8)[0, 0].tolist() == [[100] * 3, [60] * 3, [140] * 3]
    red = np.array([[[[255, 0, 0]]]], dtype=np.uint8)
    # Saturation 0.8 pulls red towards its Rec. 601 grey, 0.299 x 255 = 76.2: 76.2 + 0.8 x (255 - 76.2) = 219.2.
    assert jitter(red, saturation=0.8)[0, 0, 0].tolist() == [219, 15, 15]
    # Nothing drawn changes a grey pixel's grey under saturation or hue.
    assert jitter(grey, saturation=1.2, hue=0.1).tolist() == grey.tolist()


def test_colour_jitter_turns_hue_about_the_grey_axis() -> None:
    """A hue turn of 0.1 (36 degrees) of red, computed with the published YIQ -> RGB coefficients (not the
    forward matrix the code inverts): Y 0.299, (I, Q) = (0.596, 0.211) turned by 36 degrees."""
    angle = 2 * np.pi * 0.1
    i, q = 0.596 * np.cos(angle) - 0.211 * np.sin(angle), 0.596 * np.sin(angle) + 0.211 * np.cos(angle)
    expected = [0.299 + 0.956 * i + 0.619 * q, 0.299 - 0.272 * i - 0.647 * q, 0.299 - 1.106 * i + 1.703 * q]
    out = jitter(np.array([[[[255, 0, 0]]]], dtype=np.uint8), hue=0.1)[0, 0, 0]
    np.testing.assert_allclose(out, np.clip(np.array(expected) * 255, 0, 255), atol=2.0)


def test_colour_jitter_changes_a_snippet_as_one_and_half_of_them() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    same = np.repeat(frames[:1], 3, axis=0)
    out = jitter(same, brightness=0.9, contrast=1.1, saturation=0.85, hue=-0.05)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()  # one change for every frame
    assert random_colour_jitter(frames, FixedDraws(0.99, [1.2, 1.2, 1.2, 0.1])) is frames  # not drawn: unchanged
    changed = [not np.array_equal(random_colour_jitter(frames, np.random.default_rng(seed)), frames)
               for seed in range(200)]
    assert 70 < sum(changed) < 130  # half of 200, within 4 standard deviations


def test_colour_augment_keeps_the_geometric_draws(tiny_cache: Path) -> None:
    plain = SnippetDataset(tiny_cache, "train", 3, augment=True, seed=3, flip_depth=True)
    coloured = SnippetDataset(tiny_cache, "train", 3, augment=True, seed=3, flip_depth=True, colour_augment=True)
    changed = 0
    for index in range(len(plain)):
        item, with_colour = plain[index], coloured[index]
        np.testing.assert_array_equal(with_colour["K"].numpy(), item["K"].numpy())
        assert bool(with_colour["depth_mirrored"]) == bool(item["depth_mirrored"])
        changed += not torch.equal(with_colour["images"], item["images"])
    assert 10 < changed < len(plain) - 10


def test_snippets_have_the_target_in_the_middle(tiny_cache: Path) -> None:
    dataset = SnippetDataset(tiny_cache, "train", 3)
    assert len(dataset) == 49  # 51 frames, none static by motion, minus the two ends
    item = dataset[0]
    frames = np.load(tiny_cache / "frames.npy", mmap_mode="r")
    np.testing.assert_array_equal(item["images"][1].permute(1, 2, 0).numpy(), frames[1])
    assert item["K"].dtype == torch.float32 and item["images"].dtype == torch.uint8


def test_frame_strides_draw_snippets_with_wider_gaps(tiny_cache: Path) -> None:
    frames = np.load(tiny_cache / "frames.npy", mmap_mode="r")
    wide = SnippetDataset(tiny_cache, "train", 3, frame_strides=(2,))
    assert len(wide) == 47  # 51 frames minus two at each end
    item = wide[0]
    for position, frame in enumerate((0, 2, 4)):
        np.testing.assert_array_equal(item["images"][position].permute(1, 2, 0).numpy(), frames[frame])
    assert int(item["frame"]) == 2

    mixed = SnippetDataset(tiny_cache, "train", 3, frame_strides=(1, 2))
    assert len(mixed) == 49  # every target of stride 1 stays; stride 2 only where it fits
    seen = {}
    for epoch in range(6):
        mixed.epoch = epoch
        for index in range(len(mixed)):
            item = mixed[index]
            center = int(item["frame"])
            before = item["images"][0].permute(1, 2, 0).numpy()
            stride = next(s for s in (1, 2) if np.array_equal(before, frames[center - s]))
            np.testing.assert_array_equal(item["images"][2].permute(1, 2, 0).numpy(), frames[center + stride])
            seen.setdefault(center, set()).add(stride)
    assert seen[1] == {1} and seen[49] == {1}  # at the ends only stride 1 fits
    assert sum(strides == {1, 2} for strides in seen.values()) > 40  # elsewhere both are drawn (47 centres)
    with pytest.raises(ValueError, match="positive"):
        SnippetDataset(tiny_cache, "train", 3, frame_strides=(0,))


def _train_command(cache: Path, output: Path, steps: int) -> list[str]:
    overrides = [*TINY, f"optim.max_steps={steps}", "run.checkpoint_every=2", f"run.output={output}"]
    command = [sys.executable, "-m", "sfm_ros.cli", "train", "--config", str(REPO / "config" / "train_cpu_small.yaml"),
               "--cache", str(cache)]
    for override in overrides:
        command += ["--set", override]
    return command


def test_resume_after_a_kill_continues_exactly(tiny_cache: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(tiny_cache, killed, 10_000), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    checkpoint = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output.decode()[-2000:]
    state = load_checkpoint(checkpoint)
    stopped_at = state["step"]
    assert stopped_at >= 2

    overrides = [*TINY, f"optim.max_steps={stopped_at + 3}", f"run.output={tmp_path / 'straight'}",
                 "run.checkpoint_every=1000"]
    config = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"), overrides)
    straight = Trainer(config, tiny_cache).fit()["history"]
    resumed_trainer = Trainer(load_train_config(str(REPO / "config" / "train_cpu_small.yaml"),
                                                [*overrides[:-2], f"run.output={tmp_path / 'resumed'}"]), tiny_cache)
    resumed_trainer.resume(checkpoint)
    resumed = resumed_trainer.fit()["history"]
    after = {row["step"]: row["total"] for row in straight if row["step"] > stopped_at}
    again = {row["step"]: row["total"] for row in resumed}
    assert sorted(again) == sorted(after) and len(after) == 3
    for step, value in after.items():
        assert again[step] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, value, again[step])


def test_learning_rate_decay_follows_a_half_cosine_after_its_start() -> None:
    # 10 steps, decay from 0.6 of the run to 0.1: constant up to 6 steps done, then
    # 0.1 + 0.9 * (1 + cos(pi * t)) / 2 with t = (k / 10 - 0.6) / 0.4.
    factors = [learning_rate_factor(k, 10, 0.6, 0.1) for k in range(11)]
    assert factors[:7] == [1.0] * 7
    assert factors[7] == pytest.approx(0.1 + 0.9 * (1 + np.cos(np.pi / 4)) / 2)  # t = 1/4: 0.868
    assert factors[8] == pytest.approx(0.55)  # t = 1/2: halfway between 1 and 0.1
    assert factors[9] == pytest.approx(0.1 + 0.9 * (1 - np.sqrt(0.5)) / 2)  # t = 3/4: 0.232
    assert factors[10] == pytest.approx(0.1)
    assert all(learning_rate_factor(k, 10, 1.0, 0.1) == 1.0 for k in range(11))  # 1.0: the paper's constant rate


def test_the_trainer_steps_with_the_decayed_learning_rate(tiny_cache: Path, tmp_path: Path) -> None:
    # 4 steps, decay from half the run to 0: steps with 0, 1, 2 done use lr, the last one (3 done, t = 1/2) lr / 2.
    config = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"),
                               [*TINY, "optim.max_steps=4", "optim.lr=2e-4", "optim.lr_decay_start=0.5",
                                "optim.lr_final_factor=0.0", f"run.output={tmp_path}", "run.checkpoint_every=1000"])
    used: list[float] = []
    Trainer(config, tiny_cache).fit(on_step=lambda run: used.append(run.optimizer.param_groups[0]["lr"]))
    assert used == pytest.approx([2e-4, 2e-4, 2e-4, 1e-4])
    # A CUDA-graph step bakes the rate in: the combination is refused up front, on a CPU too.
    with pytest.raises(ValueError, match="run.cuda_graph=false"):
        Trainer(dataclasses.replace(config, run=dataclasses.replace(config.run, cuda_graph=True)), tiny_cache)


def test_the_bundle_takes_the_moving_average_of_the_weights(tiny_cache: Path, tmp_path: Path) -> None:
    """optim.average_decay 0.6: the newest step weighs max(0.4, 1 / (n + 1)) after n steps in the average, so after
    three steps w1, w2, w3 it is a3 = a2 + 0.4 (w3 - a2) with a2 = (w1 + w2) / 2; the bundle holds a3, the trained
    networks w3. Resumed from its checkpoint after two steps, the run ends with the same average; resumed from a
    checkpoint without averages, the bundle is that checkpoint's weights until the averages take a step."""
    from safetensors.torch import load_file

    preset = str(REPO / "config" / "train_cpu_small.yaml")
    averaged = [*TINY, "optim.average_decay=0.6", "run.checkpoint_every=2"]
    config = load_train_config(preset, [*averaged, "optim.max_steps=3", f"run.output={tmp_path / 'a'}"])
    trained: list[dict[str, torch.Tensor]] = []
    trainer = Trainer(config, tiny_cache)
    trainer.fit(on_step=lambda run: trained.append({k: v.clone() for k, v in run.depth_net.state_dict().items()}))
    w1, w2, w3 = trained
    bundle = load_file(str(tmp_path / "a" / "bundle" / "depth.safetensors"))
    name = "disp_heads.0.weight"
    a2 = (w1[name] + w2[name]) / 2
    torch.testing.assert_close(bundle[name], a2 + 0.4 * (w3[name] - a2), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(bundle[name], w3[name])
    torch.testing.assert_close(trainer.depth_net.state_dict()[name], w3[name])

    checkpoint = tmp_path / "b" / "checkpoint.pt"
    two = load_train_config(preset, [*averaged, "optim.max_steps=2", f"run.output={tmp_path / 'b'}"])
    Trainer(two, tiny_cache).fit()
    resumed = Trainer(dataclasses.replace(config, run=dataclasses.replace(config.run, output=str(tmp_path / "c"))),
                      tiny_cache)
    resumed.resume(checkpoint)
    resumed.fit()
    torch.testing.assert_close(load_file(str(tmp_path / "c" / "bundle" / "depth.safetensors"))[name], bundle[name],
                               rtol=1e-5, atol=1e-7)

    # A checkpoint without averages (written with the last weights), resumed with averaging at its last step: the
    # bundle is the checkpoint's weights, not the copies the averages were made from before the resume.
    last = tmp_path / "d"
    Trainer(load_train_config(preset, [*TINY, "optim.average_decay=0", "optim.max_steps=2",
                                       f"run.output={last}"]), tiny_cache).fit()
    rebundled = Trainer(dataclasses.replace(two, run=dataclasses.replace(two.run, output=str(tmp_path / "e"))),
                        tiny_cache)
    rebundled.resume(last / "checkpoint.pt")
    rebundled.fit()
    torch.testing.assert_close(load_file(str(tmp_path / "e" / "bundle" / "depth.safetensors"))[name],
                               load_checkpoint(last / "checkpoint.pt")["depth_net"][name])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"\x80\x02 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not an sfm_ros checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "something-else"}, path)
    with pytest.raises(CheckpointError, match="not an sfm_ros checkpoint"):
        load_checkpoint(path)


@pytest.mark.slow
def test_short_cpu_run_lowers_the_photometric_error(tiny_cache: Path, tmp_path: Path) -> None:
    config = load_train_config(str(REPO / "config" / "train_cpu_small.yaml"),
                               [*TINY, "optim.max_steps=80", "optim.batch_size=4", f"run.output={tmp_path}",
                                "run.checkpoint_every=1000", "data.augment=false"])
    trainer = Trainer(config, tiny_cache)
    before = view_synthesis_error(trainer)
    summary = trainer.fit()
    after = view_synthesis_error(trainer)
    assert after < 0.9 * before, (before, after)
    assert summary["speed_path"] == "cpu: fp32, eager"
    bundle = Path(summary["bundle"])
    assert (bundle / "sfm.json").is_file() and (bundle / "depth.safetensors").is_file()
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


def test_resume_refuses_a_different_objective(tiny_cache: Path, tmp_path: Path) -> None:
    preset = str(REPO / "config" / "train_cpu_small.yaml")
    trainer = Trainer(load_train_config(preset, [*TINY, f"run.output={tmp_path}"]), tiny_cache)
    checkpoint = trainer.save_checkpoint()
    other = Trainer(load_train_config(preset, [*TINY, f"run.output={tmp_path}", "loss.ssim_weight=0.85"]), tiny_cache)
    with pytest.raises(CheckpointError, match="loss config differs"):
        other.resume(checkpoint)
    from training.trainer import config_from_checkpoint

    assert config_from_checkpoint(checkpoint) == trainer.config

    # A checkpoint from before a field existed (no data.frame_strides) resumes: the field takes its default.
    state = torch.load(checkpoint, weights_only=True)
    saved = yaml.safe_load(state["config"])
    del saved["data"]["frame_strides"]
    state["config"] = yaml.safe_dump(saved)
    torch.save(state, checkpoint)
    trainer.resume(checkpoint)
    assert trainer.state.step == 0

    # A checkpoint from before loss.out_of_view, loss.smoothness or loss.auto_mask was deleted: the behaviour that
    # stayed resumes; another value trained with an objective that no longer exists, and the error says so. So does a
    # deleted value of a key that stays (loss.smoothness_target=normalised_disparity).
    cases = [("out_of_view", "border", True), ("out_of_view", "zeros", False), ("smoothness", "second_order", True),
             ("smoothness", "edge_aware", False), ("smoothness_target", "normalised_disparity", False),
             ("auto_mask", False, True), ("auto_mask", True, False)]
    for key, value, resumes in cases:
        retired = copy.deepcopy(saved)
        retired["loss"][key] = value
        state["config"] = yaml.safe_dump(retired)
        torch.save(state, checkpoint)
        if resumes:
            trainer.resume(checkpoint)
            assert config_from_checkpoint(checkpoint) == trainer.config
        else:
            with pytest.raises(ConfigError, match=f"loss.{key}={value} was deleted"):
                trainer.resume(checkpoint)


def test_two_process_ddp_equals_one_process_with_the_whole_batch(tiny_cache: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo) x batch 2 must train like 1 process x batch 4: each rank takes its share
    of the same batches and DDP averages the gradients."""
    from safetensors.torch import load_file

    preset = str(REPO / "config" / "train_cpu_small.yaml")
    common = [*TINY, "optim.max_steps=3", "run.checkpoint_every=1000", "run.val_every_epochs=1000"]
    single = Trainer(load_train_config(preset, [*common, "optim.batch_size=4", f"run.output={tmp_path / 'one'}"]),
                     tiny_cache)
    initial = {k: v.clone() for k, v in single.depth_net.state_dict().items()}
    single.fit()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "sfm_ros.cli", "train", "--config", preset, "--cache", str(tiny_cache)]
    for override in [*common, "optim.batch_size=2", f"run.output={tmp_path / 'ddp'}"]:
        command += ["--set", override]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["step"] == 3
    ddp = load_file(tmp_path / "ddp" / "bundle" / "depth.safetensors")
    one = load_file(tmp_path / "one" / "bundle" / "depth.safetensors")
    flat = lambda weights: torch.cat([weights[k].flatten() for k in sorted(initial)])  # noqa: E731
    update = torch.linalg.norm(flat(one) - flat(initial))
    difference = torch.linalg.norm(flat(ddp) - flat(one))
    # Same batches, gradients averaged in another order: rounding, which Adam can turn into steps of up to lr
    # for near-zero gradients. Ranks on the same data or summed gradients would be far off.
    assert difference < 0.005 * update, (float(difference), float(update))  # measured: 1e-4
