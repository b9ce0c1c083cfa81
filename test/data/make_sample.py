"""Rebuild the bundled KITTI sample in test/data/ from ../shared/data (run once; output is committed).

What it does to the original files (KITTI, CC BY-NC-SA 3.0, see test/data/README.md):
- colour frames of raw drive 0060 (20) and greyscale frames of odometry sequence 06 (0-50) are
  re-encoded from PNG to JPEG, quality 95, same size, same pixel grid;
- the LiDAR scans of drive 0060 keep only the points that project into the left colour camera's
  image (x_cam > 0 and inside 1242x375); the file format (float32 x y z reflectance) is unchanged;
- calibration, OXTS and pose text files are byte copies (poses: the first 51 lines of 06.txt).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

JPEG_QUALITY = 95


def _read_calib(path: Path) -> dict[str, np.ndarray]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        try:
            values[key] = np.array([float(x) for x in rest.split()])
        except ValueError:
            continue
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    raw_in = args.shared / "kitti_raw_2011_09_26" / "2011_09_26"
    raw_out = args.out / "kitti_raw" / "2011_09_26"
    raw_out.mkdir(parents=True, exist_ok=True)
    for name in ("calib_cam_to_cam.txt", "calib_imu_to_velo.txt", "calib_velo_to_cam.txt"):
        shutil.copy(raw_in / name, raw_out / name)
    shutil.copytree(raw_in / "2011_09_26_drive_0001_sync", raw_out / "2011_09_26_drive_0001_sync", dirs_exist_ok=True)

    cam = _read_calib(raw_in / "calib_cam_to_cam.txt")
    velo = _read_calib(raw_in / "calib_velo_to_cam.txt")
    velo_to_cam = np.eye(4)
    velo_to_cam[:3, :3] = velo["R"].reshape(3, 3)
    velo_to_cam[:3, 3] = velo["T"]
    rect = np.eye(4)
    rect[:3, :3] = cam["R_rect_00"].reshape(3, 3)
    projection = cam["P_rect_02"].reshape(3, 4) @ rect @ velo_to_cam

    drive_in = raw_in / "2011_09_26_drive_0060_sync"
    drive_out = raw_out / "2011_09_26_drive_0060_sync"
    (drive_out / "image_02" / "data").mkdir(parents=True, exist_ok=True)
    (drive_out / "velodyne_points" / "data").mkdir(parents=True, exist_ok=True)
    for png in sorted((drive_in / "image_02" / "data").glob("*.png")):
        image = cv2.imread(str(png), cv2.IMREAD_COLOR)
        cv2.imwrite(str(drive_out / "image_02" / "data" / (png.stem + ".jpg")), image,
                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        height, width = image.shape[:2]
        scan = np.fromfile(drive_in / "velodyne_points" / "data" / (png.stem + ".bin"), dtype=np.float32)
        points = scan.reshape(-1, 4)
        homogeneous = np.c_[points[:, :3], np.ones(len(points))]
        uvw = homogeneous @ projection.T
        with np.errstate(divide="ignore", invalid="ignore"):
            u = uvw[:, 0] / uvw[:, 2]
            v = uvw[:, 1] / uvw[:, 2]
        keep = (uvw[:, 2] > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        points[keep].astype(np.float32).tofile(drive_out / "velodyne_points" / "data" / (png.stem + ".bin"))

    odo_in = args.shared / "kitti_odometry_seq06_snippet"
    odo_out = args.out / "kitti_odometry"
    (odo_out / "sequences" / "06" / "image_0").mkdir(parents=True, exist_ok=True)
    (odo_out / "poses").mkdir(parents=True, exist_ok=True)
    for png in sorted((odo_in / "sequences" / "06" / "image_0").glob("*.png")):
        image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(odo_out / "sequences" / "06" / "image_0" / (png.stem + ".jpg")), image,
                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    shutil.copy(odo_in / "sequences" / "06" / "calib_P0_P1_unlabeled.txt", odo_out / "sequences" / "06" / "calib.txt")
    lines = (odo_in / "poses" / "06.txt").read_text().splitlines(keepends=True)[:51]
    (odo_out / "poses" / "06.txt").write_text("".join(lines))


if __name__ == "__main__":
    main()
