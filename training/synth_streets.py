"""Rendered street drives with exact depth and poses: the data the learning benchmark and the demo score against.

Two forms hold the same content:
- the shared archive (``../shared/data/synth_streets/{train,val}.npz``: ``images`` uint8 [S,F,H,W,3], ``depth``
  float32 [S,F,H,W] camera-Z metres with 0 = no surface, ``T_world_cam`` [S,F,4,4] camera-to-world, ``K`` [3,3]);
- a *street folder*, which is what a user's recording looks like to ``sfm prepare``: one image folder per street
  (``street_NN/000000.png ...`` with ``intrinsics.yaml``) and ``ground_truth.npz`` (``depth``, ``T_world_cam``,
  ``K``, ``names``) beside them. The repository's sample (``test/data/synth_streets``) ships in this form.

``street_folders`` turns either form into street folders, so training always reads frames through the same
source/cache path as a recorded drive.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from training.staging import staged_directory

__all__ = ["GROUND_TRUTH_FILE", "SAMPLE_STREETS", "SHARED_STREETS", "StreetSplit", "default_streets", "has_split",
           "load_street_split", "street_folders", "street_sequence", "write_street_split"]

GROUND_TRUTH_FILE = "ground_truth.npz"
REPOSITORY = Path(__file__).resolve().parents[1]
# The full rendered streets beside the repository (CI and developer machines), and the repository's small sample.
SHARED_STREETS = REPOSITORY.parent / "shared" / "data" / "synth_streets"
SAMPLE_STREETS = REPOSITORY / "test" / "data" / "synth_streets"


@dataclasses.dataclass(frozen=True)
class StreetSplit:
    """One split of street drives in folder form.

    folders: S image folders (each a source for ``data.sources``); depth: float [S,F,H,W] camera-Z metres,
    0 where no surface; T_world_cam: [S,F,4,4]; K: [3,3] at the depth's H,W.
    """

    folders: tuple[Path, ...]
    depth: np.ndarray
    T_world_cam: np.ndarray
    K: np.ndarray


def write_street_split(out_dir: str | Path, images: np.ndarray, depth: np.ndarray, T_world_cam: np.ndarray,
                       K: np.ndarray, image_format: str = ".png", jpeg_quality: int = 92) -> Path:
    """Write streets as image folders + ``ground_truth.npz`` (atomically: a temporary folder renamed at the end).

    images: uint8 RGB [S,F,H,W,3]; depth: [S,F,h,w] (any size; K refers to the images' size and is rescaled
    to the depth's for the ground truth file); T_world_cam: [S,F,4,4]; K: [3,3] at H,W.
    """
    from sfm_ros.geometry import scale_intrinsics

    out_dir = Path(out_dir)
    if image_format not in (".png", ".jpg"):
        raise ValueError(f"image_format must be .png or .jpg, got {image_format!r}")
    with staged_directory(out_dir) as tmp:
        height, width = images.shape[2:4]
        fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        names = []
        for s, street in enumerate(images):
            name = f"street_{s:02d}"
            names.append(name)
            folder = tmp / name
            folder.mkdir()
            (folder / "intrinsics.yaml").write_text(yaml.safe_dump({"fx": fx, "fy": fy, "cx": cx, "cy": cy}))
            params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == ".jpg" else []
            for f, rgb in enumerate(street):
                if not cv2.imwrite(str(folder / f"{f:06d}{image_format}"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                   params):
                    raise OSError(f"could not write {folder / f'{f:06d}{image_format}'}")
        depth_h, depth_w = depth.shape[2:4]
        K_depth = scale_intrinsics(np.asarray(K, dtype=np.float64), depth_w / width, depth_h / height)
        np.savez_compressed(tmp / GROUND_TRUTH_FILE, depth=depth, T_world_cam=T_world_cam, K=K_depth,
                            names=np.asarray(names))
    return out_dir


def default_streets(shared: Path = SHARED_STREETS) -> Path:
    """The benchmarks' rendered streets: ``shared`` where it exists, else the repository's sample, said on stderr (the
    sample's figures are not those of benchmarks/RESULTS.md, and it has no val_unseen)."""
    if shared.is_dir():
        return shared
    print(f"note: {shared} not found: using the repository's sample {SAMPLE_STREETS} (fewer streets, no "
          "val_unseen); its figures are not comparable with benchmarks/RESULTS.md", file=sys.stderr)
    return SAMPLE_STREETS


def load_street_split(folder: str | Path) -> StreetSplit:
    """Read a split written by ``write_street_split``."""
    folder = Path(folder)
    path = folder / GROUND_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a street split: no {GROUND_TRUTH_FILE}")
    with np.load(path) as data:
        names = [str(n) for n in data["names"]]
        split = StreetSplit(folders=tuple(folder / n for n in names), depth=data["depth"].astype(np.float32),
                            T_world_cam=data["T_world_cam"].astype(np.float64), K=data["K"].astype(np.float64))
    for street, street_folder in enumerate(split.folders):
        frames = [p for p in street_folder.iterdir() if p.suffix in (".png", ".jpg")]
        if len(frames) != split.depth.shape[1]:
            raise ValueError(f"{street_folder} holds {len(frames)} frames, its ground truth {split.depth.shape[1]}"
                             f" (street {street})")
    return split


def has_split(source: str | Path, split: str) -> bool:
    """Whether ``source`` holds ``split`` in either form (``{split}.npz`` or ``{split}/ground_truth.npz``)."""
    source = Path(source)
    return (source / f"{split}.npz").is_file() or (source / split / GROUND_TRUTH_FILE).is_file()


def street_folders(source: str | Path, split: str, work_dir: str | Path) -> StreetSplit:
    """The ``split`` ("train", "val" or "val_unseen") of ``source`` in street-folder form.

    source: a folder holding ``{split}.npz`` (the shared archive; written out as PNG folders under ``work_dir``
    once and reused) or ``{split}/`` street folders (the repository sample; used in place).
    """
    source = Path(source)
    if (source / split / GROUND_TRUTH_FILE).is_file():
        return load_street_split(source / split)
    archive = source / f"{split}.npz"
    if not archive.is_file():
        raise FileNotFoundError(f"{source} has neither {split}.npz nor {split}/{GROUND_TRUTH_FILE}")
    out = Path(work_dir) / f"{source.name}_{split}"
    stamp = out / ".source"
    signature = f"{archive.resolve()} {archive.stat().st_size} {archive.stat().st_mtime_ns}"
    if not (stamp.is_file() and stamp.read_text() == signature):
        with np.load(archive) as data:
            write_street_split(out, data["images"], data["depth"], data["T_world_cam"], data["K"])
        stamp.write_text(signature)
    return load_street_split(out)


def street_sequence(split: StreetSplit, street: int) -> Any:
    """One street as a ``kitti.Sequence`` (frames, 10 Hz stamps, K, true camera poses) for ``run_sequence`` and
    ``evaluate_pose``."""
    from sfm_ros import kitti

    folder = split.folders[street]
    paths = tuple(kitti.image_files(folder))
    first = kitti.load_rgb(paths[0])
    intrinsics = yaml.safe_load((folder / "intrinsics.yaml").read_text())
    K = np.array([[intrinsics["fx"], 0, intrinsics["cx"]], [0, intrinsics["fy"], intrinsics["cy"]], [0, 0, 1.0]])
    return kitti.Sequence(name=folder.name, image_paths=paths,
                          stamps_ns=np.arange(len(paths), dtype=np.int64) * kitti.KITTI_FRAME_PERIOD_NS, K=K,
                          size=first.shape[:2], poses=split.T_world_cam[street])
