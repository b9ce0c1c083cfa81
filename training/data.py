"""Training data: recorded drives -> frames + intrinsics -> static filter -> snippets -> a memory-mapped cache.

Sources (all give ordered frames, intrinsics and timestamps):
- KITTI raw: a ``*_sync`` drive folder or a date folder of drives; each colour camera is its own sequence;
- KITTI odometry: a ``sequences/NN`` folder (``image_2`` if present, else ``image_0``);
- rosbag2 (``.mcap``/``.db3`` file or bag folder): Image or CompressedImage + CameraInfo (or given intrinsics);
- an image folder with ``intrinsics.yaml`` (fx fy cx cy, or a ROS ``camera_matrix``).

``prepare_cache`` resizes every kept frame to the network size once and writes ``frames.npy`` (uint8
[N,H,W,3], memory-mappable) and ``index.json`` (sequences, intrinsics at network size, splits) atomically,
so a GPU is never starved by JPEG decoding. ``SnippetDataset`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset
from tqdm import tqdm

from sfm_ros import kitti
from sfm_ros.geometry import crop_intrinsics, scale_intrinsics
from training.config import DataConfig
from training.staging import staged_directory

__all__ = ["DataError", "FrameSequence", "SnippetDataset", "load_cache_index", "network_frames", "open_source",
           "prepare_cache", "random_colour_jitter", "random_flip", "random_scale_crop", "resize_to_network"]

CACHE_FORMAT = 1
# Colour augmentation (data.colour_augment): monodepth2's ranges (Godard et al. 2019, its trainer's ColorJitter),
# one draw per snippet, applied with probability COLOUR_JITTER_PROBABILITY.
COLOUR_JITTER_PROBABILITY = 0.5
BRIGHTNESS_RANGE = (0.8, 1.2)  # factor on every channel
CONTRAST_RANGE = (0.8, 1.2)  # factor on the distance from the snippet's mean grey level
SATURATION_RANGE = (0.8, 1.2)  # factor on the distance from each pixel's grey level
HUE_RANGE = (-0.1, 0.1)  # turn of the chroma plane, in full turns
# Rec. 601 luma weights and the RGB <-> YIQ matrices (luma + two chroma axes) that the hue turn works in.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


class DataError(RuntimeError):
    """A training source cannot be read or yields no usable frames."""


@dataclasses.dataclass
class FrameSequence:
    """An ordered run of frames from one camera before resizing.

    K: [3,3] at ``size`` (H, W); frames(): iterator of uint8 RGB [H,W,3]; static_keys: per-frame
    "date drive index" keys for KITTI raw (matched against SfMLearner's static list), else None;
    velodyne: per-frame LiDAR scan paths + calibration for validation depth, else None.
    """

    name: str
    K: np.ndarray
    size: tuple[int, int]
    stamps_ns: np.ndarray
    frames: Callable[[], Iterator[np.ndarray]]
    static_keys: list[str] | None = None
    kitti_sequence: kitti.Sequence | None = None


def _bundled_list(name: str) -> Path:
    return Path(str(resources.files("sfm_ros") / "data" / name))


def _from_kitti(sequence: kitti.Sequence, raw: bool) -> FrameSequence:
    keys = None
    if raw:
        date = sequence.calib_dir.name
        drive = sequence.image_paths[0].parents[2].name
        keys = [f"{date} {drive} {p.stem}" for p in sequence.image_paths]
    return FrameSequence(name=sequence.name, K=sequence.K, size=sequence.size, stamps_ns=sequence.stamps_ns,
                         frames=lambda: (kitti.load_rgb(p) for p in sequence.image_paths), static_keys=keys,
                         kitti_sequence=sequence)


def _read_intrinsics_yaml(path: Path) -> np.ndarray:
    data = yaml.safe_load(path.read_text()) or {}
    if "camera_matrix" in data:
        return np.asarray(data["camera_matrix"]["data"], dtype=np.float64).reshape(3, 3)
    try:
        fx, fy, cx, cy = (float(data[k]) for k in ("fx", "fy", "cx", "cy"))
    except KeyError as exc:
        raise DataError(f"{path} must give fx, fy, cx, cy or a camera_matrix; missing {exc}") from None
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def _intrinsics_from_config(config: DataConfig) -> np.ndarray | None:
    if not config.intrinsics:
        return None
    fx, fy, cx, cy = config.intrinsics
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def _bag_sequence(path: Path, config: DataConfig) -> FrameSequence:
    from sfm_ros.bags import (
        BagError,
        CameraTopics,
        find_camera_topics,
        open_reader,
        read_camera_frames,
        read_camera_stamps,
    )

    given_K = _intrinsics_from_config(config)
    if config.rectify and given_K is not None:
        raise DataError("data.rectify needs the bag's CameraInfo (its lens): data.intrinsics has no distortion to undo")
    with open_reader(path) as reader:
        topics: CameraTopics = find_camera_topics(reader.connections, config.image_topic or None,
                                                  config.info_topic or None, need_info=given_K is None)
        if reader.message_count == 0:
            raise BagError(f"bag {path} holds no messages")
    first = next(read_camera_frames(path, topics, given_K), None)
    if first is None:
        raise DataError(f"bag {path}: no decodable frame on {topics.image} (with CameraInfo {topics.camera_info})")
    stamps = read_camera_stamps(path, topics, need_info=given_K is None)
    return FrameSequence(name=path.stem if path.is_file() else path.name, K=first.camera.K,
                         size=first.rgb.shape[:2], stamps_ns=stamps,
                         frames=lambda: (f.rgb for f in read_camera_frames(path, topics, given_K,
                                                                           rectify=config.rectify)))


def open_source(source: str | Path, config: DataConfig) -> list[FrameSequence]:
    """Recognise a source by its layout and return its sequences (see the module docstring)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"training source {path} does not exist")
    # A bag: a storage file, or a folder with metadata.yaml or (a recording cut short) storage files only.
    if path.suffix in (".mcap", ".db3") or (path / "metadata.yaml").is_file() or (
            path.is_dir() and any(p.suffix in (".mcap", ".db3") for p in path.iterdir())):
        bag = path if path.is_dir() else path.parent if (path.parent / "metadata.yaml").is_file() else path
        return [_bag_sequence(bag, config)]
    if any((path / f"image_{c:02d}" / "data").is_dir() for c in range(4)):
        cameras = [c for c in config.kitti_camera if (path / f"image_{c:02d}" / "data").is_dir()]
        if not cameras:
            raise DataError(f"{path} has none of the KITTI cameras {config.kitti_camera}")
        return [_from_kitti(kitti.kitti_raw_drive(path, c), raw=True) for c in cameras]
    drives = sorted(p for p in path.glob("*_sync") if p.is_dir())
    if drives and (path / "calib_cam_to_cam.txt").is_file():
        return [s for d in drives if any((d / f"image_{c:02d}").is_dir() for c in config.kitti_camera)
                for s in open_source(d, config)]
    if (path / "image_2").is_dir() or (path / "image_0").is_dir():
        camera = 2 if (path / "image_2").is_dir() else 0
        return [_from_kitti(kitti.kitti_odometry_sequence(path, camera), raw=False)]
    images = kitti.image_files(path) if path.is_dir() else []
    if images:
        intrinsics_file = path / "intrinsics.yaml"
        K = _intrinsics_from_config(config)
        if K is None:
            if not intrinsics_file.is_file():
                raise DataError(f"image folder {path} needs an intrinsics.yaml (fx fy cx cy) or data.intrinsics")
            K = _read_intrinsics_yaml(intrinsics_file)
        size = kitti.load_rgb(images[0]).shape[:2]
        return [FrameSequence(name=path.name, K=K, size=size,
                              stamps_ns=np.arange(len(images), dtype=np.int64) * kitti.KITTI_FRAME_PERIOD_NS,
                              frames=lambda: (kitti.load_rgb(p) for p in images))]
    raise DataError(f"{path} is not a KITTI raw drive, odometry sequence, rosbag2 or image folder")


