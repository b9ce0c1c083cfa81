"""Export a model bundle to ONNX (fp32 and fp16), verify it, and build TensorRT engines on the target.

ONNX files are written into the bundle with their sha256 and I/O description in ``sfm.json``:

- ``depth.onnx``: input ``image`` float32 [1,3,H,W] (normalised; [1,6,H,W], the frame then the one before it, for a
  two-frame depth net) -> ``disparity`` float32 [1,1,H,W];
- ``pose.onnx``: inputs ``target`` [1,3,H,W] and ``sources`` [1,N,3,H,W] -> ``poses`` [1,N,6]
  (T_source_target vectors) and, with ``--mask``, ``mask`` [1,N,H,W];
- ``*_fp16.onnx``: the same graphs with fp16 weights and arithmetic, float32 inputs/outputs (cast inside),
  which is how TensorRT 10+ strongly-typed builds get their precision.

Verification at export (tolerances, measured against PyTorch fp32 on the same random input):
fp32 |disparity| error <= 1e-4 relative to its max and |pose| error <= 1e-5 absolute; fp16 <= 5e-3 relative
and <= 1e-3 absolute. Every operator must be in the TensorRT ONNX parser's list (10.x and 8.5, shipped in
``sfm_ros/data``). torch is imported inside the functions that need it, so the engine helpers stay light.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.bundle import atomic_write_bytes, onnx_key, sha256_file, write_metadata

__all__ = ["OPSET", "TOLERANCES", "ExportError", "check_tensorrt_operators", "export_bundle", "onnx_operators",
           "supported_tensorrt_operators"]

OPSET = 17
TOLERANCES = {"fp32": {"disparity_rel": 1e-4, "pose_abs": 1e-5}, "fp16": {"disparity_rel": 5e-3, "pose_abs": 1e-3}}
TENSORRT_OPERATOR_LISTS = {"10": "trt10_supported_ops.txt", "8.5": "trt8.5_supported_ops.txt"}


class ExportError(RuntimeError):
    """Export or verification failed; the message says which model, what was expected and what was found."""


def supported_tensorrt_operators(version: str) -> set[str]:
    """ONNX operators the TensorRT parser of ``version`` ('10' or '8.5') supports (onnx-tensorrt docs)."""
    if version not in TENSORRT_OPERATOR_LISTS:
        raise ExportError(f"no operator list for TensorRT {version!r}; known: {sorted(TENSORRT_OPERATOR_LISTS)}")
    path = resources.files("sfm_ros") / "data" / TENSORRT_OPERATOR_LISTS[version]
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def onnx_operators(path: str | Path) -> set[str]:
    """Operator types used by an ONNX file (Constant and Identity are folded by every parser)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node} - {"Constant", "Identity"}


def check_tensorrt_operators(path: str | Path, versions: tuple[str, ...] = ("10", "8.5")) -> dict[str, list[str]]:
    """Operators of ``path`` missing from each TensorRT version's list (empty lists: all supported)."""
    used = onnx_operators(path)
    return {version: sorted(used - supported_tensorrt_operators(version)) for version in versions}


def _export_modules(with_mask: bool) -> tuple[type, type]:
    import torch

    class DepthExport(torch.nn.Module):
        """Finest disparity only, optionally computed in fp16 with float32 I/O."""

        def __init__(self, net: torch.nn.Module, half: bool) -> None:
            super().__init__()
            self.net, self.half = (net.half() if half else net), half

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            disparity = self.net(image.half() if self.half else image)[0]
            return disparity.float()

    class PoseExport(torch.nn.Module):
        """Poses (and the finest explainability mask when exported with one)."""

        def __init__(self, net: torch.nn.Module, half: bool) -> None:
            super().__init__()
            self.net, self.half = (net.half() if half else net), half

        def forward(self, target: torch.Tensor, sources: torch.Tensor) -> Any:
            if self.half:
                target, sources = target.half(), sources.half()
            poses, masks = self.net(target, sources)
            if with_mask:
                return poses.float(), masks[0].float()
            return poses.float()

    return DepthExport, PoseExport


