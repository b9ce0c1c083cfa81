"""The GPU paths: the CUDA-graph training step, mixed precision, the trainer on CUDA, the torch CUDA backend.

They run where torch sees a CUDA device (the lent GPU machine) and skip elsewhere, CI included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sfm_ros.models import DispNet, PoseExpNet
from test.conftest import REPO, view_synthesis_error
from training.config import load_train_config
from training.data import prepare_cache
from training.losses import LossConfig
from training.step import TrainStep, make_optimizer
from training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")

HEIGHT, WIDTH, BATCH = 64, 208, 4


def _networks_and_step(capturable_adam: bool = False, depth_input_frames: int = 1, **speed: bool) -> TrainStep:
    device = torch.device("cuda")
    torch.manual_seed(0)
    depth_net = DispNet(input_frames=depth_input_frames).to(device)
    pose_net = PoseExpNet(2, with_mask=True).to(device)
    if speed.get("channels_last"):
        depth_net = depth_net.to(memory_format=torch.channels_last)
        pose_net = pose_net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer([*depth_net.parameters(), *pose_net.parameters()], device, lr=2e-4,
                               betas=(0.9, 0.999), cuda_graph=capturable_adam or speed.get("cuda_graph", False))
    return TrainStep(depth_net, pose_net, optimizer, LossConfig(), device, depth_input_frames=depth_input_frames,
                     **speed)


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    K = torch.tensor([[0.58 * WIDTH, 0, WIDTH / 2], [0, 1.92 * HEIGHT, HEIGHT / 2], [0, 0, 1]]).expand(BATCH, 3, 3)
    # Smooth random images (upsampled noise) so that the warp has gradients to follow.
    return [((torch.nn.functional.interpolate(torch.rand(BATCH * 3, 3, 8, 26, generator=generator),
                                              size=(HEIGHT, WIDTH), mode="bilinear") * 255).to(torch.uint8)
             .view(BATCH, 3, 3, HEIGHT, WIDTH), K.contiguous()) for _ in range(count)]


def _flat_depth_parameters(step: TrainStep) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in step.depth_model.parameters()])


@pytest.fixture()
def deterministic_cudnn() -> None:
    previous = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize("depth_input_frames", [1, 2])
def test_cuda_graph_step_equals_the_eager_step(deterministic_cudnn: None, depth_input_frames: int) -> None:
    # All with capturable Adam (its bias correction is fp32 on the device, not float64 on the host), so that the
    # only difference left is graph replay against eager launches. A second eager run gives the noise floor.
    # Two input frames: the depth net's input is built inside the captured graph from the static snippet buffer.
    eager, eager_again = (_networks_and_step(capturable_adam=True, depth_input_frames=depth_input_frames)
                          for _ in range(2))
    graphed = _networks_and_step(cuda_graph=True, depth_input_frames=depth_input_frames)
    initial = _flat_depth_parameters(eager)
    eager_losses, graph_losses = [], []
    for images, K in _batches(7):  # 3 warm-up steps, the capture, 3 replays
        eager_losses.append(float(eager(images, K)["total"]))
        graph_losses.append(float(graphed(images, K)["total"]))
        eager_again(images, K)
    assert graphed._graph is not None, "the step was never captured"
    # Rounding only: one stale, skipped or repeated step would move the next loss by percents (they fall 15 % a step).
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=2e-4)
    assert len(set(graph_losses)) == 7  # the replays really trained on new batches
    # Adam turns rounding-level gradient differences (atomic adds) into steps of up to lr: two eager runs end about
    # 10 % of the update apart on an H100 (measured). The graph must stay within that noise.
    update = torch.linalg.norm(_flat_depth_parameters(eager) - initial)
    noise = torch.linalg.norm(_flat_depth_parameters(eager_again) - _flat_depth_parameters(eager)) / update
    graph_difference = torch.linalg.norm(_flat_depth_parameters(graphed) - _flat_depth_parameters(eager)) / update
    assert graph_difference < max(2 * noise, 0.01), (float(graph_difference), float(noise))
    with pytest.raises(ValueError, match="captured for batches of shape"):
        graphed(images[:2], K[:2])


def test_cuda_graph_step_with_mirrored_depth_targets_equals_the_eager_step(deterministic_cudnn: None) -> None:
    # data.flip_depth: the flags change from batch to batch, so the graph must read them from its static buffer.
    eager, graphed = _networks_and_step(capturable_adam=True), _networks_and_step(cuda_graph=True)
    flags = torch.Generator().manual_seed(2)
    eager_losses, graph_losses = [], []
    for images, K in _batches(7):
        mirrored = torch.rand(BATCH, generator=flags) < 0.5
        eager_losses.append(float(eager(images, K, mirrored)["total"]))
        graph_losses.append(float(graphed(images, K, mirrored)["total"]))
    assert graphed._graph is not None
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=2e-4)
    with pytest.raises(ValueError, match="depth_mirrored"):
        graphed(images, K)


def test_mixed_precision_step_stays_close_to_fp32() -> None:
    (images, K), = _batches(1)
    fp32 = float(_networks_and_step()(images, K)["total"])
    fast_step = _networks_and_step(amp=True, channels_last=True, cuda_graph=True, compile_objective=True)
    fast = float(fast_step(images, K)["total"])
    assert fast_step.describe() == "cuda: bf16 autocast, channels-last, torch.compile, CUDA graph"
    assert abs(fast - fp32) / fp32 < 2e-2


def test_trainer_on_cuda_with_the_fast_path_learns_and_resumes(tmp_path: Path) -> None:
    preset = str(REPO / "config" / "train_cpu_small.yaml")
    fast = ["run.device=cuda", "run.amp=true", "run.channels_last=true", "run.cuda_graph=true",
            "run.progress=false", "run.log_every=5", "optim.max_steps=80", "data.augment=false",
            f"run.output={tmp_path / 'run'}"]
    config = load_train_config(preset, fast)
    cache = prepare_cache(config.data, tmp_path / "cache", progress=False)
    trainer = Trainer(config, cache)
    before = view_synthesis_error(trainer)
    summary = trainer.fit()
    after = view_synthesis_error(trainer)
    assert trainer.step_runner._graph is not None
    assert summary["speed_path"] == "cuda: bf16 autocast, channels-last, CUDA graph"
    assert summary["steps"] == 80 and all(np.isfinite(row["total"]) for row in summary["history"])
    assert after < 0.9 * before, (before, after)
    resumed = Trainer(load_train_config(preset, [*fast, "optim.max_steps=85"]), cache)
    resumed.resume(summary["checkpoint"])
    assert resumed.fit()["steps"] == 85


def test_torch_cuda_backend_matches_the_cpu(small_bundle: Path) -> None:
    from sfm_ros.backends import make_backend

    cpu = make_backend(small_bundle, "torch", device="cpu", with_mask=True)
    gpu = make_backend(small_bundle, "torch", device="cuda", precision="fp16", with_mask=True)
    assert "cuda-graphs" in gpu.description
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 64, 208), dtype=np.float32)
    sources = rng.standard_normal((1, 2, 3, 64, 208), dtype=np.float32)
    reference = cpu.infer_depth(image)
    relative = np.abs(gpu.infer_depth(image) - reference).max() / np.abs(reference).max()
    assert relative < 5e-3
    poses, _ = gpu.infer_pose(image, sources)
    np.testing.assert_allclose(poses, cpu.infer_pose(image, sources)[0], atol=1e-3)
