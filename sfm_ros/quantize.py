"""Static INT8 of the exported models for onnxruntime on CPUs, calibrated and checked on the frames of a bag.

On a 2-core AVX2 CPU onnxruntime's int8 convolutions (QLinearConv) run DispNet about 1.4x faster than fp32
(benchmarks/RESULTS.md). This is an opt-in deployment step, not the paper's method: the fp32 models stay the
default, and the INT8 ones are written beside them only after they pass the check below.

Two targets, calibrated on the same frames, each model with its own ranges:

- ``onnxruntime`` (``*_int8.onnx``): QOperator (QLinearConv), weights int8 per output channel, activations uint8 per
  tensor. Transposed convolutions are first rewritten as four convolutions each (``sfm_ros.polyphase``; exact, and
  checked on a frame) so that they quantise too.
- ``tensorrt`` (``*_int8_qdq.onnx``): explicit quantization, QuantizeLinear/DequantizeLinear pairs with symmetric
  int8 activations (zero point 0) and symmetric int8 weights per output channel, the form TensorRT builds INT8
  engines from (its calibrator-based implicit INT8 was deprecated in 10.1 and is gone in 11). Its ranges are in the
  file, so the engine cache key (the file's sha256) changes whenever the calibration does.

Check (``INT8_TOLERANCES``): the bag's frame windows alternate between calibration and a held-out check; on the
held-out ones the INT8 disparity must stay within 5 % of the fp32 disparity per pixel (median over pixels and
frames) and the INT8 poses within 10 % of the fp32 pose vector's norm (median over frames). torch is not needed.
The ``onnxruntime`` models are checked as they will run, on onnxruntime's int8 kernels. The Q/DQ models are checked
as written (``qdq_reference_session``): onnxruntime would otherwise fuse each DequantizeLinear-Conv-QuantizeLinear
into its own int8 convolution, whose AVX2 kernel (x86 CPUs without VNNI) sums pairs of products in saturating
16-bit registers; with symmetric int8 activations and weights that saturation moved the random-weight test models'
disparities by 15 % and poses by 25 %, an error of that CPU, not of the model: TensorRT accumulates in 32 bits.

Every quantize_static setting the two forms rely on is passed explicitly (``_QOPERATOR_OPTIONS``,
``_QDQ_OPTIONS`` and the arguments), so a change of onnxruntime's defaults cannot change the models.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.bundle import atomic_write_bytes, onnx_key, onnx_path, read_metadata, sha256_file, write_metadata
from sfm_ros.calibration import calibration_windows
from sfm_ros.polyphase import polyphase_transposed_convs

__all__ = ["CALIBRATION_METHODS", "INT8_TOLERANCES", "QUANTIZE_TARGETS", "QuantizeError", "calibration_windows",
           "qdq_reference_session", "quantize_bundle"]

INT8_TOLERANCES = {"disparity_rel_median": 0.05, "pose_rel_median": 0.10}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # onnxruntime's MinMax, Entropy, Percentile
QUANTIZE_TARGETS = {"onnxruntime": "int8", "tensorrt": "int8_qdq"}  # target -> kind of exported model
# quantize_static's extra_options that the two forms rely on, spelled out so that no change of its defaults moves them.
# onnxruntime's CPU form: uint8 activations with a zero point (asymmetric), int8 weights symmetric (zero point 0).
_QOPERATOR_OPTIONS = {"ActivationSymmetric": False, "WeightSymmetric": True, "CalibMovingAverage": False}
# TensorRT's form: zero points 0 for activations and weights; activations such as Relu kept as nodes (TensorRT
# fuses them itself); ranges from the plain min/max over the calibration frames, not a moving average.
_QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibMovingAverage": False,
                "QDQKeepRemovableActivations": True, "AddQDQPairToWeight": False, "DedicatedQDQPair": False}


class QuantizeError(RuntimeError):
    """INT8 quantisation failed or missed its tolerances; the message names the model and the figures."""


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds (inputs not in the model dropped)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], input_names: list[str]) -> None:
        self._feeds = iter([{name: feed[name] for name in input_names} for feed in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _relative_errors(model: str, int8_outputs: list[np.ndarray], fp32_outputs: list[np.ndarray]) -> float:
    if model == "depth":
        return float(np.median(np.abs(int8_outputs[0] - fp32_outputs[0]) / np.abs(fp32_outputs[0])))
    norm = np.linalg.norm(fp32_outputs[0], axis=-1)
    return float(np.median(np.linalg.norm(int8_outputs[0] - fp32_outputs[0], axis=-1) / np.maximum(norm, 1e-12)))


def _check_same_function(model: str, fp32, rewritten: Path, feed: dict[str, np.ndarray]) -> None:
    """The rewritten fp32 graph must give the exported graph's (``fp32`` session's) outputs, to 1e-4 of their
    largest value."""
    inputs = {i.name: feed[i.name] for i in fp32.get_inputs()}
    for expected, found in zip(fp32.run(None, inputs), _session(rewritten).run(None, inputs), strict=True):
        error = float(np.max(np.abs(found - expected)) / max(float(np.max(np.abs(expected))), 1e-12))
        if error > 1e-4:
            raise QuantizeError(f"{model}: the polyphase rewrite changed the fp32 outputs by {error:.1e} of their "
                                "largest value (expected <= 1e-4); quantise with polyphase=False")


def quantize_bundle(bundle: str | Path, bag: str | Path, *, max_windows: int = 64, method: str = "minmax",
                    polyphase: bool = True, progress: bool = False,
                    targets: tuple[str, ...] = ("onnxruntime",), image_topic: str | None = None,
                    info_topic: str | None = None, rectify: bool = False) -> dict[str, Any]:
    """Write INT8 models into an exported bundle and record them in ``sfm.json``: for each of ``targets``,
    ``depth_int8.onnx`` / ``pose_int8.onnx`` (onnxruntime) or ``depth_int8_qdq.onnx`` / ``pose_int8_qdq.onnx``
    (TensorRT), all or none.

    ``polyphase=False`` keeps the transposed convolutions in fp32 (onnxruntime; TensorRT has int8 ones).
    ``image_topic`` / ``info_topic`` pick the bag's camera (None: auto-detected); ``rectify`` undistorts its raw
    images first, as the node's ``rectify`` does. Returns a report: files, calibration and check window counts, the
    held-out errors and the tolerances. Raises QuantizeError (and leaves the bundle unchanged) when a model misses
    its tolerance, or when the rewritten fp32 graph does not reproduce the exported one.
    """
    from tqdm import tqdm


    if method not in CALIBRATION_METHODS:
        raise QuantizeError(f"calibration method {method!r} unknown; choose from {CALIBRATION_METHODS}")
    unknown = set(targets) - set(QUANTIZE_TARGETS)
    if unknown or not targets:
        raise QuantizeError(f"quantisation targets {sorted(unknown) or '(none)'} unknown; choose from "
                            f"{list(QUANTIZE_TARGETS)}")
    folder = Path(bundle).expanduser()
    metadata = read_metadata(folder)
    frames = calibration_windows(bag, metadata, max_windows, image_topic=image_topic, info_topic=info_topic,
                                 rectify=rectify)
    windows = list(tqdm(frames, total=max_windows, desc="read frames", unit="window", disable=not progress))
    calibration, held_out = windows[0::2], windows[1::2]
    if not held_out:
        raise QuantizeError(f"{bag} gave {len(windows)} frame windows of {metadata.num_sources + 1}; "
                            "INT8 calibration and its check need at least 2")
    report: dict[str, Any] = {"bundle": str(folder), "bag": str(bag), "method": method,
                              "calibration_windows": len(calibration), "check_windows": len(held_out),
                              "tolerances": INT8_TOLERANCES, "models": {}}
    entries, blobs = {}, {}
    jobs = [(target, model, tolerance_key) for target in targets
            for model, tolerance_key in (("depth", "disparity_rel_median"), ("pose", "pose_rel_median"))]
    with tempfile.TemporaryDirectory(prefix="sfm_int8_") as scratch:
        for target, model, tolerance_key in tqdm(jobs, desc="quantise", unit="model", disable=not progress):
            kind = QUANTIZE_TARGETS[target]
            source, key = onnx_path(folder, model), onnx_key(model, kind)
            fp32, quantized = _session(source), Path(scratch) / f"{key}.onnx"
            if target == "tensorrt":
                rewritten_layers = _quantize_qdq(model, source, fp32, quantized, calibration, method)
            else:
                rewritten_layers = _quantize_model(model, source, fp32, quantized, calibration, method, polyphase)
            checked = qdq_reference_session(quantized) if target == "tensorrt" else _session(quantized)
            error = _held_out_error(model, fp32, checked, held_out)
            if error > INT8_TOLERANCES[tolerance_key]:
                raise QuantizeError(f"{model}: INT8 ({target}) differs from fp32 by {error:.1%} ({tolerance_key} "
                                    f"over {len(held_out)} held-out windows of {bag}), tolerance "
                                    f"{INT8_TOLERANCES[tolerance_key]:.0%}; the fp32 models stay in use")
            entries[key] = {"file": quantized.name, "precision": "int8", "target": target, "from": source.name,
                            "calibration": method, "polyphase_layers": rewritten_layers,
                            "inputs": metadata.onnx[model]["inputs"],
                            "outputs": metadata.onnx[model]["outputs"], "check": {tolerance_key: error}}
            blobs[key] = quantized.read_bytes()
        for key, entry in entries.items():
            path = folder / entry["file"]
            atomic_write_bytes(path, blobs[key])
            entry["sha256"] = sha256_file(path)
    report["models"] = entries
    write_metadata(folder, dataclasses.replace(metadata, onnx={**metadata.onnx, **entries}))
    return report


def _session(path: Path, *, qdq_as_written: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if qdq_as_written:
        # No Q/DQ fusion (the extended level's DQ-op-Q -> QLinear* rewrites, and the Q/DQ transformers the config
        # entry turns off at every level): each DequantizeLinear gives exact int8 * scale values and the operator
        # between them runs in fp32, which equals 32-bit integer accumulation to float rounding.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def qdq_reference_session(path: Path) -> Any:
    """A CPU session that computes a Q/DQ model's arithmetic as the file defines it (what TensorRT's INT8 kernels
    compute, with their 32-bit accumulators), not onnxruntime's fused int8 kernels, which on x86 CPUs without
    VNNI saturate 16-bit pair sums for symmetric int8 activations (see the module's docstring)."""
    return _session(path, qdq_as_written=True)


def _quantize_model(model: str, source: Path, fp32, quantized: Path, calibration: list[dict[str, np.ndarray]],
                    method: str, polyphase: bool) -> int:
    """Quantise the exported fp32 model ``source`` (``fp32``: its session) into ``quantized``; returns the number
    of transposed convolutions rewritten."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    scratch = quantized.parent
    graph_file, rewritten_layers = source, 0
    if polyphase:
        graph = onnx.load(str(source))
        rewritten_layers = polyphase_transposed_convs(graph)
        if rewritten_layers:
            graph_file = scratch / f"{model}_polyphase.onnx"
            onnx.save(graph, str(graph_file))
            _check_same_function(model, fp32, graph_file, calibration[0])
    prepared = scratch / f"{model}_prepared.onnx"
    # static shapes: ONNX shape inference suffices (symbolic inference would need sympy on the robot)
    quant_pre_process(str(graph_file), str(prepared), skip_symbolic_shape=True)
    input_names = [i.name for i in fp32.get_inputs()]
    calibration_method = {m.name.lower(): m for m in CalibrationMethod}[method]
    quantize_static(str(prepared), str(quantized), _Reader(calibration, input_names),
                    quant_format=QuantFormat.QOperator, per_channel=True, reduce_range=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=calibration_method, extra_options=dict(_QOPERATOR_OPTIONS))
    return rewritten_layers


def _quantize_qdq(model: str, source: Path, fp32, quantized: Path, calibration: list[dict[str, np.ndarray]],
                  method: str) -> int:
    """TensorRT's form of ``source``: Q/DQ pairs, int8 symmetric activations and per-channel weights. Returns 0
    (TensorRT quantises transposed convolutions itself: no rewrite)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = quantized.parent / f"{model}_qdq_prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    input_names = [i.name for i in fp32.get_inputs()]
    calibration_method = {m.name.lower(): m for m in CalibrationMethod}[method]
    # reduce_range=False: full 8-bit weights. 7-bit ones would also hide the CPU saturation, but TensorRT has none
    # and would only lose precision; the check runs the file as written instead (qdq_reference_session).
    quantize_static(str(prepared), str(quantized), _Reader(calibration, input_names), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=False, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=calibration_method,
                    op_types_to_quantize=["Conv", "ConvTranspose"], extra_options=dict(_QDQ_OPTIONS))
    return 0


def _held_out_error(model: str, fp32, int8, held_out: list[dict[str, np.ndarray]]) -> float:
    """Median over the held-out windows of the INT8 session's relative error against the fp32 session's."""
    input_names = [i.name for i in fp32.get_inputs()]
    errors = []
    for feed in held_out:
        inputs = {name: feed[name] for name in input_names}
        errors.append(_relative_errors(model, int8.run(None, inputs), fp32.run(None, inputs)))
    return float(np.median(errors))
