"""Does a recipe learn depth and motion? Train on rendered streets, score against their exact depth and poses.

``run_learning`` writes the training streets as image folders (the form of a user's recording), prepares the cache
through ``sfm prepare``'s own code, trains with the ``Trainer`` and, at steps along the way, evaluates on the
held-out streets of ``val`` (new street layouts, surfaces train has seen) and, where the source has it,
``val_unseen`` (new streets with surfaces train never saw: what a robot meets in a new place):

- depth: the Eigen metrics with per-image median scaling, cap 80 m, on pixels with a surface (depth > 0), the
  prediction resized to the ground truth's size (``sfm_ros.metrics.eigen_depth_evaluation``, no Garg crop);
- motion: SfMLearner's 5-frame snippet ATE (per-snippet least-squares scale) on the trajectory chained from the
  pose net's frame-to-frame motions, as the node chains them;

beside two baselines scored the same way: one constant depth everywhere, and constant forward motion. With the
weights' moving average on (``optim.average_decay``, the default), every evaluation scores the average (what the
bundle holds; unprefixed keys) and the last weights (keys prefixed ``last_``): a paired comparison on one run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfm_ros.config import to_dict
from sfm_ros.geometry import window_transforms
from sfm_ros.metrics import eigen_depth_evaluation, snippet_ates
from training.companion import deployed_depth_net
from training.config import DataConfig, TrainConfig, load_train_config
from training.data import network_frames, prepare_cache
from training.health import training_health
from training.normalisation import normalise
from training.step import sequence_depth_input
from training.synth_streets import StreetSplit, default_streets, has_split, street_folders
from training.trainer import Trainer

__all__ = ["LearningEvaluator", "at_step", "cache_for", "chain_motions", "constant_forward_poses", "depth_scores",
           "plot_learning_curves", "predicted_poses", "run_learning", "seed_spread", "snippet_ate_mean", "summarise",
           "train_scored"]

DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "a1")
# Held-out splits scored at every evaluation: "val" (new streets, surfaces train has seen) with unprefixed keys, and
# "val_unseen" (new streets with surfaces train never saw), where the source has it, with keys prefixed "unseen_".
HELD_OUT_SPLITS = {"val": "", "val_unseen": "unseen_"}
SNIPPET_LENGTH = 5
# Keys of the last weights' scores, beside the moving average's (unprefixed) when optim.average_decay > 0.
LAST_WEIGHTS_PREFIX = "last_"
# A run whose depth is no better than 0.9x the constant baseline's abs_rel has learnt no structure: collapsed.
COLLAPSE_RATIO = 0.9


def depth_scores(pred_depth: np.ndarray, gt_depth: np.ndarray) -> dict[str, float]:
    """Mean Eigen metrics over frames. pred_depth: [N,h,w] (any positive scale); gt_depth: [N,H,W], 0 = none."""
    rows = [eigen_depth_evaluation(pred, gt, median_scaling=True, garg_crop=False).metrics
            for pred, gt in zip(pred_depth, gt_depth, strict=True)]
    return {key: float(np.mean([row[key] for row in rows])) for key in DEPTH_KEYS}


def chain_motions(T_next_current: np.ndarray) -> np.ndarray:
    """Camera poses [F,4,4] (first = identity) from frame-to-frame motions [F-1,4,4].

    T_next_current[i] maps points of camera i into camera i+1, so pose(i+1) = pose(i) @ inv(T_next_current[i]).
    """
    poses = [np.eye(4)]
    for motion in T_next_current:
        poses.append(poses[-1] @ np.linalg.inv(motion))
    return np.asarray(poses)


def snippet_ate_mean(gt_poses: list[np.ndarray], pred_poses: list[np.ndarray]) -> float:
    """Mean 5-frame snippet ATE over every window of every street (poses [F,4,4] per street)."""
    errors = [snippet_ates(gt, pred, SNIPPET_LENGTH) for gt, pred in zip(gt_poses, pred_poses, strict=True)]
    return float(np.concatenate(errors).mean())


def constant_forward_poses(frames: int) -> np.ndarray:
    """The no-knowledge motion baseline: camera poses [frames,4,4] moving 1 unit straight ahead (+z) a frame."""
    forward = np.eye(4)
    forward[2, 3] = -1.0  # camera i's points are 1 unit closer in camera i+1
    return chain_motions(np.repeat(forward[None], frames - 1, axis=0))


@torch.no_grad()
def predicted_poses(pose_net: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Camera poses [F,4,4] (first = identity) chained from the pose net's motions over a video, as the node chains
    them (``sfm_ros.odometry.network.relative_pose``): any window length ``pose_net.num_sources + 1``.

    images: normalised frames [F,3,h,w] in order, F >= L. The window of frames s..s+L-1 has its target at s + L//2;
    it gives the step from its last-but-one frame to its last; the first window also gives the steps before (the node
    publishes frames 1..L-3 at the start pose; here they take the first window's poses). The caller sets eval mode.
    """
    length = pose_net.num_sources + 1
    if len(images) < length:
        raise ValueError(f"{len(images)} frames are fewer than the pose net's window of {length}")
    center = length // 2
    others = [k for k in range(length) if k != center]
    starts = torch.arange(len(images) - length + 1)
    T_next, first = [], True
    for chunk in torch.split(starts, 16):
        target = images[chunk + center].to(device)
        sources = torch.stack([images[chunk + k] for k in others], dim=1).to(device)
        vectors = pose_net(target, sources)[0].double().cpu().numpy()
        for window in vectors:
            # T_frame_target[k] maps the target's points into window frame k's camera.
            T_frame_target = window_transforms(window)
            # Points of frame k into frame k+1: T_(k+1)<-target @ inv(T_k<-target).
            steps = range(length - 1) if first else [length - 2]
            T_next.extend(T_frame_target[k + 1] @ np.linalg.inv(T_frame_target[k]) for k in steps)
            first = False
    return chain_motions(np.asarray(T_next))


