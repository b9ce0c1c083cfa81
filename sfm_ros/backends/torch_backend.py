"""torch backend: CPU, or CUDA with fp16 + channels-last + CUDA graphs (the GPU path measurable without TensorRT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfm_ros.backends import BackendError, check_input, model_input_shapes
from sfm_ros.bundle import BundleMetadata, load_networks


class TorchBackend:
    """Runs the bundle's safetensors weights with PyTorch.

    On CUDA the networks run in fp16 (``precision``) and channels-last, and each network is captured once into a
    CUDA graph on static input buffers, so a frame costs one copy in, one graph replay and one copy out.
    """

    name = "torch"

    def __init__(self, bundle: Path, metadata: BundleMetadata, *, device: str = "auto", precision: str = "fp16",
                 threads: int = 0, with_mask: bool = False, engine_cache_dir: Any = None) -> None:
        if precision == "int8":
            raise BackendError("the torch backend runs fp32 or fp16; int8 is onnxruntime on a CPU "
                               "(`sfm export --precision int8 --int8-bag BAG`) or TensorRT")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("device 'cuda' asked for, but torch sees no CUDA device")
        self.device = torch.device("cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.metadata = metadata
        self.depth_net, self.pose_net, _ = load_networks(bundle, str(self.device), with_mask=with_mask)
        self.has_mask = with_mask
        self.dtype = torch.float16 if self.device.type == "cuda" and precision == "fp16" else torch.float32
        self._shapes = model_input_shapes(metadata)
        self._graphs: dict[str, Any] = {}
        if self.device.type == "cuda":
            self.depth_net = self.depth_net.to(dtype=self.dtype, memory_format=torch.channels_last)
            self.pose_net = self.pose_net.to(dtype=self.dtype, memory_format=torch.channels_last)
            self._capture()
        self.description = f"torch {torch.__version__} {self.device.type} {str(self.dtype).split('.')[-1]}" + (
            " cuda-graphs" if self._graphs else "")

    def _run_depth(self, image: torch.Tensor) -> torch.Tensor:
        return self.depth_net(image)[0]

    def _run_pose(self, target: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        poses, masks = self.pose_net(target, sources)
        return poses, (masks[0] if masks else None)

    @torch.no_grad()
    def _capture(self) -> None:
        """Capture both networks into CUDA graphs on static buffers (after a warm-up on a side stream)."""
        static = {name: torch.zeros(shape, device=self.device, dtype=self.dtype)
                  for name, shape in self._shapes.items()}
        static["image"] = static["image"].contiguous(memory_format=torch.channels_last)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._run_depth(static["image"])
                self._run_pose(static["target"], static["sources"])
        torch.cuda.current_stream().wait_stream(stream)
        depth_graph, pose_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(depth_graph):
            static["disparity"] = self._run_depth(static["image"])
        with torch.cuda.graph(pose_graph):
            static["poses"], static["mask"] = self._run_pose(static["target"], static["sources"])
        self._graphs = {"depth": depth_graph, "pose": pose_graph}
        self._static = static

    @torch.no_grad()
    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        check_input("image", image, self._shapes["image"])
        if self._graphs:
            self._static["image"].copy_(torch.from_numpy(image), non_blocking=False)
            self._graphs["depth"].replay()
            return self._static["disparity"].float().cpu().numpy()
        return self._run_depth(torch.from_numpy(image).to(self.device)).cpu().numpy()

    @torch.no_grad()
    def infer_pose(self, target: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        check_input("target", target, self._shapes["target"])
        check_input("sources", sources, self._shapes["sources"])
        if self._graphs:
            self._static["target"].copy_(torch.from_numpy(target))
            self._static["sources"].copy_(torch.from_numpy(sources))
            self._graphs["pose"].replay()
            poses, mask = self._static["poses"], self._static["mask"]
        else:
            poses, mask = self._run_pose(torch.from_numpy(target).to(self.device),
                                         torch.from_numpy(sources).to(self.device))
        return poses[0].float().cpu().numpy(), (mask[0].float().cpu().numpy() if mask is not None else None)
