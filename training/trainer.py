"""The train loop: small functions around a ``Trainer`` that holds the state of one run.

A checkpoint holds only tensors and plain values (loaded with ``weights_only=True``): both networks, the
optimiser, step/epoch/position in the epoch, the torch RNG state and the resolved config. It is written
atomically every ``run.checkpoint_every`` steps and on SIGINT/SIGTERM, and ``resume`` continues exactly:
the sample order is a permutation seeded by (seed, epoch) and augmentation by (seed, epoch, index).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader

from sfm_ros.bundle import (
    DEPTH_WEIGHTS,
    IMAGE_MEAN,
    IMAGE_STD,
    POSE_WEIGHTS,
    BundleError,
    BundleMetadata,
    atomic_write_bytes,
    load_networks,
    read_metadata,
    save_networks,
    sha256_file,
)
from sfm_ros.config import to_dict
from sfm_ros.metrics import DEPTH_METRICS, eigen_depth_evaluation
from sfm_ros.models import DispNet, PoseExpNet
from training.averaging import WeightAverage
from training.companion import DepthWithCompanion, deployed_depth_net
from training.config import TrainConfig, saved_train_config
from training.data import DataError, SnippetDataset, load_cache_index
from training.health import HealthMonitor, training_health
from training.normalisation import to_unit_range
from training.step import SCALAR_TERMS, TrainStep, forward_objective, learning_rate_factor, make_optimizer

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "Trainer", "check_init_bundle", "initialise_from_bundle",
           "load_checkpoint", "resolve_device"]

CHECKPOINT_FORMAT = "sfm_ros-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or from another format."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; refuses an unavailable CUDA device instead of falling back."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={name!r} but CUDA is not available; use run.device=cpu")
    return device


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (no arbitrary unpickling); a corrupt file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not an sfm_ros checkpoint: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an sfm_ros checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def bundle_network_configuration(metadata: BundleMetadata) -> dict[str, Any]:
    """What a bundle's networks were built for: input size, source count, mask head, output constants."""
    return {"input": f"{metadata.height}x{metadata.width}", "sources": metadata.num_sources,
            "mask": bool(metadata.posenet.get("with_mask", True)),
            "disparity": (metadata.dispnet.get("alpha"), metadata.dispnet.get("beta")),
            "depth_frames": metadata.dispnet.get("input_frames", 1), "pose_scale": metadata.posenet.get("pose_scale")}


def config_network_configuration(config: TrainConfig) -> dict[str, Any]:
    """The same description for the networks a training config builds."""
    model = config.model
    return {"input": f"{config.data.height}x{config.data.width}", "sources": config.data.sequence_length - 1,
            "mask": model.with_mask, "disparity": (model.disparity_alpha, model.disparity_beta),
            "depth_frames": model.depth_input_frames, "pose_scale": model.pose_scale}


def dispnet_arguments(config: TrainConfig) -> dict[str, Any]:
    """DispNet's arguments as a bundle's sfm.json records them. ``input_frames`` only for a two-frame net, so that a
    single-frame bundle stays readable by releases that predate the option."""
    model = config.model
    arguments = {"alpha": model.disparity_alpha, "beta": model.disparity_beta}
    if model.depth_input_frames != 1:
        arguments["input_frames"] = model.depth_input_frames
    return arguments


# The config keys that set each part of the network configuration, named in a mismatch error.
NETWORK_CONFIG_KEYS = {"input": "data.height, data.width", "sources": "data.sequence_length",
                       "mask": "model.with_mask", "disparity": "model.disparity_alpha, model.disparity_beta",
                       "depth_frames": "model.depth_input_frames", "pose_scale": "model.pose_scale"}


