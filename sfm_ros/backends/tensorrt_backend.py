"""TensorRT backend (pycuda) and the engine cache. One code path for TensorRT 8.5 to 11.

- I/O by tensor name (``num_io_tensors``, ``get_tensor_name``, ``set_tensor_address``), ``execute_async_v3``.
- Precision (``build_plan``): fp16 through the FP16 builder flag where the builder has it, else (strongly-typed
  TensorRT 11) the fp16 ONNX; int8 always through explicit quantization, the bundle's Q/DQ ONNX
  (``sfm quantize --for tensorrt``), with the INT8 and FP16 flags on TensorRT 8.5-10.x and strongly typed on 11.
  No calibrator: calibrator-based (implicit) INT8 was deprecated in 10.1 and removed in 11, and a Q/DQ file
  carries its own model's ranges, so each engine's key (its ONNX's sha256) covers its calibration.
- Engines are built on the target from the bundle's ONNX and cached under a key of (ONNX sha256, TensorRT
  version, GPU name, compute capability, precision, input shapes); a stale or foreign engine is rebuilt,
  never loaded. Engines are never shipped.
- pycuda with an explicit (primary) context pushed around each call, so the node's worker thread can use it;
  pinned host buffers and device buffers allocated once, one stream, no per-frame allocation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.backends import BackendError, check_input, check_model_inputs
from sfm_ros.bundle import BundleMetadata, atomic_write_bytes, onnx_key, onnx_path

__all__ = ["BuildPlan", "EngineCache", "EngineKey", "TensorRTBackend", "build_engine", "build_plan", "trtexec_command"]


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """How to build an engine of a precision with a given TensorRT: which exported model, typing, builder flags."""

    onnx_kind: str  # "fp32", "fp16" or "int8_qdq": the bundle's model to parse
    strongly_typed: bool  # precision from the graph's types (TensorRT 10's option, 11's only mode)
    flags: tuple[str, ...]  # BuilderFlag names to set


def build_plan(precision: str, builder_flags: set[str], creation_flags: set[str]) -> BuildPlan:
    """The plan for ``precision`` given the names in ``trt.BuilderFlag`` and ``trt.NetworkDefinitionCreationFlag``.

    TensorRT 8.5-10.x (FP16/INT8 flags exist): fp16 by flag on the fp32 ONNX; int8 from the Q/DQ ONNX with INT8 and
    FP16 (for the layers the Q/DQ pairs leave in float). TensorRT 11 (no such flags, strongly typed only): the fp16
    ONNX for fp16, the Q/DQ ONNX for int8.
    """
    weakly_typed = "FP16" in builder_flags
    if not weakly_typed and "STRONGLY_TYPED" not in creation_flags:
        raise BackendError("this TensorRT has neither the FP16 builder flag nor strongly-typed networks")
    if precision == "fp32":
        return BuildPlan("fp32", not weakly_typed, ())
    if precision == "fp16":
        return BuildPlan("fp32", False, ("FP16",)) if weakly_typed else BuildPlan("fp16", True, ())
    if precision == "int8":
        if weakly_typed and "INT8" in builder_flags:
            return BuildPlan("int8_qdq", False, ("INT8", "FP16"))
        return BuildPlan("int8_qdq", True, ())
    raise BackendError(f"precision {precision!r} unknown for TensorRT; choose fp32, fp16 or int8")


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any change means a rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class EngineCache:
    """Engines on disk as ``<model>-<digest>.engine`` beside a ``.json`` holding the key they were built for."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    def path_for(self, model: str, key: EngineKey) -> Path:
        return self.folder / f"{model}-{key.digest()[:20]}.engine"

    def lookup(self, model: str, key: EngineKey) -> bytes | None:
        """The cached engine for exactly this key, or None (missing, stale or foreign: the caller rebuilds)."""
        path = self.path_for(model, key)
        sidecar = path.with_suffix(".json")
        if not path.is_file() or not sidecar.is_file():
            return None
        try:
            recorded = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            return None
        if recorded != json.loads(json.dumps(dataclasses.asdict(key))):
            return None
        return path.read_bytes()

    def store(self, model: str, key: EngineKey, engine: bytes) -> Path:
        path = self.path_for(model, key)
        atomic_write_bytes(path, engine)
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(dataclasses.asdict(key)).encode())
        return path


def trtexec_command(onnx_file: str | Path, engine_file: str | Path, plan: BuildPlan) -> str:
    """The equivalent ``trtexec`` command line, for users who build engines by hand."""
    flags = "".join(f" --{flag.lower()}" for flag in plan.flags) + (" --stronglyTyped" if plan.strongly_typed else "")
    return f"trtexec --onnx={onnx_file} --saveEngine={engine_file}{flags} --memPoolSize=workspace:1024"


def _flag_names(enum: Any) -> set[str]:
    return {name for name in dir(enum) if name.isupper()}


def tensorrt_plan(precision: str) -> BuildPlan:
    """``build_plan`` for the installed TensorRT."""
    trt = _tensorrt()
    return build_plan(precision, _flag_names(trt.BuilderFlag), _flag_names(trt.NetworkDefinitionCreationFlag))


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(f"the tensorrt backend needs the TensorRT Python package: {exc}") from None
    return trt