def _mean_flow(previous_grey: np.ndarray, grey: np.ndarray) -> float:
    flow = cv2.calcOpticalFlowFarneback(previous_grey, grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return float(np.linalg.norm(flow, axis=2).mean())


def _static_list(config: DataConfig) -> set[str]:
    path = Path(config.static_frames_list) if config.static_frames_list else _bundled_list("static_frames.txt")
    return {" ".join(line.split()) for line in path.read_text().splitlines() if line.strip()}


def _test_scenes() -> set[str]:
    return set(_bundled_list("test_scenes_eigen.txt").read_text().split())


@dataclasses.dataclass
class _Prepared:
    name: str
    frames: list[np.ndarray]
    K: np.ndarray
    stamps: list[int]
    split: str
    lidar: list[dict] | None
    raw_size: tuple[int, int]


def _prepare_sequence(sequence: FrameSequence, config: DataConfig, split: str, static: set[str] | None,
                      progress: bool) -> _Prepared:
    height, width = config.height, config.width
    K = scale_intrinsics(sequence.K, width / sequence.size[1], height / sequence.size[0])
    use_list = static is not None and sequence.static_keys is not None and config.static_filter in ("auto", "list")
    use_motion = config.static_filter == "motion" or (config.static_filter == "auto" and not use_list)
    kept, stamps, lidar = [], [], []
    last_grey = None
    seq = sequence.kitti_sequence
    with_lidar = split == "val" and seq is not None and seq.velodyne_paths is not None
    projection = kitti.velodyne_to_image_projection(seq.calib_dir, seq.camera) if with_lidar else None
    iterator = tqdm(enumerate(sequence.frames()), total=len(sequence.stamps_ns), desc=f"prepare {sequence.name}",
                    disable=not progress, unit="frame", leave=False)
    for i, rgb in iterator:
        if rgb.shape[:2] != tuple(sequence.size):
            raise DataError(f"{sequence.name} frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, the sequence is "
                            f"{sequence.size[1]}x{sequence.size[0]}")
        if use_list and sequence.static_keys[i] in static:
            continue
        small = resize_to_network(rgb, config)
        if use_motion and split == "train":
            grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
            if last_grey is not None and _mean_flow(last_grey, grey) < config.min_motion_px:
                continue
            last_grey = grey
        kept.append(small)
        stamps.append(int(sequence.stamps_ns[i]))
        if with_lidar:
            depth = kitti.lidar_depth_map(kitti.read_velodyne(seq.velodyne_paths[i]), projection, seq.size)
            v, u = np.nonzero(depth)
            lidar.append({"v": v.astype(np.int16), "u": u.astype(np.int16), "d": depth[v, u].astype(np.float32)})
    return _Prepared(sequence.name, kept, K, stamps, split, lidar if with_lidar else None, tuple(sequence.size))


def prepare_cache(config: DataConfig, out_dir: str | Path, progress: bool = True, overwrite: bool = False) -> Path:
    """Build the training cache for ``config.sources`` (train) and ``config.val_sources`` (val).

    Writes ``frames.npy``, ``lidar.npz`` (validation LiDAR, raw-size sparse depth) and ``index.json`` into a
    temporary folder renamed to ``out_dir`` on success. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"cache {out_dir} exists already, not overwriting (use --overwrite)")
    if not config.sources:
        raise DataError("no training sources: set data.sources")
    static = _static_list(config) if config.static_filter in ("auto", "list") else None
    excluded = _test_scenes() if config.exclude_test_scenes else set()
    prepared: list[_Prepared] = []
    for split, sources in (("train", config.sources), ("val", config.val_sources)):
        for source in sources:
            for sequence in open_source(source, config):
                drive = sequence.name.rsplit("_sync", 1)[0]
                if split == "train" and drive in excluded:
                    print(f"skipping {sequence.name}: an Eigen test scene (data.exclude_test_scenes)")
                    continue
                prepared.append(_prepare_sequence(sequence, config, split, static, progress))
    usable = [p for p in prepared if len(p.frames) >= config.sequence_length]
    if not any(p.split == "train" for p in usable):
        counts = {p.name: len(p.frames) for p in prepared}
        raise DataError(f"no training sequence keeps {config.sequence_length}+ frames after static filtering "
                        f"(kept per sequence: {counts}); lower data.min_motion_px or change data.static_filter")
    with staged_directory(out_dir) as tmp:
        total = sum(len(p.frames) for p in usable)
        frames = np.lib.format.open_memmap(tmp / "frames.npy", mode="w+", dtype=np.uint8,
                                           shape=(total, config.height, config.width, 3))
        sequences, lidar_arrays, offset = [], {}, 0
        for p in usable:
            frames[offset: offset + len(p.frames)] = np.stack(p.frames)
            entry = {"name": p.name, "offset": offset, "count": len(p.frames), "K": p.K.tolist(),
                     "stamps_ns": p.stamps, "split": p.split, "lidar": p.lidar is not None,
                     "raw_size": list(p.raw_size)}
            if p.lidar is not None:
                for j, item in enumerate(p.lidar):
                    for key, value in item.items():
                        lidar_arrays[f"{offset + j}_{key}"] = value
            sequences.append(entry)
            offset += len(p.frames)
        frames.flush()
        del frames
        np.savez_compressed(tmp / "lidar.npz", **lidar_arrays)
        index = {"format": CACHE_FORMAT, "height": config.height, "width": config.width, "sequences": sequences}
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
    return out_dir


def resize_to_network(rgb: np.ndarray, config: DataConfig) -> np.ndarray:
    """uint8 RGB [H,W,3] at any size -> [data.height, data.width, 3] (area-averaged, as the cache stores frames)."""
    return cv2.resize(rgb, (config.width, config.height), interpolation=cv2.INTER_AREA)


def network_frames(source: str | Path, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of a one-sequence source at network size, unfiltered, read as ``prepare_cache`` reads it.

    For evaluation on held-out drives without a cache. Returns (frames uint8 [N,h,w,3], K [3,3] at h,w).
    """
    sequences = open_source(source, config)
    if len(sequences) != 1:
        raise DataError(f"{source} holds {len(sequences)} sequences; evaluation reads one per source")
    sequence = sequences[0]
    K = scale_intrinsics(sequence.K, config.width / sequence.size[1], config.height / sequence.size[0])
    return np.stack([resize_to_network(rgb, config) for rgb in sequence.frames()]), K


def load_cache_index(cache_dir: str | Path) -> dict:
    """Read and check ``index.json`` of a cache."""
    path = Path(cache_dir) / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{cache_dir} is not a prepared cache (no index.json): run `sfm prepare` first") from None
    if index.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: cache format {index.get('format')!r}, expected {CACHE_FORMAT}; prepare it again")
    return index


def random_scale_crop(images: np.ndarray, K: np.ndarray, rng: np.random.Generator, max_scale: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The paper's augmentation: zoom all frames of a snippet by s ~ U(1, max_scale), crop back to size.

    images: uint8 [L,H,W,3]; K [3,3] -> (images [L,H,W,3], K [3,3] for the crop).
    """
    _, height, width, _ = images.shape
    scale = rng.uniform(1.0, max_scale)
    scaled_h, scaled_w = round(height * scale), round(width * scale)
    top = int(rng.integers(0, scaled_h - height + 1))
    left = int(rng.integers(0, scaled_w - width + 1))
    out = np.stack([cv2.resize(img, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR)[
        top: top + height, left: left + width] for img in images])
    K_out = crop_intrinsics(scale_intrinsics(K, scaled_w / width, scaled_h / height), left, top)
    return out, K_out


def random_flip(images: np.ndarray, K: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a whole snippet left-right with probability 1/2: the mirrored video is a valid video of a mirrored
    world, seen by the camera with cx -> W - 1 - cx (pixel-centre convention). images: [L,H,W,3]; K: [3,3]."""
    if rng.random() < 0.5:
        return images, K
    K_out = np.array(K, dtype=np.float64)
    K_out[0, 2] = images.shape[2] - 1 - K_out[0, 2]
    return np.ascontiguousarray(images[:, :, ::-1]), K_out


def random_colour_jitter(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue changed at random, the same for every frame of a snippet.

    images: uint8 RGB [L,H,W,3] -> uint8 [L,H,W,3]. A snippet whose frames share one colour change is still a
    valid video (brightness constancy holds between its frames), so the photometric loss stays honest while the
    networks stop keying on the colours of the surfaces they were trained on. With probability
    1 - COLOUR_JITTER_PROBABILITY the snippet is returned unchanged (the draws are made either way, so that the
    augmentation that follows sees the same random stream).
    """
    apply = rng.random() < COLOUR_JITTER_PROBABILITY
    brightness, contrast, saturation = (rng.uniform(*r) for r in (BRIGHTNESS_RANGE, CONTRAST_RANGE, SATURATION_RANGE))
    hue = rng.uniform(*HUE_RANGE)
    if not apply:
        return images
    rgb = images.astype(np.float32) / 255.0 * brightness
    mean_grey = float((rgb @ LUMA_WEIGHTS.astype(np.float32)).mean())
    rgb = (rgb - mean_grey) * contrast + mean_grey
    grey = (rgb @ LUMA_WEIGHTS.astype(np.float32))[..., None]
    rgb = grey + (rgb - grey) * saturation
    # Hue: turn the (I, Q) chroma plane about the luma axis; Y (the grey level) is unchanged.
    angle = 2.0 * np.pi * hue
    turn = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
    colour_matrix = np.linalg.inv(RGB_TO_YIQ) @ turn @ RGB_TO_YIQ
    rgb = rgb @ colour_matrix.T.astype(np.float32)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


class SnippetDataset(Dataset):
    """Snippets from a prepared cache: ``images`` uint8 [L,3,H,W] (target at L//2), ``K`` float32 [3,3].

    Augmentation randomness is seeded by (seed, epoch, index), so a resumed run sees the same samples.
    """

    def __init__(self, cache_dir: str | Path, split: str, sequence_length: int, augment: bool = False,
                 max_scale: float = 1.15, seed: int = 0, flip: bool = False,
                 frame_strides: tuple[int, ...] = (1,), flip_depth: bool = False,
                 colour_augment: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.index = load_cache_index(cache_dir)
        self.frames = np.load(self.cache_dir / "frames.npy", mmap_mode="r")
        self.length = sequence_length
        self.augment = augment
        self.flip = flip
        self.flip_depth = flip_depth
        self.colour_augment = colour_augment
        self.max_scale = max_scale
        self.seed = seed
        self.epoch = 0
        if not frame_strides or min(frame_strides) < 1:
            raise ValueError(f"frame strides must be positive integers, got {frame_strides}")
        self.frame_strides = tuple(sorted(set(frame_strides)))
        reach = sequence_length // 2 * self.frame_strides[0]
        self.items: list[tuple[int, int]] = []  # (sequence index, global frame index of the target)
        for s, seq in enumerate(self.index["sequences"]):
            if seq["split"] != split:
                continue
            for j in range(reach, seq["count"] - reach):
                self.items.append((s, seq["offset"] + j))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        sequence_index, center = self.items[item]
        half = self.length // 2
        rng = np.random.default_rng((self.seed, self.epoch, item))
        stride = self.frame_strides[0]
        if len(self.frame_strides) > 1:
            sequence = self.index["sequences"][sequence_index]
            first, end = sequence["offset"], sequence["offset"] + sequence["count"]
            fitting = [s for s in self.frame_strides if center - half * s >= first and center + half * s < end]
            stride = int(rng.choice(fitting))
        images = np.asarray(self.frames[center - half * stride: center + half * stride + 1: stride])
        K = np.asarray(self.index["sequences"][sequence_index]["K"])
        if self.augment:
            images, K = random_scale_crop(images, K, rng, self.max_scale)
        if self.flip:
            images, K = random_flip(images, K, rng)
        item = {"images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                "K": torch.from_numpy(K.astype(np.float32)), "frame": torch.tensor(center)}
        if self.flip_depth:  # drawn last, so the other draws are those of a run without it
            item["depth_mirrored"] = torch.tensor(bool(rng.random() < 0.5))
        if self.colour_augment:  # drawn after the rest, so the other draws are those of a run without it
            item["images"] = torch.from_numpy(np.ascontiguousarray(
                random_colour_jitter(images, rng).transpose(0, 3, 1, 2)))
        return item