class LearningEvaluator:
    """Scores the networks of a run on held-out streets, their frames read at network size as a cache reads them."""

    def __init__(self, split: StreetSplit, data: DataConfig, max_depth_frames: int = 0) -> None:
        self.frames, self.K = [], []
        for folder, gt in zip(split.folders, split.depth, strict=True):
            frames, K = network_frames(folder, data)
            if len(frames) != len(gt):
                raise ValueError(f"validation street {folder}: {len(frames)} frames, {len(gt)} in the truth")
            self.frames.append(frames)
            self.K.append(torch.tensor(K, dtype=torch.float32))
        self.split = split
        # Depth on every frame by default; a stride keeps big GPU-size evaluations short.
        frames = split.depth.shape[1]
        stride = max(1, math.ceil(len(split.folders) * frames / max_depth_frames)) if max_depth_frames else 1
        self.depth_frames = list(range(0, frames, stride))

    def baselines(self) -> dict[str, float]:
        """The scores of knowing nothing, on the same frames: one depth everywhere, 1 unit straight ahead a frame."""
        truth = self.split.depth[:, self.depth_frames].reshape(-1, *self.split.depth.shape[2:])
        constant = depth_scores(np.ones_like(truth), truth)
        straight_ahead = [constant_forward_poses(self.split.T_world_cam.shape[1]) for _ in self.split.folders]
        return {**{f"constant_depth_{k}": v for k, v in constant.items()},
                "constant_forward_snippet_ate": snippet_ate_mean(list(self.split.T_world_cam), straight_ahead)}

    @torch.no_grad()
    def evaluate(self, depth_net: torch.nn.Module, pose_net: torch.nn.Module, device: torch.device,
                 alpha: float, beta: float) -> dict[str, float]:
        """Depth metrics, snippet ATE and the health statistics of the disparity (eval mode; restores train mode)."""
        was_training = depth_net.training, pose_net.training
        depth_net.eval()
        pose_net.eval()
        preds, truths, gt_poses, pred_poses, health = [], [], [], [], []
        try:
            for street, frames in enumerate(self.frames):
                images = normalise(torch.from_numpy(frames).permute(0, 3, 1, 2))
                for chunk in torch.split(torch.arange(len(images))[self.depth_frames], 16):
                    disparity = depth_net(sequence_depth_input(images, chunk, depth_net.input_frames)
                                          .to(device))[0].float()
                    preds.append((1.0 / disparity[:, 0]).cpu().numpy())
                    truths.append(self.split.depth[street][chunk.numpy()])
                    health.append(disparity.cpu())
                pred_poses.append(predicted_poses(pose_net, images, device))
                gt_poses.append(self.split.T_world_cam[street])
        finally:
            depth_net.train(was_training[0])
            pose_net.train(was_training[1])
        scores = depth_scores(np.concatenate(preds), np.concatenate(truths))
        disparity = torch.cat(health)
        stats = training_health(disparity, torch.zeros(1, 1, 6), torch.eye(3)[None], alpha, beta)
        return {**scores, "snippet_ate": snippet_ate_mean(gt_poses, pred_poses),
                "disparity_variation": stats["disparity_variation"],
                "saturated_fraction": stats["saturated_fraction"]}