def _gpu_identity() -> tuple[str, str]:
    import pycuda.driver as cuda

    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return device.name(), f"{major}.{minor}"


def build_engine(onnx_file: str | Path, plan: BuildPlan, workspace_bytes: int = 1 << 30) -> bytes:
    """Parse ONNX and build a serialized engine by ``plan``. Errors name the parser's complaints."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "EXPLICIT_BATCH"):  # required on 8.x, deprecated no-op on 10, gone later
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_file).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"TensorRT could not parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_file} ({plan})")
    return bytes(serialized)


class TensorRTBackend:
    """Depth and pose engines from the cache (built on first use), run with pycuda on one stream."""

    name = "tensorrt"

    def __init__(self, bundle: Path, metadata: BundleMetadata, *, device: str = "auto", precision: str = "fp16",
                 threads: int = 0, with_mask: bool = False, engine_cache_dir: str | Path | None = None) -> None:
        trt = _tensorrt()
        import pycuda.driver as cuda

        if device == "cpu":
            raise BackendError("the tensorrt backend runs on a GPU; device 'cpu' asked for")
        cuda.init()
        self._cuda = cuda
        self._context = cuda.Device(0).retain_primary_context()
        self._context.push()
        try:
            self.metadata = metadata
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            gpu_name, capability = _gpu_identity()
            cache = EngineCache(engine_cache_dir or "~/.cache/sfm_ros/engines")
            plan = tensorrt_plan(precision)
            self._engines, self._contexts, self._buffers = {}, {}, {}
            self._stream = cuda.Stream()
            for model in ("depth", "pose"):
                path = onnx_path(bundle, model, plan.onnx_kind)
                entry = metadata.onnx[onnx_key(model, plan.onnx_kind)]
                # The ONNX's sha256 covers the model and, for int8_qdq, its own calibration.
                key = EngineKey(entry["sha256"], trt.__version__, gpu_name, capability, precision,
                                tuple(sorted((n, tuple(s)) for n, s in entry["inputs"].items())))
                engine = self._load_or_build(cache, model, key, path, plan)
                self._engines[model] = engine
                self._contexts[model] = engine.create_execution_context()
                self._buffers[model] = self._allocate(engine, self._contexts[model])
            check_model_inputs({name: host.shape for model in self._buffers.values()
                                for name, (host, _) in model["inputs"].items()}, metadata, f"{bundle}'s engines")
            outputs = self._buffers["pose"]["outputs"]
            self.has_mask = "mask" in outputs
            if with_mask and not self.has_mask:
                raise BackendError(f"the mask was requested but the pose engine outputs {sorted(outputs)}")
        finally:
            self._context.pop()
        self.description = f"tensorrt {trt.__version__} {gpu_name} sm{capability} {precision}"

    def _load_or_build(self, cache: EngineCache, model: str, key: EngineKey, onnx_file: Path, plan: BuildPlan) -> Any:
        blob = cache.lookup(model, key)
        if blob is not None:
            engine = self._runtime.deserialize_cuda_engine(blob)
            if engine is not None:
                return engine
        blob = build_engine(onnx_file, plan)
        cache.store(model, key, blob)
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BackendError(f"TensorRT built an engine for {onnx_file} but cannot deserialize it")
        return engine

    def _allocate(self, engine: Any, context: Any) -> dict[str, dict[str, tuple[np.ndarray, Any]]]:
        trt = _tensorrt()
        buffers: dict[str, dict[str, tuple[np.ndarray, Any]]] = {"inputs": {}, "outputs": {}}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(name))
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            host = self._cuda.pagelocked_empty(shape, dtype)
            device = self._cuda.mem_alloc(host.nbytes)
            context.set_tensor_address(name, int(device))
            kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
            buffers[kind][name] = (host, device)
        return buffers

    def _run(self, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        buffers = self._buffers[model]
        if set(feeds) != set(buffers["inputs"]):
            raise BackendError(f"{model} engine inputs are {sorted(buffers['inputs'])}, got {sorted(feeds)}")
        self._context.push()
        try:
            for name, array in feeds.items():
                host, device = buffers["inputs"][name]
                check_input(name, array, host.shape)
                np.copyto(host, array, casting="same_kind")
                self._cuda.memcpy_htod_async(device, host, self._stream)
            if not self._contexts[model].execute_async_v3(self._stream.handle):
                raise BackendError(f"TensorRT execution of the {model} engine failed")
            for host, device in buffers["outputs"].values():
                self._cuda.memcpy_dtoh_async(host, device, self._stream)
            self._stream.synchronize()
        finally:
            self._context.pop()
        return {name: host.copy() for name, (host, _) in buffers["outputs"].items()}

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        return self._run("depth", {"image": image})["disparity"].astype(np.float32)

    def infer_pose(self, target: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._run("pose", {"target": target, "sources": sources})
        mask = outputs.get("mask")
        return outputs["poses"][0].astype(np.float32), (mask[0] if mask is not None else None)
