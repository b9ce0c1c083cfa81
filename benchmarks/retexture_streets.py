"""Diagnostic for issue 33: the training streets' geometry with new, world-anchored procedural surfaces.

Does more variety of surfaces make the depth transfer to surfaces never seen? Each pixel with a surface in
synth_streets' ``train.npz`` is lifted to the world with its exact depth and pose and coloured by a solid texture of
that world point (3-D value noise over several octaves, bands in height and stripes along a random horizontal
direction, its contrast varying over metres, a random palette per street), so a surface point keeps its colour
from frame to frame as in the rendered streets. The sky (depth 0, at infinity) keeps its pixels. Writes
OUTPUT/train.npz (the original streets, then COPIES retextured copies of each; or only the copies) and links
OUTPUT/val.npz and OUTPUT/val_unseen.npz to the originals, so that ``bench_learning.py --data OUTPUT`` trains on it.

Example:
  python benchmarks/retexture_streets.py /tmp/retextured --copies 1 --seed 0
  python benchmarks/bench_learning.py --data /tmp/retextured --variants benchmarks/learning_ablation.yaml \
      --only recommended --steps 3000 --seeds 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.synth_streets import SHARED_STREETS

# Cells of the periodic value-noise lattice along each axis.
LATTICE_CELLS = 128


def value_noise(points: np.ndarray, lattice: np.ndarray, cell_m: float, offset: np.ndarray) -> np.ndarray:
    """Smooth trilinear value noise at world points [N,3] (metres) on a periodic lattice of ``cell_m`` cells -> [N]."""
    scaled = points / cell_m + offset
    corner = np.floor(scaled).astype(np.int64)
    fraction = scaled - corner
    weight = fraction * fraction * (3 - 2 * fraction)
    noise = np.zeros(len(points))
    for corner_offset in np.ndindex(2, 2, 2):
        index = (corner + corner_offset) % LATTICE_CELLS
        share = np.prod([weight[:, axis] if bit else 1 - weight[:, axis] for axis, bit in enumerate(corner_offset)],
                        axis=0)
        noise += share * lattice[index[:, 0], index[:, 1], index[:, 2]]
    return noise


def random_surface(rng: np.random.Generator) -> dict:
    """The parameters of one street copy's solid texture."""
    return {
        "lattices": [rng.standard_normal((LATTICE_CELLS,) * 3) for _ in range(2)],
        "finest_cell_m": rng.uniform(0.05, 0.3),
        "octaves": int(rng.integers(3, 6)),
        "gain": rng.uniform(0.6, 1.0),
        "band_period_m": rng.uniform(0.3, 2.5),
        "band_weight": rng.uniform(0.0, 0.4),
        "stripe_period_m": rng.uniform(0.3, 3.0),
        "stripe_weight": rng.uniform(0.0, 0.4),
        "stripe_heading": rng.uniform(0, np.pi),
        "palette": rng.uniform(0.1, 0.9, size=3),
        "luminance_axis": rng.uniform(0.5, 1.0, size=3),
        "chroma_axis": rng.standard_normal(3) * 0.25,
        "contrast": rng.uniform(0.1, 0.3),
        "offsets": rng.uniform(0, LATTICE_CELLS, size=(8, 3)),
    }


def surface_colour(world_points: np.ndarray, surface: dict) -> np.ndarray:
    """RGB in [0, 1] [N,3] of world points [N,3] (x, z horizontal, y down) under one solid texture."""
    octaves, gain = surface["octaves"], surface["gain"]
    luminance = np.zeros(len(world_points))
    for octave in range(octaves):
        cell = surface["finest_cell_m"] * 2 ** (octaves - 1 - octave)
        luminance += gain**octave * value_noise(world_points, surface["lattices"][0], cell, surface["offsets"][octave])
    luminance *= 2.5 / np.sqrt(sum(gain ** (2 * octave) for octave in range(octaves)))
    luminance += surface["band_weight"] * np.sign(np.sin(2 * np.pi * world_points[:, 1] / surface["band_period_m"]))
    along = (world_points[:, 0] * np.cos(surface["stripe_heading"])
             + world_points[:, 2] * np.sin(surface["stripe_heading"]))
    luminance += surface["stripe_weight"] * np.sign(np.sin(2 * np.pi * along / surface["stripe_period_m"]))
    chroma = value_noise(world_points, surface["lattices"][1], 4.0, surface["offsets"][7])
    # Surfaces differ from place to place: the contrast varies over about 6 m.
    luminance *= 0.5 + np.abs(value_noise(world_points, surface["lattices"][1], 6.0, surface["offsets"][6]))
    rgb = surface["palette"] + surface["contrast"] * (luminance[:, None] * surface["luminance_axis"]
                                                      + 4 * chroma[:, None] * surface["chroma_axis"])
    return np.clip(rgb, 0.0, 1.0)


def retextured_street(images: np.ndarray, depth: np.ndarray, T_world_cam: np.ndarray, K: np.ndarray,
                      surface: dict) -> np.ndarray:
    """One street with new surfaces. images: uint8 [F,H,W,3]; depth: [F,H,W] camera-Z m (0 = sky, kept);
    T_world_cam: [F,4,4] camera-to-world; K: [3,3]. Returns uint8 [F,H,W,3]."""
    height, width = depth.shape[-2:]
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    out = images.copy()
    for frame in range(depth.shape[0]):
        z = depth[frame].reshape(-1).astype(np.float64)
        has_surface = z > 0
        world = (rays[has_surface] * z[has_surface, None]) @ T_world_cam[frame, :3, :3].T + T_world_cam[frame, :3, 3]
        pixels = out[frame].reshape(-1, 3)
        pixels[has_surface] = (surface_colour(world, surface) * 255 + 0.5).astype(np.uint8)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to write train.npz into (val and val_unseen are linked)")
    parser.add_argument("--streets", type=Path, default=SHARED_STREETS, help="synth_streets folder to read")
    parser.add_argument("--copies", type=int, default=1, help="retextured copies of each training street")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-copies", action="store_true", help="leave the original streets out")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with np.load(args.streets / "train.npz") as archive:
        images, depth = archive["images"], archive["depth"]
        T_world_cam, K = archive["T_world_cam"], archive["K"]
    parts = [] if args.only_copies else [images]
    for _ in range(args.copies):
        parts.append(np.stack([retextured_street(images[street], depth[street], T_world_cam[street],
                                                 K.astype(np.float64), random_surface(rng))
                               for street in tqdm(range(len(images)), desc="streets")]))
    repeats = len(parts)
    args.output.mkdir(parents=True, exist_ok=True)
    np.savez(args.output / "train.npz", images=np.concatenate(parts), depth=np.concatenate([depth] * repeats),
             T_world_cam=np.concatenate([T_world_cam] * repeats), K=K)
    for split in ("val.npz", "val_unseen.npz"):
        link = args.output / split
        if not link.exists():
            link.symlink_to((args.streets / split).resolve())
    print(f"wrote {args.output / 'train.npz'}: {repeats * len(images)} streets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