def cache_for(config: TrainConfig, work_dir: Path, progress: bool) -> Path:
    """Prepare (or reuse) the cache of this data configuration."""
    key = hashlib.sha256(json.dumps(to_dict(config.data), sort_keys=True).encode()).hexdigest()[:12]
    cache = work_dir / f"cache_{config.data.height}x{config.data.width}_{key}"
    if not (cache / "index.json").is_file():
        prepare_cache(config.data, cache, progress=progress, overwrite=True)
    return cache


def train_scored(trainer: Trainer, steps: int, eval_every: int, score: Callable[[], dict[str, float]]
                 ) -> tuple[list[dict[str, float]], dict[str, Any], float]:
    """Train ``trainer`` (set to ``steps``), scoring it with ``score()`` at step 0, every ``eval_every`` steps and at
    the end. Returns the curve (rows: step, the scores, eval_s), the fit's summary and the training's seconds without
    the scoring. The checkpoint (networks + Adam state, 400 MB at any size) is deleted: the bundle and the record
    are enough."""
    curve: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        tick = time.perf_counter()
        row = score()
        curve.append({"step": step, **row, "eval_s": time.perf_counter() - tick})

    def on_step(run: Trainer) -> None:
        if run.state.step % eval_every == 0 or run.state.step == steps:
            evaluate(run.state.step)

    evaluate(0)
    started = time.perf_counter()
    summary = trainer.fit(on_step=on_step)
    trainer.checkpoint_path().unlink(missing_ok=True)
    train_s = time.perf_counter() - started - sum(row["eval_s"] for row in curve[1:])
    if curve[-1]["step"] != trainer.state.step:
        evaluate(trainer.state.step)
    return curve, summary, train_s


