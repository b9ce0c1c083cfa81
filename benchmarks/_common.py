"""Helpers for the benchmark scripts: a full-size random bundle, its INT8 models, the sample bag."""

from __future__ import annotations

from pathlib import Path

from sfm_ros.bench import git_commit

__all__ = ["REPO", "git_commit", "random_bundle", "sample_bag", "with_int8"]

REPO = Path(__file__).resolve().parents[1]


def random_bundle(folder: Path, height: int = 128, width: int = 416, fp16: bool = True, restructure: bool = True
                  ) -> Path:
    """Randomly initialised paper-size networks, exported; latency does not depend on the weights' values.

    Reused when ``folder`` already holds an export of the same graph form (restructured or as trained).
    """
    import torch

    from sfm_ros.bundle import BundleMetadata, read_metadata, save_networks
    from sfm_ros.export import export_bundle
    from sfm_ros.models import DispNet, PoseExpNet

    graph = "restructured" if restructure else "as-trained"
    if (folder / "sfm.json").is_file() and read_metadata(folder).onnx.get("depth", {}).get("graph") == graph:
        return folder
    torch.manual_seed(0)
    save_networks(folder, DispNet(), PoseExpNet(2, with_mask=True), BundleMetadata(height=height, width=width))
    export_bundle(folder, fp16=fp16, restructure=restructure)
    return folder


def with_int8(bundle: Path, scratch: Path, polyphase: bool = True) -> Path:
    """``bundle`` with onnxruntime INT8 models, quantised once on the sample bag (kept in ``scratch``).

    Re-quantised when the bundle's INT8 depth model was made with the other ``polyphase`` setting.
    """
    from sfm_ros.bundle import onnx_key, read_metadata
    from sfm_ros.quantize import quantize_bundle

    entry = read_metadata(bundle).onnx.get(onnx_key("depth", "int8"))
    if entry is None or bool(entry.get("polyphase_layers")) != polyphase:
        quantize_bundle(bundle, sample_bag(scratch / "sfm_bench_sample_bag"), polyphase=polyphase)
    return bundle


def sample_bag(folder: Path) -> Path:
    """The repository's KITTI odometry sample (sequence 06) as an MCAP bag: real frames to calibrate INT8."""
    from sfm_ros import kitti
    from sfm_ros.bags import kitti_to_bag

    if (folder / "metadata.yaml").is_file():
        return folder
    sequence = kitti.kitti_odometry_sequence(REPO / "test" / "data" / "kitti_odometry" / "sequences" / "06")
    return kitti_to_bag(sequence, folder, progress=False)
