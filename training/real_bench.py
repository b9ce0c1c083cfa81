"""The learning benchmark's real-video track: with a short real recording, which start gives the better model?

A user with a short recording can train on it from scratch, fine-tune a model trained on rendered streets on it
(``sfm train --init-from BUNDLE``), or use the rendered-streets model as it is. ``bench_real`` measures the three
side by side on a real drive:

- training frames: a range of a KITTI odometry sequence (by default 00, frames 0-149: 100 m of a suburban drive)
  written as an image folder with ``intrinsics.yaml`` (``write_frame_range``), the form of a user's recording, and
  prepared by ``sfm prepare``'s own cache code (static filter included);
- motion, on frames no start trained on (by default 00 frames 150-199 and 06 frames 0-50, another drive with
  another calibration): SfMLearner's 5-frame snippet ATE of the trajectory chained from the pose net's motions
  (``learning_bench.predicted_poses``, ``snippet_ate_mean``), beside constant forward motion;
- depth, on a KITTI raw drive with LiDAR (by default 2011_09_26_drive_0060, 20 frames): the Eigen protocol (median
  scaling, Garg crop, cap 80 m; ``sfm_ros.metrics.eigen_depth_evaluation`` on ``sfm_ros.kitti``'s LiDAR projection),
  beside one constant depth. Those frames are colour; when the training frames are grey (KITTI odometry's image_0)
  every start is shown them in grey, as the test frames of its motion are.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml

from sfm_ros import kitti
from sfm_ros.bundle import DEPTH_WEIGHTS, POSE_WEIGHTS, load_networks, read_metadata, sha256_file
from sfm_ros.config import to_dict
from sfm_ros.metrics import eigen_depth_evaluation
from training.config import DataConfig, load_train_config
from training.data import network_frames, resize_to_network
from training.learning_bench import (
    DEPTH_KEYS,
    cache_for,
    constant_forward_poses,
    predicted_poses,
    seed_spread,
    snippet_ate_mean,
    train_scored,
)
from training.normalisation import normalise
from training.staging import staged_directory
from training.step import sequence_depth_input
from training.trainer import Trainer

__all__ = ["STARTS", "FrameRange", "LidarDepthScorer", "MotionScorer", "bench_real", "format_real_table",
           "parse_frame_range", "write_frame_range"]

POSES_FILE = "poses.txt"  # ground truth T_world_cam of a written frame range, KITTI format (12 numbers a line)
# The three starts, in the order they are tabulated.
STARTS = {"streets": "rendered streets only (no training on the real frames)",
          "scratch": "from scratch on the real frames",
          "finetune": "rendered streets, fine-tuned on the real frames"}


@dataclasses.dataclass(frozen=True)
class FrameRange:
    """Frames ``first`` to ``last`` (inclusive, file numbers) of a KITTI odometry ``sequences/NN`` folder."""

    sequence: Path
    first: int
    last: int

    @property
    def name(self) -> str:
        return f"{self.sequence.name}_{self.first}-{self.last}"


def parse_frame_range(text: str) -> FrameRange:
    """``SEQUENCE_DIR:FIRST-LAST`` (inclusive) -> FrameRange."""
    folder, sep, frames = text.rpartition(":")
    first, dash, last = frames.partition("-")
    if not (sep and dash and first.isdigit() and last.isdigit()) or int(last) < int(first):
        raise ValueError(f"a frame range is SEQUENCE_DIR:FIRST-LAST (inclusive), e.g. seq/00:0-149; got {text!r}")
    return FrameRange(Path(folder).expanduser(), int(first), int(last))


def write_frame_range(frames: FrameRange, out_dir: str | Path) -> Path:
    """Write a frame range as a user's recording looks to ``sfm prepare``: an image folder with ``intrinsics.yaml``.

    The image files are copied byte for byte under their own names; ``intrinsics.yaml`` holds fx fy cx cy of the
    sequence's calibration (native pixels: the frames are not resized); ``poses.txt`` the ground truth of those
    frames where the sequence has it (KITTI format, the sequence's world frame). Written once (all or nothing) and
    reused while the source range is the same.
    """
    out_dir = Path(out_dir)
    camera = 2 if (frames.sequence / "image_2").is_dir() else 0
    sequence = kitti.kitti_odometry_sequence(frames.sequence, camera)
    numbers = [int(p.stem) for p in sequence.image_paths]
    chosen = [i for i, n in enumerate(numbers) if frames.first <= n <= frames.last]
    if len(chosen) != frames.last - frames.first + 1:
        raise kitti.KittiError(f"{frames.sequence} holds {len(chosen)} of frames {frames.first}-{frames.last} "
                               f"(it has {numbers[0]}-{numbers[-1]}, {len(numbers)} files)")
    stamp = out_dir / ".source"
    signature = f"{frames.sequence.resolve()} camera {camera} frames {frames.first}-{frames.last}"
    if stamp.is_file() and stamp.read_text() == signature:
        return out_dir
    with staged_directory(out_dir) as tmp:
        for i in chosen:
            shutil.copyfile(sequence.image_paths[i], tmp / sequence.image_paths[i].name)
        K = sequence.K
        (tmp / "intrinsics.yaml").write_text(yaml.safe_dump(
            {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}))
        if sequence.poses is not None:
            np.savetxt(tmp / POSES_FILE, sequence.poses[chosen][:, :3, :].reshape(len(chosen), 12), fmt="%.9e")
        (tmp / ".source").write_text(signature)
    return out_dir


def _is_grey(frames: np.ndarray) -> bool:
    """Whether uint8 RGB frames [..., 3] carry one grey level per pixel (a greyscale camera read as RGB)."""
    return bool(np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2]))


class MotionScorer:
    """5-frame snippet ATE of a pose net on a written frame range (frames read at network size as a cache reads
    them; ground truth from its ``poses.txt``)."""

    def __init__(self, folder: str | Path, data: DataConfig) -> None:
        folder = Path(folder)
        frames, _ = network_frames(folder, data)
        if not (folder / POSES_FILE).is_file():
            raise kitti.KittiError(f"{folder} has no {POSES_FILE}: motion is scored against ground-truth poses")
        self.truth = kitti.read_kitti_poses(folder / POSES_FILE)
        if len(self.truth) != len(frames):
            raise ValueError(f"{folder}: {len(frames)} frames, {len(self.truth)} poses")
        self.name = folder.name
        self.images = normalise(torch.from_numpy(frames).permute(0, 3, 1, 2))

    def score(self, pose_net: torch.nn.Module, device: torch.device) -> float:
        """Mean snippet ATE of the pose net's chained motions (the caller sets eval mode)."""
        return snippet_ate_mean([self.truth], [predicted_poses(pose_net, self.images, device)])

    def baseline(self) -> float:
        """Mean snippet ATE of constant forward motion."""
        return snippet_ate_mean([self.truth], [constant_forward_poses(len(self.truth))])


class LidarDepthScorer:
    """Eigen depth metrics on a KITTI raw drive's LiDAR frames (camera 2).

    frames: uint8 [N,h,w,3] at network size (in grey when ``grey``); truth: N sparse depth maps [H,W] at the raw
    size, metres, 0 = no return.
    """

    def __init__(self, drive: str | Path, data: DataConfig, grey: bool) -> None:
        from sfm_ros.evaluate import depth_samples_from_drive

        samples = depth_samples_from_drive(drive)
        projection = kitti.velodyne_to_image_projection(samples[0].calib_dir, samples[0].camera)
        frames, self.truth = [], []
        for sample in samples:
            rgb = kitti.load_rgb(sample.image)
            if grey:
                rgb = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
            frames.append(resize_to_network(rgb, data))
            self.truth.append(kitti.lidar_depth_map(kitti.read_velodyne(sample.scan), projection, rgb.shape[:2]))
        self.name = Path(drive).name
        self.frames = np.stack(frames)
        self.images = normalise(torch.from_numpy(self.frames).permute(0, 3, 1, 2))

    def score_depths(self, depths: list[np.ndarray] | np.ndarray) -> dict[str, float]:
        """Mean Eigen metrics (median scaling, Garg crop, cap 80 m) of depth maps at any size, one per frame."""
        if len(depths) != len(self.truth):
            raise ValueError(f"{len(depths)} depth maps for {len(self.truth)} LiDAR frames")
        rows = [eigen_depth_evaluation(pred, gt, median_scaling=True, garg_crop=True).metrics
                for pred, gt in zip(depths, self.truth, strict=True)]
        return {key: float(np.mean([row[key] for row in rows])) for key in DEPTH_KEYS}

    @torch.no_grad()
    def score(self, depth_net: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """The depth net's depth (1 / disparity) scored (the caller sets eval mode)."""
        depths = [1.0 / depth_net(sequence_depth_input(self.images, chunk, depth_net.input_frames)
                                  .to(device))[0].float()[:, 0].cpu().numpy()
                  for chunk in torch.split(torch.arange(len(self.images)), 16)]
        return self.score_depths(np.concatenate(depths))

    def baseline(self) -> dict[str, float]:
        """The metrics of one constant depth everywhere."""
        return self.score_depths(np.ones((len(self.truth), 8, 8)))


class RealScores:
    """Every score of the track for a pair of networks: ``ate_<range>`` per motion range, ``depth_<metric>``."""

    def __init__(self, motion: list[MotionScorer], depth: LidarDepthScorer) -> None:
        self.motion, self.depth = motion, depth

    def evaluate(self, depth_net: torch.nn.Module, pose_net: torch.nn.Module, device: torch.device
                 ) -> dict[str, float]:
        was_training = depth_net.training, pose_net.training
        depth_net.eval()
        pose_net.eval()
        try:
            row = {f"ate_{m.name}": m.score(pose_net, device) for m in self.motion}
            row.update({f"depth_{k}": v for k, v in self.depth.score(depth_net, device).items()})
        finally:
            depth_net.train(was_training[0])
            pose_net.train(was_training[1])
        return row

    def baselines(self) -> dict[str, float]:
        row = {f"ate_{m.name}": m.baseline() for m in self.motion}
        row.update({f"depth_{k}": v for k, v in self.depth.baseline().items()})
        return row


def _train_start(start: str, config_overrides: list[str], preset: str | None, bundle: Path, train_folder: Path,
                 steps: int, eval_every: int, seed: int, work_dir: Path, scores: RealScores, progress: bool,
                 size: tuple[int, int]) -> dict[str, Any]:
    """Train one start (scratch or finetune) on the written frames, scoring along the way; returns its record."""
    config = load_train_config(preset, [
        *config_overrides, f"data.height={size[0]}", f"data.width={size[1]}", f"data.sources=[{train_folder}]",
        "data.val_sources=[]", f"optim.max_steps={steps}", f"run.seed={seed}",
        f"run.progress={'true' if progress else 'false'}", "run.val_every_epochs=100000",
        *([f"model.init_from={bundle}"] if start == "finetune" else [])])
    cache = cache_for(config, work_dir, progress)
    trainer = Trainer(config, cache, work_dir / "runs" / f"{start}_seed{seed}")
    curve, summary, train_s = train_scored(
        trainer, steps, eval_every, lambda: scores.evaluate(*trainer.evaluation_networks(), trainer.device))
    frames = sum(s["count"] for s in json.loads((cache / "index.json").read_text())["sequences"])
    return {"steps": trainer.state.step, "curve": curve, "final": curve[-1], "train_s": train_s,
            "seconds_per_step": train_s / max(trainer.state.step, 1), "training_frames_kept": frames,
            "init_from": trainer.init_from, "bundle": summary["bundle"],
            "health_warnings": summary.get("health_warnings", []), "config": to_dict(config)}


def bench_real(bundle: str | Path, output: str | Path, train: FrameRange, motion: list[FrameRange],
               depth_drive: str | Path, steps: int = 2000, eval_every: int = 500, seeds: tuple[int, ...] = (0,),
               preset: str | None = None, overrides: list[str] | tuple[str, ...] = (), progress: bool = True,
               starts: tuple[str, ...] = tuple(STARTS)) -> dict[str, Any]:
    """Score the three starts (``STARTS``) on a real drive; writes ``real.json`` into ``output``, returns it.

    bundle: the rendered-streets model (its input size is the size of every start). train: the frames trained on;
    motion: frame ranges scored for motion (never trained on); depth_drive: a KITTI raw ``*_sync`` drive with
    LiDAR. preset + overrides: the recipe both trainings use. Each (start, seed) record is saved as it finishes and
    reused by a rerun with the same steps, recipe and bundle (resumable).
    """
    from sfm_ros.bench import machine_description
    from training.trainer import resolve_device

    unknown = set(starts) - set(STARTS)
    if unknown:
        raise ValueError(f"unknown starts {sorted(unknown)}; the starts are {list(STARTS)}")
    bundle, output = Path(bundle).expanduser(), Path(output)
    metadata = read_metadata(bundle)
    size = (metadata.height, metadata.width)
    bundle_id = {"path": str(bundle.resolve()), "depth_sha256": sha256_file(bundle / DEPTH_WEIGHTS),
                 "pose_sha256": sha256_file(bundle / POSE_WEIGHTS), "steps": metadata.training.get("steps")}
    work_dir = output / "work"
    train_folder = write_frame_range(train, work_dir / "frames" / train.name)
    data = load_train_config(preset, [*overrides, f"data.height={size[0]}", f"data.width={size[1]}"]).data
    motion_scorers = [MotionScorer(write_frame_range(m, work_dir / "frames" / m.name), data) for m in motion]
    grey = _is_grey(kitti.load_rgb(kitti.image_files(train_folder)[0]))
    scores = RealScores(motion_scorers, LidarDepthScorer(depth_drive, data, grey))
    records_dir = output / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for start in starts:
        for seed in seeds if start != "streets" else (0,):  # the bundle alone has no seed of its own
            path = records_dir / f"{start}_seed{seed}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                if (record["bundle_id"] == bundle_id and record["overrides"] == list(overrides)
                        and record["preset"] == preset and record["steps"] == (0 if start == "streets" else steps)):
                    runs.setdefault(start, []).append(record)
                    continue
            if progress:
                print(f"== {start} seed {seed}: {STARTS[start]}", flush=True)
            if start == "streets":
                device = resolve_device(load_train_config(preset, list(overrides)).run.device)
                depth_net, pose_net, _ = load_networks(bundle, device=str(device))
                row = {"step": 0, **scores.evaluate(depth_net, pose_net, device)}
                record = {"steps": 0, "curve": [row], "final": row}
            else:
                record = _train_start(start, list(overrides), preset, bundle, train_folder, steps, eval_every, seed,
                                      work_dir, scores, progress, size)
            record.update({"start": start, "seed": seed, "bundle_id": bundle_id, "overrides": list(overrides),
                           "preset": preset, "threads": torch.get_num_threads()})
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(path)
            runs.setdefault(start, []).append(record)
    result = {"benchmark": "learning-real", "bundle": bundle_id, "input": list(size), "steps": steps,
              "seeds": list(seeds), "train": train.name, "motion": [m.name for m in motion],
              "depth_drive": Path(depth_drive).name, "grey": grey, "baselines": scores.baselines(),
              "machine": machine_description(), "table": _summarise(runs),
              "starts": {start: [{k: r[k] for k in ("seed", "steps", "final", "curve") if k in r} for r in records]
                         for start, records in runs.items()}}
    (output / "real.json").write_text(json.dumps(result, indent=1))
    return result


def _summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per start: mean, min and max over seeds of every final score."""
    rows = []
    for start, records in runs.items():
        row: dict[str, Any] = {"start": start, "seeds": [r["seed"] for r in records], "steps": records[0]["steps"]}
        row.update(seed_spread(records, [key for key in records[0]["final"] if key not in ("step", "eval_s")]))
        rows.append(row)
    return rows


def format_real_table(result: dict[str, Any]) -> str:
    """A Markdown table: depth abs_rel and a1 on the LiDAR frames, snippet ATE per motion range, per start."""
    ate_keys = [f"ate_{name}" for name in result["motion"]]
    keys = ["depth_abs_rel", "depth_a1", *ate_keys]
    header = ["start", "steps", f"{result['depth_drive']} abs_rel", "a1",
              *(f"{name} 5-frame ATE" for name in result["motion"])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = result["baselines"]
    lines.append("| constant depth / constant forward | - | " + " | ".join(
        f"{base[k]:.3f}" if k.startswith("depth") else f"{base[k]:.4f}" for k in keys) + " |")
    for row in result["table"]:
        cells = []
        for key in keys:
            text = f"{row[key]:.{3 if key.startswith('depth') else 4}f}"
            if len(row["seeds"]) > 1:
                text += f" ({row[f'{key}_min']:.3g}-{row[f'{key}_max']:.3g})"
            cells.append(text)
        lines.append(f"| {STARTS[row['start']]} | {row['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_data() -> dict[str, Any]:
    """The shared real data beside the repository: KITTI 00 frames 0-149 to train on, 00 150-199 and 06 0-50 for
    motion, the raw drive 2011_09_26_0060 for LiDAR depth."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    seq00 = shared / "kitti_odometry_seq00_200" / "sequences" / "00"
    seq06 = shared / "kitti_odometry_seq06_snippet" / "sequences" / "06"
    return {"train": f"{seq00}:0-149", "motion": [f"{seq00}:150-199", f"{seq06}:0-50"],
            "depth_drive": str(shared / "kitti_raw_2011_09_26" / "2011_09_26" / "2011_09_26_drive_0060_sync")}


def run_from_arguments(args: Any) -> dict[str, Any]:
    """Resolve defaults (the shared data, workers by cores) and run ``bench_real``."""
    import os

    defaults = default_data()
    train = parse_frame_range(args.train or defaults["train"])
    motion = [parse_frame_range(m) for m in (args.motion or defaults["motion"])]
    depth_drive = args.depth_drive or defaults["depth_drive"]
    for path in (train.sequence, *(m.sequence for m in motion), Path(depth_drive)):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist: give --train, --motion and --depth-drive, or put the "
                                    "shared data beside the repository (../shared/data)")
    workers = args.workers
    if workers is None:
        workers = min(load_train_config(args.config).data.workers, max((os.cpu_count() or 1) - 2, 0))
    return bench_real(args.bundle, args.output, train, motion, depth_drive, args.steps, args.eval_every,
                      tuple(args.seeds), args.config, [*args.set, f"data.workers={workers}"],
                      progress=not args.quiet, starts=tuple(args.starts))
