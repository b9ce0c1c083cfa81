"""KITTI readers: raw drives, odometry sequences, calibration, LiDAR ground truth, OXTS poses.

Only numpy and OpenCV. Frames: KITTI cameras are optical frames; poses ``T_world_camera`` map camera
points into the world frame (the first camera pose for odometry sequences).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

__all__ = ["KittiError", "Sequence", "eigen_test_files", "image_files", "kitti_camera_matrix",
           "kitti_odometry_sequence", "kitti_raw_drive", "lidar_depth_map", "load_rgb", "oxts_camera_poses",
           "read_calib_file", "read_kitti_poses", "read_timestamps", "read_velodyne", "velodyne_to_image_projection"]

KITTI_FRAME_PERIOD_NS = 100_000_000  # 10 Hz, used when a drive has no timestamps file
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class KittiError(RuntimeError):
    """A KITTI folder or file is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Sequence:
    """An ordered image sequence from one camera: the unit that snippets, replay and evaluation use.

    image_paths: N files; stamps_ns: [N] int64; K: [3,3] intrinsics at the images' native size;
    size: (height, width); poses: [N,4,4] T_world_camera ground truth or None; name: for splits and reports.
    """

    name: str
    image_paths: tuple[Path, ...]
    stamps_ns: np.ndarray
    K: np.ndarray
    size: tuple[int, int]
    poses: np.ndarray | None = None
    velodyne_paths: tuple[Path, ...] | None = None
    calib_dir: Path | None = None
    camera: int | None = None

    def __len__(self) -> int:
        return len(self.image_paths)


def load_rgb(path: Path | str) -> np.ndarray:
    """Read an image file as uint8 RGB [H,W,3] (greyscale is replicated to three channels)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise KittiError(f"cannot read image {path} (missing or not an image)")
    if image.dtype != np.uint8:
        image = (image / 256).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_calib_file(path: Path | str) -> dict[str, np.ndarray]:
    """``key: numbers`` lines -> {key: float array}; non-numeric lines (calib_time) are skipped."""
    values: dict[str, np.ndarray] = {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KittiError(f"cannot read calibration {path}: {exc.strerror}") from None
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            values[key.strip()] = np.array([float(x) for x in rest.split()])
        except ValueError:
            continue
    return values


def read_timestamps(path: Path) -> np.ndarray:
    """KITTI ``timestamps.txt`` (``YYYY-MM-DD hh:mm:ss.nnnnnnnnn``) -> int64 ns since the epoch."""
    stamps = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        date, _, fraction = line.strip().partition(".")
        whole = datetime.strptime(date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        stamps.append(int(whole.timestamp()) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9]))
    return np.asarray(stamps, dtype=np.int64)


def image_files(folder: Path) -> list[Path]:
    """Sorted image files (png/jpg) of a folder."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation.reshape(3, 3)
    T[:3, 3] = translation.reshape(3)
    return T


