"""Rebuild the bundled synthetic street sample in test/data/synth_streets/ from ../shared/data/synth_streets.

Run once; the output is committed (see test/data/synth_streets/PROVENANCE.md). What it does:
- takes training streets 0-3 (frames 0-79 each) and both validation streets (all 60 frames);
- area-downsamples the 416x128 frames 2x to 208x64 (the CPU training size) and writes them as JPEG, quality 92, one
  image folder per street with its intrinsics.yaml (K scaled to 208x64, pixel-centre convention);
- keeps the exact depth at 208x64 by taking every second pixel of every second row (the exact depth of a point a
  quarter of a small pixel up-left of each small pixel's centre), as float16 (relative error below 5e-4);
- keeps the poses unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.synth_streets import write_street_split

TRAIN_STREETS, TRAIN_FRAMES = (0, 1, 2, 3), 80
VAL_STREETS = (0, 1)


def _downsample(images: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [S,F,H,W,3], depth [S,F,H,W] -> half size (area for images; every second pixel for depth)."""
    height, width = images.shape[2:4]
    small = np.stack([[cv2.resize(frame, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
                       for frame in street] for street in images])
    return small, depth[:, :, ::2, ::2].astype(np.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path,
                        default=Path(__file__).resolve().parents[3] / "shared" / "data" / "synth_streets")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "synth_streets")
    args = parser.parse_args()
    for split, streets, frames in (("train", TRAIN_STREETS, slice(0, TRAIN_FRAMES)), ("val", VAL_STREETS, slice(None))):
        with np.load(args.shared / f"{split}.npz") as data:
            images, depth = _downsample(data["images"][list(streets), frames], data["depth"][list(streets), frames])
            poses, K = data["T_world_cam"][list(streets), frames], data["K"]
        height, width = images.shape[2:4]
        # K at the small size: the pixel-centre convention (u + 0.5) * s - 0.5 for s = 1/2.
        K_small = np.array([[K[0, 0] / 2, 0, (K[0, 2] + 0.5) / 2 - 0.5], [0, K[1, 1] / 2, (K[1, 2] + 0.5) / 2 - 0.5],
                            [0, 0, 1]])
        write_street_split(args.out / split, images, depth, poses, K_small, image_format=".jpg")
        print(f"{split}: {images.shape[0]} streets x {images.shape[1]} frames at {width}x{height}")


if __name__ == "__main__":
    main()
