"""onnxruntime backend: CPU or CUDA execution provider, threads configurable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.backends import BackendError, check_input, check_model_inputs
from sfm_ros.bundle import BundleMetadata, onnx_path


def _session(path: Path, options: Any, providers: list[str]) -> Any:
    """An InferenceSession, or a BackendError naming the file when onnxruntime cannot load it."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    load_errors = (state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoModel,
                   state.NoSuchFile, state.NotImplemented, state.RuntimeException)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except load_errors as exc:
        raise BackendError(f"onnxruntime cannot load {path} ({str(exc).strip()[:300]}): re-export the bundle with "
                           "`sfm export`") from None


class OnnxRuntimeBackend:
    """Runs the bundle's exported ONNX models: fp32 or int8 on CPU, the fp16 variant on CUDA when asked."""

    name = "onnxruntime"

    def __init__(self, bundle: Path, metadata: BundleMetadata, *, device: str = "auto", precision: str = "fp32",
                 threads: int = 0, with_mask: bool = False, engine_cache_dir: Any = None) -> None:
        import onnxruntime as ort

        if precision == "int8" and device == "cuda":
            raise BackendError("the INT8 ONNX models are for onnxruntime's CPU provider (QLinearConv); on a GPU use "
                               "TensorRT for int8, or fp16")
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise BackendError(f"device 'cuda' asked for, but onnxruntime offers only {available}")
        use_cuda = precision != "int8" and (
            device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        if not use_cuda and precision == "fp16":
            precision = "fp32"  # fp16 kernels are a GPU matter; the CPU runs the fp32 graph
        options = ort.SessionOptions()
        # Two sessions (depth, pose) each own a thread pool; idle workers spinning in one steal the cores from the
        # other (measured 2x slower on 2 cores), so workers sleep when idle.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.metadata = metadata
        self.depth = _session(onnx_path(bundle, "depth", precision), options, providers)
        self.pose = _session(onnx_path(bundle, "pose", precision), options, providers)
        outputs = [o.name for o in self.pose.get_outputs()]
        self.has_mask = "mask" in outputs
        if with_mask and not self.has_mask:
            raise BackendError(f"the mask was requested but {bundle}'s pose.onnx has outputs {outputs}; "
                               "re-export with `sfm export --mask`")
        self._shapes = {i.name: tuple(i.shape) for s in (self.depth, self.pose) for i in s.get_inputs()}
        expected = {"image", "target", "sources"}
        if set(self._shapes) != expected:
            raise BackendError(f"ONNX inputs are {sorted(self._shapes)}, expected {sorted(expected)}")
        check_model_inputs(self._shapes, metadata, f"{bundle}'s {precision} ONNX models")
        self.description = f"onnxruntime {ort.__version__} {providers[0]} {precision}"

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        check_input("image", image, self._shapes["image"])
        return self.depth.run(["disparity"], {"image": image.astype(np.float32, copy=False)})[0]

    def infer_pose(self, target: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        check_input("target", target, self._shapes["target"])
        check_input("sources", sources, self._shapes["sources"])
        outputs = self.pose.run(None, {"target": target.astype(np.float32, copy=False),
                                       "sources": sources.astype(np.float32, copy=False)})
        return outputs[0][0], (outputs[1][0] if self.has_mask else None)