def _raw_calibration(calib_dir: Path, camera: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(P_rect [3,4], T_cam0rect_velo [4,4], (H, W)) of a raw date folder."""
    cam = read_calib_file(calib_dir / "calib_cam_to_cam.txt")
    velo = read_calib_file(calib_dir / "calib_velo_to_cam.txt")
    key = f"P_rect_{camera:02d}"
    if key not in cam or "R_rect_00" not in cam or "R" not in velo:
        raise KittiError(f"{calib_dir}: calibration lacks {key}, R_rect_00 or velo R/T")
    rect = np.eye(4)
    rect[:3, :3] = cam["R_rect_00"].reshape(3, 3)
    T_cam0rect_velo = rect @ _rigid(velo["R"], velo["T"])
    width, height = cam[f"S_rect_{camera:02d}"].astype(int)
    return cam[key].reshape(3, 4), T_cam0rect_velo, (int(height), int(width))


def kitti_camera_matrix(calib_dir: Path | str, camera: int = 2) -> np.ndarray:
    """Rectified intrinsics K [3,3] of a raw-drive camera (from P_rect_0c)."""
    projection, _, _ = _raw_calibration(Path(calib_dir), camera)
    return projection[:, :3].copy()


def velodyne_to_image_projection(calib_dir: Path | str, camera: int = 2) -> np.ndarray:
    """P_rect_0c @ R_rect_00 @ T_velo_to_cam: homogeneous velodyne points -> image (u w, v w, w). [3,4]."""
    projection, T_cam0rect_velo, _ = _raw_calibration(Path(calib_dir), camera)
    return projection @ T_cam0rect_velo


def read_velodyne(path: Path | str) -> np.ndarray:
    """KITTI velodyne scan -> float32 [N,4] (x y z reflectance, velodyne frame)."""
    data = np.fromfile(path, dtype=np.float32)
    if data.size % 4:
        raise KittiError(f"{path}: size {data.size * 4} bytes is not a whole number of 16-byte points")
    return data.reshape(-1, 4)


def lidar_depth_map(points: np.ndarray, projection: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Sparse ground-truth depth [H,W] (0 = no measurement), exactly as the Eigen protocol builds it.

    points: [N,4] velodyne; projection: [3,4] from ``velodyne_to_image_projection``; size: (H, W) raw image.
    Points behind the sensor (x < 0) are dropped; pixel = round(u) - 1, round(v) - 1 (the original MATLAB
    1-based convention kept by SfMLearner/monodepth); depth is the LiDAR forward coordinate x; where several
    points land on a pixel the nearest is kept.
    """
    height, width = size
    forward = points[points[:, 0] >= 0]
    homogeneous = np.c_[forward[:, :3], np.ones(len(forward))]
    projected = homogeneous @ projection.T
    u = np.round(projected[:, 0] / projected[:, 2]) - 1
    v = np.round(projected[:, 1] / projected[:, 2]) - 1
    depth = forward[:, 0].astype(np.float64)
    inside = (u >= 0) & (v >= 0) & (u < width) & (v < height)
    u, v, depth = u[inside].astype(int), v[inside].astype(int), depth[inside]
    depth_map = np.full((height, width), np.inf)
    np.minimum.at(depth_map, (v, u), depth)
    depth_map[np.isinf(depth_map)] = 0.0
    return depth_map


def kitti_raw_drive(drive_dir: Path | str, camera: int = 2) -> Sequence:
    """A KITTI raw ``<date>_drive_<n>_sync`` folder, one colour (2, 3) or grey (0, 1) camera.

    Intrinsics come from P_rect of ``calib_cam_to_cam.txt`` in the parent date folder; timestamps from
    ``image_0c/timestamps.txt`` when present (else 10 Hz); LiDAR scans are attached when present.
    """
    drive_dir = Path(drive_dir)
    image_dir = drive_dir / f"image_{camera:02d}" / "data"
    if not image_dir.is_dir():
        raise KittiError(f"{drive_dir} has no image_{camera:02d}/data folder: is it a KITTI raw *_sync drive?")
    paths = image_files(image_dir)
    if not paths:
        raise KittiError(f"{image_dir} holds no png/jpg images")
    calib_dir = drive_dir.parent
    projection, _, size = _raw_calibration(calib_dir, camera)
    stamp_file = drive_dir / f"image_{camera:02d}" / "timestamps.txt"
    if stamp_file.is_file():
        all_stamps = read_timestamps(stamp_file)
        stamps = all_stamps[[int(p.stem) for p in paths]]
    else:
        stamps = np.array([int(p.stem) * KITTI_FRAME_PERIOD_NS for p in paths], dtype=np.int64)
    velodyne_dir = drive_dir / "velodyne_points" / "data"
    velodyne = None
    if velodyne_dir.is_dir():
        velodyne = tuple(velodyne_dir / f"{p.stem}.bin" for p in paths)
        if not all(v.is_file() for v in velodyne):
            velodyne = None
    return Sequence(name=f"{drive_dir.name}_{camera:02d}", image_paths=tuple(paths), stamps_ns=stamps,
                    K=projection[:, :3].copy(), size=size, velodyne_paths=velodyne, calib_dir=calib_dir,
                    camera=camera)


def read_kitti_poses(path: Path | str) -> np.ndarray:
    """KITTI pose file (12 floats per line, row-major 3x4) -> [N,4,4] T_world_camera."""
    try:
        rows = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise KittiError(f"cannot read poses {path}: {exc}") from None
    if rows.shape[1] != 12:
        raise KittiError(f"{path}: expected 12 numbers per line, got {rows.shape[1]}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def kitti_odometry_sequence(sequence_dir: Path | str, camera: int = 0, poses_file: Path | str | None = None
                            ) -> Sequence:
    """A KITTI odometry ``sequences/NN`` folder: ``image_c/``, ``calib.txt`` (labelled ``P0:`` or bare rows),
    optional ``times.txt``; ground truth from ``poses_file`` or ``../../poses/NN.txt`` when present."""
    sequence_dir = Path(sequence_dir)
    image_dir = sequence_dir / f"image_{camera}"
    if not image_dir.is_dir():
        raise KittiError(f"{sequence_dir} has no image_{camera} folder: is it a KITTI odometry sequence?")
    paths = image_files(image_dir)
    if not paths:
        raise KittiError(f"{image_dir} holds no png/jpg images")
    calib_path = next((p for p in (sequence_dir / "calib.txt", sequence_dir / "calib_P0_P1_unlabeled.txt")
                       if p.is_file()), None)
    if calib_path is None:
        raise KittiError(f"{sequence_dir} has no calib.txt")
    calib = read_calib_file(calib_path)
    if f"P{camera}" in calib:
        projection = calib[f"P{camera}"].reshape(3, 4)
    else:
        rows = np.loadtxt(calib_path, ndmin=2)
        if rows.shape[1] != 12 or len(rows) <= camera:
            raise KittiError(f"{calib_path}: no P{camera} row")
        projection = rows[camera].reshape(3, 4)
    times = sequence_dir / "times.txt"
    indices = [int(p.stem) for p in paths]
    if times.is_file():
        stamps = (np.loadtxt(times, ndmin=1)[indices] * 1e9).astype(np.int64)
    else:
        stamps = np.array(indices, dtype=np.int64) * KITTI_FRAME_PERIOD_NS
    if poses_file is None:
        candidate = sequence_dir.parent.parent / "poses" / f"{sequence_dir.name}.txt"
        poses_file = candidate if candidate.is_file() else None
    poses = None
    if poses_file is not None:
        all_poses = read_kitti_poses(poses_file)
        if max(indices) >= len(all_poses):
            raise KittiError(f"{poses_file} has {len(all_poses)} poses, images go to frame {max(indices)}")
        poses = all_poses[indices]
    height, width = load_rgb(paths[0]).shape[:2]
    return Sequence(name=f"odometry_{sequence_dir.name}_{camera}", image_paths=tuple(paths), stamps_ns=stamps,
                    K=projection[:, :3].copy(), size=(height, width), poses=poses, camera=camera)


def oxts_camera_poses(drive_dir: Path | str, camera: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth camera poses from a raw drive's OXTS (GPS/IMU): ([N] stamps ns, [N,4,4] T_world_camera).

    OXTS -> IMU pose with a Mercator projection scaled at the first latitude (the KITTI devkit's method),
    then T_world_camera = T_world_imu @ inv(T_camera_imu) with T_camera_imu from the three calib files.
    The world frame is the first camera pose.
    """
    drive_dir = Path(drive_dir)
    calib_dir = drive_dir.parent
    files = sorted((drive_dir / "oxts" / "data").glob("*.txt"))
    if not files:
        raise KittiError(f"{drive_dir} has no oxts/data/*.txt")
    packets = np.array([np.loadtxt(f)[:6] for f in files])  # lat lon alt roll pitch yaw
    earth_radius = 6378137.0
    scale = np.cos(packets[0, 0] * np.pi / 180.0)
    poses_imu = []
    for lat, lon, alt, roll, pitch, yaw in packets:
        x = scale * lon * np.pi * earth_radius / 180.0
        y = scale * earth_radius * np.log(np.tan((90.0 + lat) * np.pi / 360.0))
        rotation = _rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll)
        poses_imu.append(_rigid(rotation, np.array([x, y, alt])))
    poses_imu = np.array(poses_imu)
    imu = read_calib_file(calib_dir / "calib_imu_to_velo.txt")
    projection, T_cam0rect_velo, _ = _raw_calibration(calib_dir, camera)
    T_camera_cam0rect = np.eye(4)
    T_camera_cam0rect[0, 3] = projection[0, 3] / projection[0, 0]
    T_camera_imu = T_camera_cam0rect @ T_cam0rect_velo @ _rigid(imu["R"], imu["T"])
    T_imu_camera = np.linalg.inv(T_camera_imu)
    poses_camera = poses_imu @ T_imu_camera
    poses_camera = np.linalg.inv(poses_camera[0]) @ poses_camera
    stamp_file = drive_dir / "oxts" / "timestamps.txt"
    if stamp_file.is_file():
        stamps = read_timestamps(stamp_file)[: len(files)]
    else:
        stamps = np.arange(len(files), dtype=np.int64) * KITTI_FRAME_PERIOD_NS
    return stamps, poses_camera


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def eigen_test_files(list_file: Path | str, kitti_root: Path | str) -> list[tuple[Path, Path, Path]]:
    """Resolve an Eigen-format list (``date/drive_sync/image_02/data/N.png`` per line) against a raw root.

    Returns (image, velodyne scan, calib folder) for entries whose files exist; png entries also match a
    jpg of the same name (the bundled sample is re-encoded).
    """
    root = Path(kitti_root)
    found = []
    for line in Path(list_file).read_text().split():
        image = root / line
        if not image.is_file():
            image = next((image.with_suffix(s) for s in IMAGE_SUFFIXES if image.with_suffix(s).is_file()), image)
        date, drive = Path(line).parts[:2]
        scan = root / date / drive / "velodyne_points" / "data" / f"{image.stem}.bin"
        if image.is_file() and scan.is_file():
            found.append((image, scan, root / date))
    return found