def check_init_bundle(bundle: str | Path, config: TrainConfig) -> BundleMetadata:
    """The metadata of a bundle to start from; BundleError (naming both sides and the keys to change) when its
    network configuration differs from ``config``'s. Cheap: a command checks it before preparing any data."""
    metadata = read_metadata(Path(bundle).expanduser())
    theirs, ours = bundle_network_configuration(metadata), config_network_configuration(config)
    differ = [key for key in ours if ours[key] != theirs[key]]
    if differ:
        raise BundleError(
            f"model.init_from={bundle}: the bundle's networks do not fit this run's config: "
            + "; ".join(f"{key}: bundle {theirs[key]}, config {ours[key]} ({NETWORK_CONFIG_KEYS[key]})"
                        for key in differ)
            + ". Set the config to the bundle's values, or start from a bundle trained with this config")
    return metadata


def initialise_from_bundle(depth_net: DispNet, pose_net: PoseExpNet, bundle: str | Path, config: TrainConfig
                           ) -> dict[str, Any]:
    """Copy a bundle's weights (safetensors, nothing unpickled) into freshly built networks, for fine-tuning.

    Refuses a bundle of another network configuration (``check_init_bundle``). Returns the provenance the run
    records: the bundle's path, its weights' sha256 and its own training steps and sources.
    """
    folder = Path(bundle).expanduser()
    metadata = check_init_bundle(folder, config)
    depth, pose, _ = load_networks(folder)
    depth_net.load_state_dict(depth.state_dict(), strict=True)
    pose_net.load_state_dict(pose.state_dict(), strict=True)
    return {"bundle": str(folder.resolve()), "depth_sha256": sha256_file(folder / DEPTH_WEIGHTS),
            "pose_sha256": sha256_file(folder / POSE_WEIGHTS), "steps": metadata.training.get("steps"),
            "sources": metadata.training.get("sources")}


def disparity_colormap(disparity: torch.Tensor) -> np.ndarray:
    """Disparity [H,W] -> RGB uint8 [3,H,W] with the magma colour map (near = bright)."""
    from matplotlib import colormaps

    values = disparity.detach().float().cpu().numpy()
    low, high = np.percentile(values, 1), np.percentile(values, 99)
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    return (colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8).transpose(2, 0, 1)


@dataclasses.dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val: float = math.inf


