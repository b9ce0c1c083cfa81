"""Model bundle: a folder with ``sfm.json`` (metadata) and safetensors weights; export adds ONNX files.

``sfm.json`` is the one place for the input size, normalisation, network configuration, source count and
training provenance. Weights are safetensors, so loading never unpickles arbitrary objects. Files are
written atomically (temporary name, then rename) and ``sfm.json`` last, so a half-written bundle is
recognisably incomplete rather than silently wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sfm_ros.models import DispNet, PoseExpNet

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "ONNX_SUFFIXES",
    "PRECISIONS",
    "BundleError",
    "BundleMetadata",
    "atomic_write_bytes",
    "load_networks",
    "normalise_images",
    "onnx_key",
    "onnx_path",
    "read_metadata",
    "save_networks",
    "sha256_file",
    "staged_bundle",
    "write_metadata",
]

BUNDLE_FORMAT_VERSION = 1
# The one definition of the networks' input range: (rgb/255 - IMAGE_MEAN) / IMAGE_STD, here [-1, 1] as in the paper.
# Training normalises with it, bundles record it, and SSIM maps back to [0, 1] through it.
IMAGE_MEAN, IMAGE_STD = 0.5, 0.5
# The precisions a user asks for, and the kinds of exported model with their sfm.json key / file-name suffix:
# depth.onnx, depth_fp16.onnx, depth_int8.onnx (onnxruntime's CPU INT8), depth_int8_qdq.onnx (TensorRT's INT8:
# explicit quantization, Q/DQ nodes).
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_SUFFIXES = {"fp32": "", "fp16": "_fp16", "int8": "_int8", "int8_qdq": "_int8_qdq"}
METADATA_FILE = "sfm.json"
DEPTH_WEIGHTS = "depth.safetensors"
POSE_WEIGHTS = "pose.safetensors"


class BundleError(RuntimeError):
    """A model bundle is missing, incomplete, corrupt or of another format."""


@dataclasses.dataclass(frozen=True)
class BundleMetadata:
    """What ``sfm.json`` holds. Images are normalised as (rgb/255 - mean) / std, channels RGB."""

    height: int
    width: int
    num_sources: int = 2
    mean: tuple[float, float, float] = (IMAGE_MEAN,) * 3
    std: tuple[float, float, float] = (IMAGE_STD,) * 3
    dispnet: dict[str, Any] = dataclasses.field(default_factory=lambda: {"alpha": 10.0, "beta": 0.01})
    posenet: dict[str, Any] = dataclasses.field(default_factory=lambda: {"with_mask": True, "pose_scale": 0.01})
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    onnx: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = BUNDLE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise BundleError(f"bundle input size must be positive multiples of 8, got {self.height}x{self.width}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_metadata(folder: Path, metadata: BundleMetadata) -> None:
    """Write ``sfm.json`` atomically."""
    text = json.dumps(dataclasses.asdict(metadata), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(Path(folder) / METADATA_FILE, text.encode())


def read_metadata(folder: str | Path) -> BundleMetadata:
    """Read and validate ``sfm.json`` of a bundle folder."""
    path = Path(folder).expanduser() / METADATA_FILE
    if not Path(folder).expanduser().is_dir():
        raise BundleError(f"model bundle {folder} does not exist (expected a folder with {METADATA_FILE})")
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{folder} is not a complete model bundle: {METADATA_FILE} is missing") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    version = raw.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version!r} is not supported (this sfm_ros reads "
                          f"{BUNDLE_FORMAT_VERSION})")
    known = {f.name for f in dataclasses.fields(BundleMetadata)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise BundleError(f"{path}: unknown keys {unknown}")
    for key in ("mean", "std"):
        if key in raw:
            raw[key] = tuple(raw[key])
    try:
        return BundleMetadata(**raw)
    except TypeError as exc:
        raise BundleError(f"{path}: {exc}") from None


def normalise_images(rgb: np.ndarray, metadata: BundleMetadata) -> np.ndarray:
    """uint8 RGB [..., H, W, 3] -> float32 [..., 3, H, W] normalised as the bundle says."""
    mean = np.asarray(metadata.mean, dtype=np.float32)
    std = np.asarray(metadata.std, dtype=np.float32)
    # channels-first while still uint8, then one multiply-add: 8x faster than scaling first (0.14 vs 1.2 ms a frame)
    channels_first = np.ascontiguousarray(np.moveaxis(rgb, -1, -3))
    out = np.multiply(channels_first, (1.0 / (255.0 * std))[:, None, None], dtype=np.float32)
    out += (-mean / std)[:, None, None]
    return out


def save_networks(folder: str | Path, depth_net: DispNet, pose_net: PoseExpNet, metadata: BundleMetadata) -> Path:
    """Write weights (safetensors) and ``sfm.json`` into ``folder``; returns the folder."""
    from safetensors.torch import save

    folder = Path(folder)
    for name, net in ((DEPTH_WEIGHTS, depth_net), (POSE_WEIGHTS, pose_net)):
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        atomic_write_bytes(folder / name, save(state))
    write_metadata(folder, metadata)
    return folder


def load_networks(folder: str | Path, device: str = "cpu", with_mask: bool | None = None
                  ) -> tuple[DispNet, PoseExpNet, BundleMetadata]:
    """Build DispNet and PoseExpNet from a bundle (strict: every key must match), in eval mode.

    ``with_mask=False`` drops the explainability decoder (its weights are then ignored on purpose).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sfm_ros.models import DispNet, PoseExpNet

    metadata = read_metadata(folder)
    folder = Path(folder).expanduser()
    depth_net = DispNet(**metadata.dispnet)
    posenet_args = dict(metadata.posenet)
    trained_with_mask = posenet_args.pop("with_mask", True)
    use_mask = trained_with_mask if with_mask is None else with_mask
    if use_mask and not trained_with_mask:
        raise BundleError(f"{folder}: the explainability mask was requested but the bundle's pose net has none")
    pose_net = PoseExpNet(num_sources=metadata.num_sources, with_mask=use_mask, **posenet_args)
    for name, net in ((DEPTH_WEIGHTS, depth_net), (POSE_WEIGHTS, pose_net)):
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{folder} has no {name}: was it trained, or only exported?")
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"{path} is not a readable safetensors file: {exc}") from None
        if net is pose_net and not use_mask:
            state = {k: v for k, v in state.items() if not k.startswith("mask_")}
        missing, unexpected = set(net.state_dict()) - set(state), set(state) - set(net.state_dict())
        if missing or unexpected:
            raise BundleError(f"{path} does not match the network in {METADATA_FILE}: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # same keys, other shapes: say which network config disagrees
            raise BundleError(f"{path} does not match the network in {METADATA_FILE}: {exc}") from None
    return depth_net.to(device).eval(), pose_net.to(device).eval(), metadata


@contextlib.contextmanager
def staged_bundle(bundle: str | Path) -> Iterator[Path]:
    """Change a copy of ``bundle`` and put it in place only if the block succeeds: all or nothing.

    Yields the copy (in a hidden sibling folder). On success the original is swapped out by two renames and
    removed; on any exception the copy is removed and the original is as it was.
    """
    folder = Path(bundle).expanduser()
    if not (folder / METADATA_FILE).is_file():
        raise BundleError(f"model bundle {folder} does not exist (expected a folder with {METADATA_FILE})")
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staged.", dir=folder.parent))
    copy = stage / folder.name
    try:
        shutil.copytree(folder, copy)
        yield copy
        os.replace(folder, stage / f"{folder.name}.previous")
        os.replace(copy, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def onnx_key(model: str, precision: str) -> str:
    """The ``sfm.json`` key (and file stem) of an exported model: 'depth', 'pose_fp16', 'depth_int8'."""
    if precision not in ONNX_SUFFIXES:
        raise BundleError(f"precision {precision!r} unknown; exported precisions are {sorted(ONNX_SUFFIXES)}")
    return model + ONNX_SUFFIXES[precision]


def onnx_path(bundle: str | Path, model: str, precision: str = "fp32", verify_checksum: bool = True) -> Path:
    """Path of an exported ONNX model ('depth' or 'pose') of a bundle, checked against its recorded sha256."""
    key = onnx_key(model, precision)
    metadata = read_metadata(bundle)
    entry = metadata.onnx.get(key)
    if entry is None:
        how = {"int8": f"sfm export {bundle} --precision int8 --int8-bag BAG",
               "int8_qdq": f"sfm quantize {bundle} BAG --for tensorrt"}.get(precision, f"sfm export {bundle}")
        raise BundleError(f"{bundle} has no exported {key} model: run `{how}` first")
    path = Path(bundle).expanduser() / entry["file"]
    if not path.is_file():
        raise BundleError(f"{path} is listed in sfm.json but missing")
    if verify_checksum and sha256_file(path) != entry["sha256"]:
        raise BundleError(f"{path} does not match its sha256 in sfm.json (corrupt or replaced): re-export it")
    return path