def _onnx_bytes(module: Any, inputs: tuple, input_names: list[str], output_names: list[str]) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter writes opset 17 directly; the dynamo exporter builds 18 and its down-conversion
        # can fail silently for ReduceMean (ENVIRONMENT.md). The opset is checked below either way.
        torch.onnx.export(module, inputs, buffer, input_names=input_names, output_names=output_names,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


def _check_io(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    import onnx

    model = onnx.load(str(path))
    opset = {o.domain: o.version for o in model.opset_import}.get("")
    if opset != OPSET:
        raise ExportError(f"{path.name}: opset {opset}, expected {OPSET}")
    found = {}
    for value in [*model.graph.input, *model.graph.output]:
        found[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for name, shape in expected.items():
        if found.get(name) != list(shape):
            raise ExportError(f"{path.name}: tensor {name!r} has shape {found.get(name)}, expected {list(shape)}")
    return found


def export_bundle(bundle: str | Path, *, fp16: bool = True, with_mask: bool = False, verify: bool = True,
                  seed: int = 0, restructure: bool = True) -> dict[str, Any]:
    """Export the bundle's networks to ONNX inside the bundle and record them in ``sfm.json``.

    ``restructure`` exports the CPU-friendly equivalents of ``sfm_ros.models.inference`` (the same functions,
    verified against the networks as trained); False exports the networks' graphs as they are.

    Returns a report: files, checksums, operators, TensorRT operator check, parity errors and tolerances.
    """
    import onnxruntime as ort
    import torch

    from sfm_ros.bundle import load_networks
    from sfm_ros.models.inference import inference_copies

    folder = Path(bundle).expanduser()
    depth_net, pose_net, metadata = load_networks(folder, "cpu", with_mask=with_mask)
    height, width, num_sources = metadata.height, metadata.width, metadata.num_sources
    image_channels = 3 * metadata.depth_input_frames
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, image_channels, height, width, generator=generator)
    target = image[:, :3].clone()  # the frame itself, the depth input's first channels
    sources = torch.randn(1, num_sources, 3, height, width, generator=generator)
    with torch.no_grad():
        reference_disparity = depth_net(image)[0].numpy()
        reference_poses, reference_masks = pose_net(target, sources)
    DepthExport, PoseExport = _export_modules(with_mask)
    export_depth, export_pose = inference_copies(depth_net, pose_net) if restructure else (depth_net, pose_net)
    pose_outputs = ["poses", "mask"] if with_mask else ["poses"]
    report: dict[str, Any] = {"bundle": str(folder), "opset": OPSET, "tolerances": TOLERANCES,
                              "restructured": restructure, "models": {}}
    onnx_section: dict[str, Any] = {}
    for precision in ("fp32", "fp16") if fp16 else ("fp32",):
        half = precision == "fp16"
        jobs = {
            "depth": (DepthExport(copy.deepcopy(export_depth), half), (image,), ["image"], ["disparity"],
                      {"image": (1, image_channels, height, width), "disparity": (1, 1, height, width)}),
            "pose": (PoseExport(copy.deepcopy(export_pose), half), (target, sources), ["target", "sources"],
                     pose_outputs, {"target": (1, 3, height, width), "sources": (1, num_sources, 3, height, width),
                                    "poses": (1, num_sources, 6)}),
        }
        for name, (module, inputs, input_names, output_names, shapes) in jobs.items():
            key = onnx_key(name, precision)
            path = folder / f"{key}.onnx"
            atomic_write_bytes(path, _onnx_bytes(module.eval(), inputs, input_names, output_names))
            io_shapes = _check_io(path, shapes)
            missing = check_tensorrt_operators(path)
            if any(missing.values()):
                raise ExportError(f"{path.name} uses operators the TensorRT parser lacks: {missing}")
            entry = {"file": path.name, "sha256": sha256_file(path), "precision": precision,
                     "graph": "restructured" if restructure else "as-trained",
                     "inputs": {n: io_shapes[n] for n in input_names},
                     "outputs": {n: io_shapes[n] for n in output_names}}
            if verify:
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                feeds = {n: t.numpy() for n, t in zip(input_names, inputs, strict=True)}
                outputs = session.run(None, feeds)
                tolerance = TOLERANCES[precision]
                if name == "depth":
                    error = float(np.abs(outputs[0] - reference_disparity).max() / np.abs(reference_disparity).max())
                    entry["parity"] = {"disparity_rel": error}
                    if error > tolerance["disparity_rel"]:
                        raise ExportError(f"{path.name}: onnxruntime disparity differs from PyTorch by {error:.2e} "
                                          f"(relative), tolerance {tolerance['disparity_rel']:.0e}")
                else:
                    error = float(np.abs(outputs[0] - reference_poses.numpy()).max())
                    entry["parity"] = {"pose_abs": error}
                    if with_mask:
                        entry["parity"]["mask_abs"] = float(np.abs(outputs[1] - reference_masks[0].numpy()).max())
                    if error > tolerance["pose_abs"]:
                        raise ExportError(f"{path.name}: onnxruntime poses differ from PyTorch by {error:.2e}, "
                                          f"tolerance {tolerance['pose_abs']:.0e}")
            onnx_section[key] = entry
            report["models"][key] = {**entry, "operators": sorted(onnx_operators(path)), "tensorrt_missing": missing}
    write_metadata(folder, dataclasses.replace(metadata, onnx=onnx_section))
    return report