class Trainer:
    """One training run: networks, optimiser, data, logging and checkpoints."""

    def __init__(self, config: TrainConfig, cache_dir: str | Path, output: str | Path | None = None) -> None:
        self.config = config
        self.output = Path(output or config.run.output)
        self.rank, self.world_size = _init_distributed()
        self.device = resolve_device(config.run.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.manual_seed(config.run.seed)
        model = config.model
        self.depth_net: DispNet | DepthWithCompanion = (
            DepthWithCompanion(alpha=model.disparity_alpha, beta=model.disparity_beta) if model.depth_companion
            else DispNet(alpha=model.disparity_alpha, beta=model.disparity_beta,
                         input_frames=model.depth_input_frames)).to(self.device)
        if model.initial_disparity > 0:
            self.depth_net.initialise_disparity(model.initial_disparity)
        self.pose_net = PoseExpNet(num_sources=config.data.sequence_length - 1, with_mask=model.with_mask,
                                   pose_scale=model.pose_scale).to(self.device)
        # Provenance of the starting weights (model.init_from), recorded in the bundle this run writes.
        self.init_from = (initialise_from_bundle(deployed_depth_net(self.depth_net), self.pose_net, model.init_from,
                                                 config)
                          if model.init_from else None)
        on_cuda = self.device.type == "cuda"
        if on_cuda and (config.run.amp or config.run.channels_last or config.run.cuda_graph or config.run.compile):
            torch.backends.cudnn.benchmark = True  # the autotuner picks the fastest convolution algorithms
        if config.run.channels_last and on_cuda:
            self.depth_net = self.depth_net.to(memory_format=torch.channels_last)
            self.pose_net = self.pose_net.to(memory_format=torch.channels_last)
        self.depth_model, self.pose_model = self.depth_net, self.pose_net
        if self.world_size > 1 and config.run.cuda_graph and on_cuda:
            raise ValueError("run.cuda_graph is not supported with several processes (DDP) yet; "
                             "set run.cuda_graph=false (run.compile still applies)")
        if self.world_size > 1 and model.depth_companion:
            raise ValueError("model.depth_companion is not supported with several processes (DDP) yet; train it in "
                             "one process")
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.depth_model = DistributedDataParallel(self.depth_net, device_ids=ids)
            self.pose_model = DistributedDataParallel(self.pose_net, device_ids=ids)
        if config.run.compile and self.world_size > 1 and on_cuda:
            # Under DDP the wrapped networks are compiled (DDP splits the graph at its buckets); a single process
            # compiles networks and objective together in TrainStep.
            self.depth_model = torch.compile(self.depth_model)
            self.pose_model = torch.compile(self.pose_model)
        parameters = [*self.depth_net.parameters(), *self.pose_net.parameters()]
        optim = config.optim
        if optim.lr_decay_start < 1.0 and config.run.cuda_graph:
            # Refused on every device, so that a config that trains here also trains on the GPU.
            raise ValueError("optim.lr_decay_start < 1 changes the learning rate every step, which a CUDA-graph step "
                             "has baked in; set run.cuda_graph=false (run.compile still applies) or "
                             "optim.lr_decay_start=1.0")
        self.optimizer = make_optimizer(parameters, self.device, lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                        weight_decay=optim.weight_decay, cuda_graph=config.run.cuda_graph)
        # The moving averages of the weights the bundle and the evaluations take (optim.average_decay > 0).
        # A companion is left out: no bundle or evaluation takes it.
        self.averaged = ((WeightAverage(deployed_depth_net(self.depth_net), optim.average_decay),
                          WeightAverage(self.pose_net, optim.average_decay)) if optim.average_decay > 0 else None)
        self.step_runner = TrainStep(self.depth_model, self.pose_model, self.optimizer, config.loss, self.device,
                              amp=config.run.amp, channels_last=config.run.channels_last,
                              cuda_graph=config.run.cuda_graph,
                              compile_objective=config.run.compile and self.world_size == 1,
                              depth_input_frames=model.depth_input_frames)
        index = load_cache_index(cache_dir)
        if (index["height"], index["width"]) != (config.data.height, config.data.width):
            raise DataError(f"cache {cache_dir} was prepared at {index['height']}x{index['width']}, but this run "
                            f"trains at {config.data.height}x{config.data.width} (data.height x data.width) and would "
                            "write a bundle claiming that size: prepare a cache with this config, or set "
                            f"data.height={index['height']} data.width={index['width']}")
        self.train_data = SnippetDataset(cache_dir, "train", config.data.sequence_length, config.data.augment,
                                         config.data.scale_crop_max, config.run.seed, flip=config.data.flip,
                                         frame_strides=config.data.frame_strides, flip_depth=config.data.flip_depth,
                                         colour_augment=config.data.colour_augment)
        self.val_data = SnippetDataset(cache_dir, "val", config.data.sequence_length)
        if len(self.train_data) < config.optim.batch_size * self.world_size:
            raise ValueError(f"{len(self.train_data)} training snippets are fewer than one batch of "
                             f"{config.optim.batch_size} x {self.world_size} processes")
        self.lidar = np.load(Path(cache_dir) / "lidar.npz") if (Path(cache_dir) / "lidar.npz").is_file() else None
        self.state = TrainState()
        self.health = HealthMonitor()
        self.health_warnings: list[dict[str, Any]] = []
        self._stop_signal: int | None = None
        self._writer = None

    # ---- data order ------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return len(self.train_data) // (self.config.optim.batch_size * self.world_size)

    def total_steps(self) -> int:
        """Optimiser steps in the whole run: ``optim.epochs`` epochs, or ``optim.max_steps`` if fewer."""
        optim = self.config.optim
        total = optim.epochs * self.steps_per_epoch()
        return min(total, optim.max_steps) if optim.max_steps else total

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.config.run.seed * 100003 + epoch)
        order = torch.randperm(len(self.train_data), generator=generator).tolist()
        batch = self.config.optim.batch_size
        usable = self.steps_per_epoch() * batch * self.world_size
        mine = order[:usable][self.rank::self.world_size]
        self.train_data.epoch = epoch
        batches = [mine[i: i + batch] for i in range(skip * batch, len(mine), batch)]
        loader = DataLoader(self.train_data, batch_sampler=batches, num_workers=self.config.data.workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        yield from loader

    # ---- one step --------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One optimiser step; returns the loss terms (device tensors, no host sync)."""
        optim = self.config.optim
        lr = optim.lr * learning_rate_factor(self.state.step, self.total_steps(), optim.lr_decay_start,
                                             optim.lr_final_factor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        terms = self.step_runner(batch["images"], batch["K"], batch.get("depth_mirrored"))
        if self.averaged is not None:
            for average, network in zip(self.averaged, (deployed_depth_net(self.depth_net), self.pose_net),
                                        strict=True):
                average.update(network)
        self.state.step += 1
        return terms

    def evaluation_networks(self) -> tuple[nn.Module, PoseExpNet]:
        """The depth and pose networks the bundle and the evaluations take: the moving averages of the weights with
        optim.average_decay > 0 (the trained networks until the averages have taken a step: before the first, or
        resumed from a checkpoint without them), else the trained networks; of a depth net with a companion, the
        two-frame net alone."""
        if self.averaged is None or self.averaged[0].steps == 0:
            return deployed_depth_net(self.depth_net), self.pose_net
        return self.averaged[0].network, self.averaged[1].network

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Photometric error on the validation snippets, and Eigen depth metrics where LiDAR exists.

        The photometric error here is unweighted by the explainability mask (explain_weight 0), so that it
        measures view synthesis alone and compares across runs and mask settings. The networks scored are those the
        bundle takes (``evaluation_networks``).
        """
        if not len(self.val_data):
            return {}
        # Without the average, the trained networks through their DDP or compiled wrappers.
        depth_net, pose_net = (self.evaluation_networks() if self.averaged is not None
                               else (deployed_depth_net(self.depth_model), self.pose_model))
        depth_net.eval()
        pose_net.eval()
        loader = DataLoader(self.val_data, batch_size=self.config.optim.batch_size, shuffle=False)
        unweighted = dataclasses.replace(self.config.loss, explain_weight=0.0)
        losses, depth_rows = [], []
        for i, batch in enumerate(loader):
            if i >= self.config.run.val_max_batches:
                break
            _, terms = forward_objective(depth_net, pose_net, batch["images"].to(self.device),
                                         batch["K"].to(self.device), unweighted, amp=self.step_runner.amp,
                                         channels_last=self.step_runner.channels_last,
                                         depth_input_frames=self.config.model.depth_input_frames)
            losses.append(float(terms["photometric"]))
            if self.lidar is not None:
                for frame, disparity in zip(batch["frame"].tolist(), terms["disparity"], strict=True):
                    key = f"{frame}_d"
                    if key not in self.lidar:
                        continue
                    size = next(s["raw_size"] for s in self.val_data.index["sequences"]
                                if s["offset"] <= frame < s["offset"] + s["count"])
                    gt = np.zeros(size, dtype=np.float32)
                    gt[self.lidar[f"{frame}_v"], self.lidar[f"{frame}_u"]] = self.lidar[key]
                    depth = 1.0 / disparity[0].float().cpu().numpy()
                    depth_rows.append(eigen_depth_evaluation(depth, gt).metrics)
        results = {"val/photometric": float(np.mean(losses))}
        for name in DEPTH_METRICS if depth_rows else ():
            results[f"val/depth_{name}"] = float(np.mean([r[name] for r in depth_rows]))
        return results

    # ---- checkpoints -----------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.output / "checkpoint.pt"

    def save_checkpoint(self) -> Path:
        """Write the whole training state atomically (rank 0 only)."""
        if self.rank != 0:
            return self.checkpoint_path()
        state = {"format": CHECKPOINT_FORMAT, **dataclasses.asdict(self.state),
                 "config": yaml.safe_dump(to_dict(self.config)),
                 "depth_net": self.depth_net.state_dict(), "pose_net": self.pose_net.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng_torch": torch.get_rng_state()}
        if self.averaged is not None:
            state["averaged"] = [average.state_dict() for average in self.averaged]
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.checkpoint_path(), buffer.getvalue())
        return self.checkpoint_path()

    def resume(self, path: str | Path) -> None:
        """Restore networks, optimiser, position and RNG from a checkpoint of the same configuration."""
        state = load_checkpoint(path)
        # Through the dataclasses, so that a checkpoint written before a field existed resumes with its default.
        saved = to_dict(saved_train_config(yaml.safe_load(state["config"])))
        for section in ("model", "data", "loss"):
            if saved[section] != to_dict(self.config)[section]:
                raise CheckpointError(f"{path}: the checkpoint's {section} config differs from this run's; resume with "
                                      "the same config (or `sfm train --resume` alone, which reads it)")
        try:
            self.depth_net.load_state_dict(state["depth_net"], strict=True)
            self.pose_net.load_state_dict(state["pose_net"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not match this run's networks: {str(exc)[:300]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.averaged is not None and "averaged" in state:  # else the averages start again from here
            try:
                for average, saved_average in zip(self.averaged, state["averaged"], strict=True):
                    average.load_state_dict(saved_average)
            except (RuntimeError, KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: its weight averages do not match this run's networks: "
                                      f"{str(exc)[:300]}") from None
        self.state = TrainState(step=state["step"], epoch=state["epoch"], batch_in_epoch=state["batch_in_epoch"],
                                best_val=state["best_val"])
        torch.set_rng_state(state["rng_torch"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    def save_bundle(self, folder: str | Path | None = None) -> Path:
        """Write the model bundle (weights + sfm.json with provenance) that export and the node read."""
        folder = Path(folder or self.output / "bundle")
        config = self.config
        metadata = BundleMetadata(
            height=config.data.height, width=config.data.width, num_sources=config.data.sequence_length - 1,
            mean=(IMAGE_MEAN,) * 3, std=(IMAGE_STD,) * 3,
            dispnet=dispnet_arguments(config),
            posenet={"with_mask": config.model.with_mask, "pose_scale": config.model.pose_scale},
            training={"config": to_dict(config), "steps": self.state.step, "epochs": self.state.epoch,
                      "best_val": None if math.isinf(self.state.best_val) else self.state.best_val,
                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "sources": list(config.data.sources), "init_from": self.init_from})
        if self.rank == 0:
            save_networks(folder, *self.evaluation_networks(), metadata)
        return folder

    # ---- the loop --------------------------------------------------------------------------------------
    def _handle_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signum

    def _check_health(self, terms: dict[str, Any], bar: Any) -> dict[str, float]:
        """Collapse and no-motion statistics of this step; a persisting problem is said once in the log and bar."""
        model = self.config.model
        stats = training_health(terms["disparity"], terms["poses"], terms["K"], model.disparity_alpha,
                                model.disparity_beta)
        started, cleared = self.health.update(self.state.step, stats)
        for message in started:
            self.health_warnings.append({"step": self.state.step, "warning": message})
            if self.rank == 0:
                bar.write(f"WARNING step {self.state.step}: {message}")
        for name in cleared:
            if self.rank == 0:
                bar.write(f"step {self.state.step}: the {name} warning has cleared")
        return stats

    def _log(self, terms: dict[str, Any], images_per_s: float, health: dict[str, float]) -> None:
        if self._writer is None:
            return
        step = self.state.step
        for name in SCALAR_TERMS:
            self._writer.add_scalar(f"loss/{name}", float(terms[name]), step)
        for name, value in health.items():
            self._writer.add_scalar(f"health/{name}", value, step)
        self._writer.add_scalar("health/failing", float(bool(self.health.active)), step)
        if self.health.active and step % self.config.run.image_every == 0:
            self._writer.add_text("health", "\n\n".join(self.health.active.values()), step)
        self._writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], step)
        self._writer.add_scalar("images_per_s", images_per_s, step)
        if step % self.config.run.image_every == 0:
            target = (to_unit_range(terms["target"][0].float().cpu()).clamp(0, 1) * 255).to(torch.uint8)
            self._writer.add_image("input/target", target, step)
            self._writer.add_image("depth/disparity", disparity_colormap(terms["disparity"][0, 0]), step)
            if terms["warped"] is not None:
                warped = (to_unit_range(terms["warped"][0].float().cpu()).clamp(0, 1) * 255).to(torch.uint8)
                self._writer.add_image("warped/source0", warped, step)
            if terms["mask"] is not None:
                self._writer.add_image("mask/source0", terms["mask"][0, :1].float().cpu(), step)

    def fit(self, on_step: Callable[[Trainer], None] | None = None) -> dict[str, Any]:
        """Train until ``optim.epochs`` or ``optim.max_steps``, or a stop signal; returns a summary.

        on_step: called after every optimiser step with the trainer (benchmarks evaluate there).
        """
        from tqdm import tqdm

        config = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.output / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output / "tensorboard"))
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        total_steps = self.total_steps()
        bar = tqdm(total=total_steps, initial=self.state.step, desc="train", unit="step",
                   disable=not (config.run.progress and self.rank == 0))
        speed_path = self.step_runner.describe()
        if config.run.progress and self.rank == 0:
            # Say which speed options took effect: on a CPU the run.* GPU switches are ignored.
            bar.write(f"training step: {speed_path}")
        history: list[dict[str, float]] = []
        val_results: dict[str, float] = {}
        stopped_by = None
        try:
            while self.state.step < total_steps and self._stop_signal is None:
                tick, seen = time.perf_counter(), 0
                for batch in self._epoch_batches(self.state.epoch, self.state.batch_in_epoch):
                    terms = self.train_step(batch)
                    self.state.batch_in_epoch += 1
                    seen += batch["images"].shape[0] * self.world_size
                    if self.state.step % config.run.log_every == 0 or self.state.step == 1:
                        rate = seen / max(time.perf_counter() - tick, 1e-9)
                        row = {k: float(terms[k]) for k in ("total", "photometric", "smoothness", "explainability")}
                        health = self._check_health(terms, bar)
                        history.append({"step": self.state.step, **row, **health})
                        postfix = {"loss": f"{row['total']:.4f}", "img_s": f"{rate:.1f}"}
                        if self.health.active:
                            postfix["health"] = "+".join(sorted(self.health.active))
                        bar.set_postfix(postfix)
                        self._log(terms, rate, health)
                    bar.update(1)
                    if on_step is not None:
                        on_step(self)
                    if self.state.step % config.run.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self.state.step >= total_steps or self._stop_signal is not None:
                        break
                else:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
                    if self.state.epoch % config.run.val_every_epochs == 0 and len(self.val_data):
                        val_results = self.validate()
                        for key, value in val_results.items():
                            if self._writer is not None:
                                self._writer.add_scalar(key, value, self.state.step)
                        self.state.best_val = min(self.state.best_val, val_results["val/photometric"])
            if self._stop_signal is not None:
                stopped_by = signal.Signals(self._stop_signal).name
        finally:
            bar.close()
            self.save_checkpoint()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._writer is not None:
                self._writer.close()
        if len(self.val_data):
            val_results = self.validate()  # always report the final model
        bundle = self.save_bundle()
        summary = {"steps": self.state.step, "epochs": self.state.epoch, "stopped_by": stopped_by,
                   "speed_path": speed_path, "checkpoint": str(self.checkpoint_path()), "bundle": str(bundle),
                   "history": history, "validation": val_results, "health_warnings": self.health_warnings}
        if self.rank == 0:
            (self.output / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary


def _init_distributed() -> tuple[int, int]:
    """torchrun sets WORLD_SIZE/RANK; a single process is the default."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world_size


def config_from_checkpoint(path: str | Path) -> TrainConfig:
    """The resolved config a checkpoint was trained with (fields it predates take their defaults)."""
    return saved_train_config(yaml.safe_load(load_checkpoint(path)["config"]))