def run_learning(source: str | Path, preset: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                 steps: int = 1000, eval_every: int = 250, seed: int = 0, work_dir: str | Path = "runs/learning",
                 height: int | None = None, width: int | None = None, progress: bool = True,
                 max_depth_frames: int = 0, run_name: str = "run") -> dict[str, Any]:
    """Train ``preset`` + ``overrides`` for ``steps`` on ``source``'s train streets; evaluate every ``eval_every``.

    source: a synth_streets folder (``train.npz``/``val.npz``, or ``train/``/``val/`` street folders). Size: the
    preset's unless given. work_dir: street folders and caches (shared by runs of the same data configuration) and
    ``runs/<run_name>_seed<seed>`` (checkpoint, TensorBoard). Returns the run's record: config, learning curve (step
    0 included), baselines, final scores, whether it collapsed, timings.
    """
    work_dir = Path(work_dir)
    train = street_folders(source, "train", work_dir / "streets")
    held_out = {name: street_folders(source, name, work_dir / "streets") for name in HELD_OUT_SPLITS
                if name == "val" or has_split(source, name)}
    size = ([f"data.height={height}"] if height else []) + ([f"data.width={width}"] if width else [])
    config = load_train_config(preset, [
        *overrides, *size, f"data.sources=[{', '.join(str(f) for f in train.folders)}]",
        f"data.val_sources=[{', '.join(str(f) for f in held_out['val'].folders)}]", f"optim.max_steps={steps}",
        f"run.seed={seed}", f"run.progress={'true' if progress else 'false'}",
        # The benchmark's own evaluation replaces the per-epoch photometric validation.
        "run.val_every_epochs=100000"])
    cache = cache_for(config, work_dir, progress)
    output = work_dir / "runs" / f"{run_name}_seed{seed}"
    evaluators = {HELD_OUT_SPLITS[name]: LearningEvaluator(split, config.data, max_depth_frames)
                  for name, split in held_out.items()}
    trainer = Trainer(config, cache, output)
    model = config.model

    def evaluate() -> dict[str, float]:
        row: dict[str, float] = {}

        def score(depth_net: torch.nn.Module, pose_net: torch.nn.Module, weights: str) -> None:
            for prefix, evaluator in evaluators.items():
                scores = evaluator.evaluate(depth_net, pose_net, trainer.device, model.disparity_alpha,
                                            model.disparity_beta)
                row.update({weights + prefix + key: value for key, value in scores.items()})

        evaluated = trainer.evaluation_networks()
        score(*evaluated, "")
        # With the weights' average on, the last weights are scored too: a paired comparison on the same run.
        if config.optim.average_decay > 0:
            last_depth_net = deployed_depth_net(trainer.depth_net)
            if evaluated[0] is last_depth_net:  # no average yet: the same networks, the same scores
                row.update({LAST_WEIGHTS_PREFIX + key: value for key, value in list(row.items())})
            else:
                score(last_depth_net, trainer.pose_net, LAST_WEIGHTS_PREFIX)
        return row

    curve, summary, train_s = train_scored(trainer, steps, eval_every, evaluate)
    reference = {prefix + key: value for prefix, evaluator in evaluators.items()
                 for key, value in evaluator.baselines().items()}
    final = curve[-1]
    collapsed = bool(final["abs_rel"] >= COLLAPSE_RATIO * reference["constant_depth_abs_rel"])
    return {"source": str(source), "preset": str(preset) if preset else None, "overrides": list(overrides),
            "seed": seed, "threads": torch.get_num_threads(), "steps": trainer.state.step,
            "input": [config.data.height, config.data.width],
            "batch": config.optim.batch_size, "device": str(trainer.device), "speed_path": summary["speed_path"],
            "train_s": train_s, "seconds_per_step": train_s / max(trainer.state.step, 1),
            "curve": curve, "final": final, "baselines": reference, "collapsed": collapsed,
            "health_warnings": summary.get("health_warnings", []), "config": to_dict(config)}


