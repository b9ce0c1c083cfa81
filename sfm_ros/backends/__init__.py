"""Inference backends behind one interface: TensorRT (pycuda), onnxruntime, torch.

Each is built from a model bundle and owns its preprocessing (from the bundle's metadata):

- ``infer_depth(image_nchw) -> disparity [1,1,H,W]``, of ``depth_input_from_frames``: the frame [1,3,H,W], or
  for a two-frame depth net the frame and the one before it [1,6,H,W]
- ``infer_pose(target_nchw, sources_nchw) -> (poses [N,6] T_source_target vectors, mask [N,H,W] | None)``

``make_backend(bundle, "auto")`` picks TensorRT on an NVIDIA GPU, else onnxruntime (best provider), else torch,
and says which and why in ``backend.description``; a named backend that cannot run is an error, never a
silent fallback. Modules are imported lazily so the node runs without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from sfm_ros.bundle import BundleMetadata, normalise_images

__all__ = ["BACKENDS", "BACKEND_CHOICES", "Backend", "BackendError", "check_input", "check_mask_output",
           "check_model_inputs", "depth_input_from_frames", "make_backend", "model_input_shapes", "preprocess"]


class BackendError(RuntimeError):
    """A backend cannot be built or run; the message names what was expected and what was found."""


class Backend(Protocol):
    """What the pipeline needs from an inference backend."""

    name: str
    description: str
    metadata: BundleMetadata
    has_mask: bool

    def infer_depth(self, image: np.ndarray) -> np.ndarray: ...

    def infer_pose(self, target: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


# name -> "module:Class", imported on demand (rosbags' STORAGE_PLUGINS shape, lazily)
BACKENDS = {
    "tensorrt": "sfm_ros.backends.tensorrt_backend:TensorRTBackend",
    "onnxruntime": "sfm_ros.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "torch": "sfm_ros.backends.torch_backend:TorchBackend",
}
BACKEND_CHOICES = ("auto", *BACKENDS)  # what a user may ask for: the parameter, the CLI and make_backend


def preprocess(rgb: np.ndarray, metadata: BundleMetadata) -> np.ndarray:
    """uint8 RGB [h,w,3] of any size -> float32 [1,3,H,W] at the network size, normalised as the bundle says.

    The one resize (INTER_AREA, as training's cache) for the node, evaluation and INT8 calibration alike.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise BackendError(f"frame is {rgb.shape}, expected an RGB image [H,W,3]")
    if rgb.shape[:2] != (metadata.height, metadata.width):
        rgb = cv2.resize(rgb, (metadata.width, metadata.height), interpolation=cv2.INTER_AREA)
    return normalise_images(rgb, metadata)[None]


def depth_input_from_frames(frame: np.ndarray, previous: np.ndarray | None, metadata: BundleMetadata) -> np.ndarray:
    """The depth net's input from preprocessed frames [1,3,H,W]: the frame itself, or for a two-frame net
    (``metadata.depth_input_frames`` 2) the frame then ``previous`` stacked on the channels [1,6,H,W].

    Without a previous frame (the first after a start or a tracking restart) a two-frame net gets the frame twice:
    no parallax, so it gives its depth from the single image, which is weaker (docs/training.md).
    """
    if metadata.depth_input_frames == 1:
        return frame
    return np.concatenate([frame, frame if previous is None else previous], axis=1)


def check_input(name: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    """Raise a BackendError naming both shapes when ``array`` does not have the model's input shape."""
    if tuple(array.shape) != tuple(expected):
        raise BackendError(f"input {name!r} has shape {tuple(array.shape)}, the model expects {tuple(expected)}")


def model_input_shapes(metadata: BundleMetadata) -> dict[str, tuple[int, ...]]:
    """The input shapes the bundle's sfm.json implies: image [1,3F,H,W] (F frames the depth net reads), target
    [1,3,H,W], sources [1,N,3,H,W]."""
    height, width, sources = metadata.height, metadata.width, metadata.num_sources
    return {"image": (1, 3 * metadata.depth_input_frames, height, width), "target": (1, 3, height, width),
            "sources": (1, sources, 3, height, width)}


def check_model_inputs(found: dict[str, tuple], metadata: BundleMetadata, where: str) -> None:
    """Raise a BackendError naming both sides when the models' input shapes (``found``, from the ONNX files or
    engines in ``where``) disagree with the size and source count of the bundle's sfm.json.

    sfm.json steers the preprocessing (each frame is resized to its height x width) and the pose window; a crafted
    or stale one must not reach the first frame.
    """
    expected = model_input_shapes(metadata)
    wrong = {name: shape for name, shape in expected.items() if tuple(found.get(name, ())) != shape}
    if wrong:
        described = ", ".join(f"{name} {list(found.get(name, []))}" for name in wrong)
        implied = ", ".join(f"{name} {list(shape)}" for name, shape in wrong.items())
        raise BackendError(f"{where}: sfm.json says {metadata.height}x{metadata.width} with {metadata.num_sources} "
                           f"sources and {metadata.depth_input_frames} depth frame(s) (inputs {implied}), but the "
                           f"models take {described}: re-export the bundle (`sfm export`) or restore its sfm.json")


def check_mask_output(backend: Backend, wanted: bool, option: str = "publish_mask") -> None:
    """A BackendError when the explainability mask is ``wanted`` (``option`` true) but the backend's pose model has
    no mask output: publishing it would send nothing, silently."""
    if wanted and not backend.has_mask:
        raise BackendError(f"{option} is true but the bundle's pose model has no explainability mask output: "
                           "re-export the bundle with `sfm export --mask` (from a model trained with the mask), or "
                           f"set {option} to false")


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvhost-ctrl").exists()  # desktop GPU or Jetson


def _auto_choice(bundle: Path, metadata: BundleMetadata) -> tuple[str, str]:
    exported = "depth" in metadata.onnx and "pose" in metadata.onnx
    if exported and _has_nvidia_gpu() and importlib.util.find_spec("tensorrt") and importlib.util.find_spec("pycuda"):
        return "tensorrt", "NVIDIA GPU with tensorrt and pycuda"
    if exported and importlib.util.find_spec("onnxruntime"):
        return "onnxruntime", "no TensorRT+GPU; onnxruntime installed and the bundle is exported"
    if importlib.util.find_spec("torch"):
        reason = "bundle not exported to ONNX" if not exported else "neither TensorRT nor onnxruntime installed"
        return "torch", reason
    raise BackendError(f"no backend can run {bundle}: install onnxruntime (and run `sfm export`) or torch")


def make_backend(bundle: str | Path, name: str = "auto", *, device: str = "auto", precision: str = "fp16",
                 threads: int = 0, with_mask: bool = False, engine_cache_dir: str | Path | None = None) -> Backend:
    """Build a backend by name ('auto', 'tensorrt', 'onnxruntime', 'torch') for a bundle."""
    from sfm_ros.bundle import read_metadata

    bundle = Path(bundle).expanduser()
    metadata = read_metadata(bundle)
    reason = "requested"
    if name == "auto":
        name, reason = _auto_choice(bundle, metadata)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose from {list(BACKEND_CHOICES)}")
    module_name, class_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} needs a package that is not installed: {exc}") from None
    backend = getattr(module, class_name)(bundle, metadata, device=device, precision=precision, threads=threads,
                                          with_mask=with_mask, engine_cache_dir=engine_cache_dir)
    backend.description = f"{backend.description} ({reason})"
    return backend
