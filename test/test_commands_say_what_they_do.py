"""Commands and messages state what the code does: `sfm train --resume` with overrides, a cache of another size,
the temporary cache, `sfm demo --help`, diagnostics keys, and the recovery warning's count of lost messages."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from sfm_ros.cli import build_parser, main
from test.conftest import REPO

PRESET = str(REPO / "config" / "train_cpu_small.yaml")
TINY = ["data.height=32", "data.width=104", "optim.batch_size=2", "data.workers=0", "run.progress=false",
        "run.val_every_epochs=1000", "run.image_every=1000", "data.augment=false"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="training needs torch (absent in the run-time test venv)")
    from training.config import load_train_config
    from training.data import prepare_cache

    config = load_train_config(PRESET, TINY)
    return prepare_cache(config.data, tmp_path_factory.mktemp("cache") / "tiny", progress=False)


@pytest.fixture(scope="module")
def checkpoint(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A step-0 checkpoint of a run configured for 1 step."""
    from training.config import load_train_config
    from training.trainer import Trainer

    output = tmp_path_factory.mktemp("run")
    trainer = Trainer(load_train_config(PRESET, [*TINY, "optim.max_steps=1", f"run.output={output}"]), tiny_cache)
    return trainer.save_checkpoint()


def test_resume_without_config_applies_run_and_optim_overrides(checkpoint: Path, tiny_cache: Path,
                                                               tmp_path: Path) -> None:
    import torch

    output = tmp_path / "continued"
    assert main(["train", "--resume", str(checkpoint), "--cache", str(tiny_cache), "--output", str(output),
                 "--set", "optim.max_steps=2", "--set", "run.checkpoint_every=1"]) == 0
    saved = torch.load(next(output.glob("*.pt")), weights_only=True)  # the new output, with the new schedule
    assert saved["step"] == 2


@pytest.mark.parametrize("override", ["model.with_mask=false", "data.height=64", "loss.ssim_weight=0.5"])
def test_resume_without_config_refuses_what_the_checkpoint_learnt_with(checkpoint: Path, tiny_cache: Path,
                                                                      override: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(checkpoint), "--cache", str(tiny_cache), "--output", str(tmp_path),
                 "--set", override]) == 2
    err = capsys.readouterr().err
    assert "keeps the checkpoint's model, data and loss config" in err and override in err
    assert not list(tmp_path.iterdir())  # refused before any work


def test_a_cache_of_another_size_is_refused(tiny_cache: Path, tmp_path: Path) -> None:
    from training.config import load_train_config
    from training.data import DataError
    from training.trainer import Trainer

    config = load_train_config(PRESET, [*TINY, "data.height=64", "data.width=208", f"run.output={tmp_path}"])
    with pytest.raises(DataError, match=r"prepared at 32x104, but this run trains at 64x208"):
        Trainer(config, tiny_cache)


def test_train_without_a_cache_removes_its_temporary_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch", reason="training needs torch (absent in the run-time test venv)")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    command = ["train", "--config", PRESET, "--output", str(tmp_path / "run")]
    for override in [*TINY, "optim.max_steps=1", "run.checkpoint_every=1000"]:
        command += ["--set", override]
    assert main(command) == 0
    assert list(scratch.iterdir()) == []


def test_demo_help_states_the_step_counts_the_demo_uses(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch", reason="training.demo needs torch (absent in the run-time test venv)")
    from training.demo import CPU_STEPS, GPU_STEPS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    assert f"{CPU_STEPS} on CPU, {GPU_STEPS} on a GPU" in " ".join(capsys.readouterr().out.split())


def test_diagnostics_keys_keep_digits_inside_words() -> None:
    from sfm_ros.errors import error_kind
    from sfm_ros.ros_io import ImageError

    assert error_kind(ImageError("unsupported encoding 32FC1 at 640x480, step 2560")) == \
        "ImageError: unsupported encoding 32FC1 at N, step N"
    # Sizes, counts and stamps still collapse, so one kind of error is one key.
    expected = "ValueError: frame is (N, N, N) mono16 at N s"
    assert error_kind(ValueError("frame is (480, 640, 3) mono16 at 1.5 s")) == expected
    assert error_kind(ValueError("frame is (720, 1280, 4) mono16 at 22.25 s")) == expected


def test_the_recovery_warning_counts_the_recorded_messages_lost(odometry_bag: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    from sfm_ros.bags import BagRecoveredWarning, read_camera_frames

    storage = next(odometry_bag.glob("*.mcap"))
    cut = tmp_path / "cut"
    cut.mkdir()
    data = storage.read_bytes()
    (cut / storage.name).write_bytes(data[: int(len(data) * 0.58)])
    shutil.copy(odometry_bag / "metadata.yaml", cut / "metadata.yaml")
    recorded = yaml.safe_load((odometry_bag / "metadata.yaml").read_text())[
        "rosbag2_bagfile_information"]["message_count"]
    with pytest.warns(BagRecoveredWarning) as warned:
        list(read_camera_frames(cut))
    message = str(warned[0].message)
    recovered = int(message.split("recovered ")[1].split(" ")[0])
    assert 0 < recovered < recorded
    assert f"({recorded - recovered} of the {recorded} messages metadata.yaml says were recorded are lost)" in message