def plot_learning_curves(path: Path, runs: dict[str, list[dict[str, Any]]]) -> Path:
    """abs_rel and snippet ATE against steps, one colour per variant (a line per seed), baselines dashed; a row
    of plots per held-out split (val, and val_unseen where it was scored)."""
    from sfm_ros.report import _pyplot

    plt = _pyplot()
    first = next(iter(runs.values()))[0]
    prefixes = [p for p in HELD_OUT_SPLITS.values() if f"{p}abs_rel" in first["curve"][0]]
    titles = {"": "held-out streets, surfaces seen in training", "unseen_": "held-out streets, surfaces never seen"}
    figure, axes = plt.subplots(len(prefixes), 2, figsize=(12, 4.2 * len(prefixes)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (depth_axis, pose_axis), prefix in zip(axes, prefixes, strict=True):
        for i, (name, records) in enumerate(runs.items()):
            for j, record in enumerate(records):
                steps = [row["step"] for row in record["curve"]]
                label = name if j == 0 else None
                colour = colours[i % len(colours)]
                depth_axis.plot(steps, [row[prefix + "abs_rel"] for row in record["curve"]], "-o", ms=3,
                                color=colour, label=label, alpha=0.85)
                pose_axis.plot(steps, [row[prefix + "snippet_ate"] for row in record["curve"]], "-o", ms=3,
                               color=colour, label=label, alpha=0.85)
        reference = first["baselines"]
        depth_axis.axhline(reference[prefix + "constant_depth_abs_rel"], color="k", ls="--", label="constant depth")
        pose_axis.axhline(reference[prefix + "constant_forward_snippet_ate"], color="k", ls="--",
                          label="constant forward")
        depth_axis.set(xlabel="training step", ylabel="abs_rel (median-scaled)", title=f"depth: {titles[prefix]}")
        pose_axis.set(xlabel="training step", ylabel="5-frame snippet ATE", title=f"motion: {titles[prefix]}")
        for axis in (depth_axis, pose_axis):
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant: mean and spread over seeds of the final scores, and the collapse count."""
    rows = []
    for name, records in runs.items():
        row: dict[str, Any] = {"variant": name, "seeds": [r["seed"] for r in records],
                               "steps": records[0]["steps"], "collapsed": sum(r["collapsed"] for r in records)}
        keys = [weights + prefix + key for weights in ("", LAST_WEIGHTS_PREFIX) for prefix in HELD_OUT_SPLITS.values()
                for key in (*DEPTH_KEYS, "snippet_ate")]
        row.update(seed_spread(records, [key for key in keys if all(key in r["final"] for r in records)]))
        rows.append(row)
    return rows


def seed_spread(records: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    """Each key's mean over the seeds' final scores (``records[i]["final"]``) as ``key``, and its spread as
    ``key_min`` and ``key_max``."""
    spread: dict[str, float] = {}
    for key in keys:
        values = np.array([r["final"][key] for r in records])
        spread[key] = float(values.mean())
        spread[f"{key}_min"], spread[f"{key}_max"] = float(values.min()), float(values.max())
    return spread


def at_step(record: dict[str, Any], step: int) -> dict[str, Any]:
    """The record as it stood at ``step`` of its curve (to tabulate a longer run at an earlier checkpoint)."""
    row = next(r for r in record["curve"] if r["step"] == step)
    collapsed = bool(row["abs_rel"] >= COLLAPSE_RATIO * record["baselines"]["constant_depth_abs_rel"])
    return {**record, "final": row, "steps": step, "collapsed": collapsed}


def load_variants(path: str | Path) -> dict[str, dict[str, Any]]:
    """A variants file: ``name: {preset: PATH, set: [key=value, ...]}`` per variant, in order."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map variant names to {{preset, set}}")
    variants = {}
    for name, spec in data.items():
        spec = spec or {}
        unknown = set(spec) - {"preset", "set", "note"}
        if unknown:
            raise ValueError(f"{path}: variant {name!r} has unknown keys {sorted(unknown)} (preset, set, note)")
        variants[str(name)] = {"preset": spec.get("preset"), "set": list(spec.get("set", [])),
                               "note": spec.get("note", "")}
    return variants


def bench_learning(source: str | Path, variants: dict[str, dict[str, Any]], steps: int, eval_every: int,
                   seeds: list[int], output: str | Path, work_dir: str | Path | None = None,
                   height: int | None = None, width: int | None = None, progress: bool = True,
                   max_depth_frames: int = 0) -> dict[str, Any]:
    """Run every (variant, seed); each record is saved as it finishes and reused by a rerun (resumable ablation).

    Writes ``learning.json`` and ``learning_curves.png`` into ``output`` and returns the combined result.
    """
    from sfm_ros.bench import machine_description

    output = Path(output)
    records_dir = output / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work_dir) if work_dir else output / "work"
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, spec in variants.items():
        for seed in seeds:
            path = records_dir / f"{name}_seed{seed}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                if record["steps"] >= steps and record.get("overrides") == spec["set"]:
                    runs.setdefault(name, []).append(at_step(record, steps) if record["steps"] > steps
                                                     else record)
                    continue
            if progress:
                print(f"== {name} seed {seed}: {spec['preset']} {' '.join(spec['set'])}", flush=True)
            record = run_learning(source, spec["preset"], spec["set"], steps, eval_every, seed, work_dir, height,
                                  width, progress, max_depth_frames, run_name=name)
            record["variant"] = name
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(path)
            runs.setdefault(name, []).append(record)
    plot_learning_curves(output / "learning_curves.png", runs)
    first = next(iter(runs.values()))[0]
    result = {"benchmark": "learning", "source": str(source), "steps": steps, "seeds": seeds,
              "input": first["input"], "batch": first["batch"], "device": first["device"],
              "baselines": first["baselines"], "table": summarise(runs), "machine": machine_description(),
              "variants": {name: {**spec, "runs": [{k: r[k] for k in ("seed", "final", "collapsed", "curve",
                                                                       "seconds_per_step", "health_warnings")}
                                                   for r in runs[name]]} for name, spec in variants.items()}}
    (output / "learning.json").write_text(json.dumps(result, indent=1))
    return result


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of the summary: depth abs_rel and a1, 5-frame snippet ATE on each held-out split (mean over
    seeds, min-max in brackets when several); a second row for a variant's last weights where they were scored."""
    base = result["baselines"]
    prefixes = [p for p in HELD_OUT_SPLITS.values() if f"{p}constant_depth_abs_rel" in base]
    names = {"": "val", "unseen_": "unseen"}
    header = "| variant | seeds | " + " | ".join(f"{names[p]} abs_rel | {names[p]} a1 | {names[p]} 5-frame ATE"
                                             for p in prefixes) + " | collapsed |"
    lines = [header, "|" + "---|" * (3 + 3 * len(prefixes)),
             "| constant depth / constant forward | - | " + " | ".join(
                 f"{base[p + 'constant_depth_abs_rel']:.3f} | {base[p + 'constant_depth_a1']:.3f} | "
                 f"{base[p + 'constant_forward_snippet_ate']:.4f}" for p in prefixes) + " | - |"]

    def cell(row: dict[str, Any], key: str, digits: int) -> str:
        if key not in row:
            return "-"
        text = f"{row[key]:.{digits}f}"
        if len(row["seeds"]) > 1:
            text += f" ({row[f'{key}_min']:.{digits}f}-{row[f'{key}_max']:.{digits}f})"
        return text

    for row in result["table"]:
        for weights, label in (("", ""), (LAST_WEIGHTS_PREFIX, " (last weights)")):
            if f"{weights}abs_rel" not in row:
                continue
            cells = " | ".join(f"{cell(row, weights + p + 'abs_rel', 3)} | {cell(row, weights + p + 'a1', 3)} | "
                               f"{cell(row, weights + p + 'snippet_ate', 4)}" for p in prefixes)
            collapsed = f"{row['collapsed']}/{len(row['seeds'])}" if not weights else "-"  # judged on the average
            lines.append(f"| {row['variant']}{label} | {len(row['seeds'])} | {cells} | {collapsed} |")
    return "\n".join(lines)


