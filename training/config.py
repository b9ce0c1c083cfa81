"""Training configuration: frozen dataclasses per concern, loaded from ``config/train_*.yaml``.

The defaults are the recommended recipe, chosen on the learning benchmark (``benchmarks/bench_learning.py``): the
paper's KITTI recipe (128x416, batch 4, Adam lr 2e-4, beta1 0.9, 3 frames, mask on) with the disparity started at 0.3
(``model.initial_disparity``), smoothness weight 0.1 (``loss.smooth_weight``), out-of-view pixels free
(``loss.validity_mask``) and the depth net's target mirrored at random (``data.flip_depth``).
``config/train_paper.yaml`` is the paper's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sfm_ros.config import ConfigError, from_dict, load_config, param
from training.losses import LossConfig

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "load_train_config"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where frames come from and how snippets are made."""

    sources: tuple[str, ...] = param((), "KITTI raw drive/date folders, odometry sequences, bags, image folders")
    val_sources: tuple[str, ...] = param((), "sources held out for validation (split by drive)")
    height: int = param(128, "network input height (multiple of 8)", range=(8, 4096))
    width: int = param(416, "network input width (multiple of 8)", range=(8, 8192))
    sequence_length: int = param(3, "frames per snippet, target in the middle (3 or 5)", range=(3, 9))
    static_filter: str = param("auto", "auto: KITTI list for KITTI raw, motion elsewhere",
                               choices=("auto", "list", "motion", "none"))
    static_frames_list: str = param("", "SfMLearner static-frame list (empty: the bundled one)")
    exclude_test_scenes: bool = param(True, "drop the Eigen test scenes from training sources")
    min_motion_px: float = param(1.0, "mean optical flow (pixels at network size) below which a frame is static",
                                 range=(0.0, 100.0))
    augment: bool = param(True, "the paper's random scale (1 to scale_crop_max) and crop, intrinsics updated")
    scale_crop_max: float = param(1.15, "largest random zoom of the scale-crop augmentation", range=(1.0, 2.0))
    flip: bool = param(False, "mirror whole snippets left-right at random (cx mirrored), as the PyTorch reference does")
    # On by default: every path of the learning benchmark ends at or below 0.25 after 3000 steps with it
    # (docs/training.md, "Each default"); mirroring whole snippets (flip) helped depth too but cost the motion.
    flip_depth: bool = param(True, "show the depth net its target mirrored left-right at random (its disparity "
                             "mirrored back); the pose net and the view synthesis see the snippet as recorded")
    colour_augment: bool = param(False, "change brightness, contrast, saturation and hue of half the snippets at "
                                 "random (one change per snippet; monodepth2's ranges)")
    frame_strides: tuple[int, ...] = param((1,), "frame gaps a training snippet is drawn with, one at random per "
                                           "snippet (1: adjacent frames, the paper; (1, 2): also twice the baseline)")
    intrinsics: tuple[float, ...] = param((), "fx fy cx cy (native pixels) for bags without CameraInfo")
    image_topic: str = param("", "bag image topic (empty: auto-detect)")
    info_topic: str = param("", "bag CameraInfo topic (empty: auto-detect)")
    rectify: bool = param(False, "the bag's images are raw images of a distorting lens: undistort them with its "
                                 "CameraInfo before training, as the node's rectify does (set both alike)")
    kitti_camera: tuple[int, ...] = param((2, 3), "KITTI raw colour cameras to use, each a separate sequence")
    workers: int = param(2, "DataLoader worker processes", range=(0, 64))

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8:
            raise ValueError(f"data.height and data.width must be multiples of 8, got {self.height}x{self.width}")
        if self.sequence_length % 2 == 0:
            raise ValueError(f"data.sequence_length must be odd (target in the middle), got {self.sequence_length}")
        if not self.frame_strides or min(self.frame_strides) < 1:
            raise ValueError(f"data.frame_strides must be positive integers, got {self.frame_strides}")
        if self.intrinsics and len(self.intrinsics) != 4:
            raise ValueError(f"data.intrinsics must be fx fy cx cy, got {self.intrinsics}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network constants (documented in sfm_ros.models)."""

    disparity_alpha: float = 10.0
    disparity_beta: float = 0.01
    # Where the disparity heads start (0: the paper's zero bias, alpha/2 + beta = 5.01). 0.3 by default: started near
    # the top of its range the disparity saturates there before the pose net's motion grows, and collapses
    # (docs/training.md, "Why the paper's recipe collapses").
    initial_disparity: float = 0.3
    pose_scale: float = 0.01
    depth_input_frames: int = param(1, "frames the depth net reads: 1, the target alone (the paper); 2, the target "
                                    "and the frame before it in the snippet, whose parallax shows depth on surfaces "
                                    "never seen (docs/training.md)", range=(1, 2))
    depth_companion: bool = param(False, "with depth_input_frames 2: train a single-frame depth net beside the "
                                  "two-frame one, each scored on its own view synthesis through the one pose net; the "
                                  "bundle keeps the two-frame net (docs/training.md)")
    with_mask: bool = True  # the explainability decoder; off also turns the mask terms off
    init_from: str = param("", "model bundle whose weights start both networks (fine-tuning, with a fresh "
                           "optimiser); its networks (input size, source count, mask, output constants, depth "
                           "frames, pose scale) must be this config's (empty: random; a companion starts afresh)")

    def __post_init__(self) -> None:
        if self.depth_companion and self.depth_input_frames != 2:
            raise ValueError("model.depth_companion trains a single-frame depth net beside a two-frame one: set "
                             f"model.depth_input_frames=2 (it is {self.depth_input_frames})")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam and the schedule."""

    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 4
    epochs: int = 200
    max_steps: int = 0  # 0 = run all epochs
    lr_decay_start: float = param(1.0, "share of the run after which the learning rate falls along a half cosine "
                                  "to lr_final_factor x lr at the end (1.0: constant, the paper)", range=(0.0, 1.0))
    lr_final_factor: float = param(0.1, "learning rate at the end of the decay, as a share of lr", range=(0.0, 1.0))
    # 0.99 by default: a hundred steps' average steadies the wobble of the last weights, most on surfaces never seen
    # (benchmarks/RESULTS.md, "The weights' moving average").
    average_decay: float = param(0.99, "the bundle and the evaluations take an exponential moving average of the "
                                 "weights with this decay a step (the mean of all steps until 1 / (1 - decay) of "
                                 "them); 0: the last step's weights, the paper", range=(0.0, 0.99999))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Output, logging, checkpoints and speed options (speed options keep the maths)."""

    output: str = "runs/sfm"
    seed: int = 0
    device: str = param("auto", "auto, cpu, cuda or cuda:N", choices=None)
    checkpoint_every: int = 500
    log_every: int = 20
    image_every: int = 200
    val_every_epochs: int = 1
    val_max_batches: int = 50
    # Speed options: same maths, CUDA only (a CPU run is fp32 eager whatever they say); see training/step.py.
    amp: bool = False  # bf16 autocast of the networks; warp and loss stay fp32
    channels_last: bool = False
    compile: bool = False  # torch.compile networks + objective (about a minute at the start of a run)
    cuda_graph: bool = False  # replay the whole step (forward, loss, backward, Adam) as one CUDA graph
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved beside the checkpoints and in the bundle's training provenance."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


# Keys deleted from the training config, with the value whose behaviour stayed: a checkpoint saved with that value
# resumes (the key is dropped); one saved with another value was trained with an objective that no longer exists.
RETIRED_KEYS: dict[tuple[str, str], tuple[Any, str]] = {
    ("loss", "out_of_view"): ("border", "RESULTS, \"Out-of-view samples read as mid-grey, re-measured on val_unseen\""),
    ("loss", "smoothness"): ("second_order", "RESULTS, \"Two options re-measured on val_unseen on today's default\""),
    ("loss", "auto_mask"): (False, "RESULTS, \"monodepth2's auto-masking alone on today's default\""),
}
# Deleted values of keys that stay: a saved config holding one trained with an objective that no longer exists.
RETIRED_VALUES: dict[tuple[str, str], dict[Any, str]] = {
    ("loss", "smoothness_target"): {
        "normalised_disparity": "RESULTS, \"Whole snippets mirrored, and smoothness on normalised disparity\""},
}


def saved_train_config(data: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a saved config (a checkpoint's), nested dict ``data``: keys it predates take their defaults,
    retired keys (``RETIRED_KEYS``) holding the behaviour that stayed are dropped; a retired key with any other value
    is a ConfigError saying it was deleted and where its figures are, as is a retired value (``RETIRED_VALUES``)."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for (section, key), (kept, where) in RETIRED_KEYS.items():
        values = data.get(section)
        if isinstance(values, dict) and key in values:
            value = values.pop(key)
            if value != kept:
                raise ConfigError(f"{section}.{key}={value} was deleted ({where}); this run was trained with it and "
                                  f"cannot go on with the current objective, which always uses {key}={kept}")
    for (section, key), retired in RETIRED_VALUES.items():
        values = data.get(section)
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(value, str) and value in retired:
            raise ConfigError(f"{section}.{key}={value} was deleted ({retired[value]}); this run was trained with it "
                              f"and cannot go on with the current objective")
    return from_dict(TrainConfig, data)


def load_train_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load a preset (``config/train_*.yaml``) and ``section.key=value`` overrides."""
    return load_config(TrainConfig, path, overrides)
