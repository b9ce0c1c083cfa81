"""How precisely the ground measures a step's length at the network's size and finer, given the true motion.

For each frame pair of a sequence with true poses: the true rotation and direction, a start 10 % short, the ground
of the road ahead (|X| < 2 m, 4-20 m ahead on the plane 1.65 m down: the mounting's level plane, or the plane along
the true travel of the last 10 steps) and ``align.ground_translation`` with the pipeline's settings; the measured
length over the true one at each size. Prints JSON: per size the median, 10th and 90th percentile and the median
|log| of that ratio. RESULTS, "The ground's lengths at a finer resolution".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from sfm_ros import kitti
from sfm_ros.geometry import backproject, ground_plane_depth, scale_intrinsics
from sfm_ros.odometry.align import ground_translation
from sfm_ros.odometry.ground import (
    GROUND_DIRECTION_SIGMA,
    GROUND_MIN_PARALLAX_PX,
    normal_along_travel,
    travel_elevation,
)
from training.odometry_bench import kitti_frames

LEVEL = np.array([0.0, 1.0, 0.0])
NETWORK_SIZE = (64, 208)


def load_sequence(spec: str, streets: Path, work: Path) -> kitti.Sequence:
    """KITTI DIR[:FIRST:LAST], or SPLIT:INDEX for a rendered street of ``streets``."""
    if spec.startswith("val"):
        from training.synth_streets import street_folders, street_sequence

        split, index = spec.split(":")
        return street_sequence(street_folders(streets, split, work / split), int(index))
    return kitti_frames(spec)


def ratios_at(sequence: kitti.Sequence, factor: float, plane: str, stride: int) -> dict:
    """Measured over true lengths of the sequence's steps at ``factor`` times the network's size."""
    poses = np.asarray(sequence.poses)
    height_in, width_in = sequence.size
    height, width = round(NETWORK_SIZE[0] * factor), round(NETWORK_SIZE[1] * factor)
    K = scale_intrinsics(np.asarray(sequence.K, float), width / width_in, height / height_in)
    depth = ground_plane_depth((height, width), K, LEVEL, 1.65)
    lateral = backproject(np.where(np.isfinite(depth), depth, 0.0), K)[..., 0]
    road = np.isfinite(depth) & (depth > 4) & (depth < 20) & (np.abs(lateral) < 2)
    greys = [cv2.resize(kitti.load_rgb(path), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
             .mean(axis=2) / 255 for path in sequence.image_paths]
    ratios, refused = [], 0
    for i in range(stride, len(sequence)):
        truth = np.linalg.inv(poses[i]) @ poses[i - stride]
        length = float(np.linalg.norm(truth[:3, 3]))
        if length < 0.1:
            continue
        normal = LEVEL
        if plane == "travel":
            steps = range(max(1, i - 9), i + 1)
            elevations = [travel_elevation((np.linalg.inv(poses[j - 1]) @ poses[j])[:3, 3], LEVEL) for j in steps]
            normal = normal_along_travel(LEVEL, float(np.median(elevations)))
        start = truth.copy()
        start[:3, 3] *= 0.9
        measured = ground_translation(greys[i - stride], greys[i], K, start, road, normal, 1.65,
                                      min_parallax_px=GROUND_MIN_PARALLAX_PX, direction_sigma=GROUND_DIRECTION_SIGMA)
        if measured.accepted:
            ratios.append(float(np.linalg.norm(measured.translation)) / length)
        else:
            refused += 1
    ratio = np.array(ratios)
    return {"size": f"{height}x{width}", "measured": len(ratio), "refused": refused,
            "median": round(float(np.median(ratio)), 4), "p10": round(float(np.percentile(ratio, 10)), 4),
            "p90": round(float(np.percentile(ratio, 90)), 4),
            "median_abs_log": round(float(np.median(np.abs(np.log(ratio)))), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sequence", help="KITTI DIR[:FIRST:LAST], or val:N / val_unseen:N (rendered streets)")
    parser.add_argument("--plane", choices=("mounting", "travel"), default="mounting")
    parser.add_argument("--stride", type=int, default=1, help="frames between the two of a pair")
    parser.add_argument("--factors", type=float, nargs="+", default=[1, 2, 4], help="sizes, x the network's")
    parser.add_argument("--streets", type=Path, default=Path("../shared/data/synth_streets"))
    parser.add_argument("--work", type=Path, default=Path("runs/probe_ground_resolution"), help="streets' frames")
    args = parser.parse_args()
    sequence = load_sequence(args.sequence, args.streets, args.work)
    sizes = [ratios_at(sequence, factor, args.plane, args.stride) for factor in args.factors
             if round(NETWORK_SIZE[0] * factor) <= sequence.size[0]]
    print(json.dumps({"sequence": args.sequence, "plane": args.plane, "stride": args.stride, "sizes": sizes}))


if __name__ == "__main__":
    main()