def run_from_arguments(args: Any) -> dict[str, Any]:
    """Resolve defaults (size by device, workers by cores) and run ``bench_learning``."""
    import os

    if args.data is None:
        args.data = str(default_streets())
    cuda = torch.cuda.is_available()
    height = args.height or (128 if cuda else 64)
    width = args.width or (416 if cuda else 208)
    if args.variants:
        variants = load_variants(args.variants)
        if args.only:
            missing = set(args.only) - set(variants)
            if missing:
                raise ValueError(f"--only names unknown variants {sorted(missing)}; the file has {list(variants)}")
            variants = {name: spec for name, spec in variants.items() if name in args.only}
    else:
        name = Path(args.config).stem if args.config else "defaults"  # no --config: the default (recommended) recipe
        variants = {name: {"preset": args.config, "set": list(args.set), "note": ""}}
    cores = os.cpu_count() or 1
    for spec in variants.values():
        workers = args.workers
        if workers is None:
            preset_workers = load_train_config(spec["preset"]).data.workers
            workers = min(preset_workers, max(cores - 2, 0))
        spec["set"] = [*spec["set"], f"data.workers={workers}"]
    return bench_learning(args.data, variants, args.steps, args.eval_every, args.seeds, args.output,
                          height=height, width=width, progress=not args.quiet,
                          max_depth_frames=args.max_depth_frames)
