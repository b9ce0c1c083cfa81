"""Shared fixtures: paths to the bundled sample and ../shared/data, and a small random-weight bundle."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "test" / "data"
ODOMETRY_06 = SAMPLE / "kitti_odometry" / "sequences" / "06"
DRIVE_0060 = SAMPLE / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_0060_sync"
DRIVE_0001 = SAMPLE / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_0001_sync"
SHARED = REPO.parent / "shared" / "data"
RUNTIME_BUNDLE_VARIABLE = "SFM_TEST_BUNDLE"  # an exported test bundle, for test runs without torch
# Prepended to a subprocess script: any `import torch` in it fails, as on a robot without torch.
BLOCK_TORCH = """
import sys, importlib.abc
class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
"""


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data is present in CI and on developer machines only)")
    return path


def view_synthesis_error(trainer, snippets: range = range(0, 48, 4)) -> float:
    """The trainer's unweighted photometric error on fixed training snippets (a probe that ignores the mask:
    the mask-weighted term rises as the mask opens, view synthesis alone must improve)."""
    import dataclasses

    import torch

    probe = {"images": torch.stack([trainer.train_data[i]["images"] for i in snippets]),
             "K": torch.stack([trainer.train_data[i]["K"] for i in snippets])}
    from training.step import forward_objective

    with torch.no_grad():
        _, terms = forward_objective(trainer.depth_model, trainer.pose_model, probe["images"].to(trainer.device),
                                     probe["K"].to(trainer.device),
                                     dataclasses.replace(trainer.config.loss, explain_weight=0.0))
    return float(terms["photometric"])


def make_small_bundle(folder: str | Path, depth_input_frames: int = 1) -> Path:
    """A bundle of randomly initialised networks at 64x208 (3-frame, with mask), exported to ONNX, in ``folder``;
    ``depth_input_frames`` 2: a depth net that reads the frame and the one before it."""
    import torch

    from sfm_ros.bundle import BundleMetadata, save_networks
    from sfm_ros.export import export_bundle
    from sfm_ros.models import DispNet, PoseExpNet

    torch.manual_seed(0)
    folder = Path(folder)
    metadata = BundleMetadata(height=64, width=208)
    if depth_input_frames != 1:
        metadata = dataclasses.replace(metadata, dispnet={**metadata.dispnet, "input_frames": depth_input_frames})
    save_networks(folder, DispNet(input_frames=depth_input_frames), PoseExpNet(2, with_mask=True), metadata)
    export_bundle(folder, fp16=False, with_mask=True)
    return folder


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_small_bundle``'s bundle; where torch is absent (the Python 3.10 run-time tests, `make test-py310`),
    a copy of the one SFM_TEST_BUNDLE names, exported beforehand by a Python with torch."""
    folder = tmp_path_factory.mktemp("bundle") / "bundle"
    given = os.environ.get(RUNTIME_BUNDLE_VARIABLE)
    if given:
        shutil.copytree(given, folder)
        return folder
    return make_small_bundle(folder)


@pytest.fixture(scope="session")
def two_frame_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_small_bundle``'s bundle with a depth net that reads two frames (needs torch)."""
    return make_small_bundle(tmp_path_factory.mktemp("two_frame") / "bundle", depth_input_frames=2)


@pytest.fixture(scope="session")
def odometry_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sequence 06 of the bundled sample as an MCAP bag with ground-truth odometry."""
    from sfm_ros import kitti
    from sfm_ros.bags import kitti_to_bag

    out = tmp_path_factory.mktemp("bags") / "seq06"
    return kitti_to_bag(kitti.kitti_odometry_sequence(ODOMETRY_06), out, progress=False)


@pytest.fixture
def ros_context():  # pragma: no cover - rclpy machines
    """An rclpy context of the test's own, shut down after it (tests that use it skip where rclpy is missing)."""
    import rclpy

    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)
