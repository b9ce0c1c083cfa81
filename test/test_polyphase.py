"""The polyphase rewrite of transposed convolutions (sfm_ros.polyphase), judged by onnxruntime running the graph
before and after: on hand-built layers of every handled form and on an exported DispNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sfm_ros.bundle import onnx_path
from sfm_ros.polyphase import phase_weights, polyphase_transposed_convs


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def transposed_conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x [1,6,5,7] -> four stride-2 ConvTransposes: k3 + Relu (DispNet's), k3 without bias or Relu (a graph output),
    k4 (PoseExpNet's mask decoder), and k3 without output_padding (9x13: not a doubling, left as it is)."""
    weights = {"w_relu": rng.normal(size=(6, 4, 3, 3)), "b_relu": rng.normal(size=4),
               "w_plain": rng.normal(size=(6, 5, 3, 3)), "w_k4": rng.normal(size=(6, 3, 4, 4)),
               "b_k4": rng.normal(size=3), "w_odd": rng.normal(size=(6, 2, 3, 3))}
    form = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w_relu", "b_relu"], ["up_relu"], output_padding=[1, 1], **form),
        helper.make_node("Relu", ["up_relu"], ["y_relu"]),
        helper.make_node("ConvTranspose", ["x", "w_plain"], ["y_plain"], output_padding=[1, 1],
                         kernel_shape=[3, 3], **form),
        helper.make_node("ConvTranspose", ["x", "w_k4", "b_k4"], ["y_k4"], **form),
        helper.make_node("ConvTranspose", ["x", "w_odd"], ["y_odd"], **form),
    ]
    graph = helper.make_graph(
        nodes, "upconvs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 7])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in (
            ("y_relu", [1, 4, 10, 14]), ("y_plain", [1, 5, 10, 14]), ("y_k4", [1, 3, 10, 14]),
            ("y_odd", [1, 2, 9, 13]))],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rewritten_layers_compute_the_same_outputs() -> None:
    rng = np.random.default_rng(0)
    model = transposed_conv_model(rng)
    feeds = {"x": rng.normal(size=(1, 6, 5, 7)).astype(np.float32)}
    expected = run(model, feeds)
    assert polyphase_transposed_convs(model) == 3
    onnx.checker.check_model(model)
    found = run(model, feeds)
    for before, after in zip(expected, found, strict=True):
        assert after.shape == before.shape
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert expected[0].shape == (1, 4, 10, 14) and expected[0].min() == 0.0  # the Relu is still applied
    operators = [node.op_type for node in model.graph.node]
    assert operators.count("ConvTranspose") == 1 and operators.count("Conv") == 12
    assert operators.count("Relu") == 4  # one per phase of the first layer; the original Relu is gone
    initializers = {t.name for t in model.graph.initializer}
    assert "w_odd" in initializers and not initializers & {"w_relu", "w_plain", "w_k4"}  # replaced weights dropped


@pytest.mark.parametrize(("size", "shapes", "pads"), [
    (3, [(1, 1), (1, 2), (2, 1), (2, 2)], [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 1]]),
    (4, [(2, 2)] * 4, [[1, 1, 0, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1]]),
])
def test_phase_kernels_take_every_tap_once(size: int, shapes: list, pads: list) -> None:
    weight = np.arange(2 * 3 * size * size, dtype=np.float32).reshape(2, 3, size, size)  # [C_in, C_out, K, K]
    phases = phase_weights(weight, padding=1)
    assert [kernel.shape[2:] for kernel, _ in phases] == shapes
    assert [phase_pads for _, phase_pads in phases] == pads
    taps = np.concatenate([kernel.reshape(3, 2, -1) for kernel, _ in phases], axis=2)
    every_tap = weight.transpose(1, 0, 2, 3).reshape(3, 2, size * size)
    np.testing.assert_array_equal(np.sort(taps, axis=2), np.sort(every_tap, axis=2))


def test_graph_without_rewritable_layers_is_untouched() -> None:
    model = transposed_conv_model(np.random.default_rng(1))
    for _ in range(4):  # keep only the layer that does not double the size
        model.graph.node.pop(0)
    before = model.SerializeToString()
    assert polyphase_transposed_convs(model) == 0
    assert model.SerializeToString() == before


def test_exported_dispnet_is_rewritten_exactly(small_bundle: Path) -> None:
    model = onnx.load(str(onnx_path(small_bundle, "depth")))
    image = np.random.default_rng(2).normal(size=(1, 3, 64, 208)).astype(np.float32)
    expected = run(model, {"image": image})[0]
    assert polyphase_transposed_convs(model) == 7  # DispNet's seven upconvs, odd intermediate sizes included
    found = run(model, {"image": image})[0]
    assert np.max(np.abs(found - expected)) <= 1e-5 * np.max(np.abs(expected))
    assert "ConvTranspose" not in {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("attribute", [{"group": 2}, {"dilations": [2, 2]}, {"output_padding": [0, 0]}])
def test_other_transposed_conv_forms_are_left_alone(attribute: dict) -> None:
    rng = np.random.default_rng(3)
    model = transposed_conv_model(rng)
    node = model.graph.node[2]  # the k3 layer without bias or Relu
    for name, value in attribute.items():
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute(name, value)])
    assert polyphase_transposed_convs(model) == 2
