"""ONNX rewrite for onnxruntime INT8: each stride-2 transposed convolution becomes four stride-1 convolutions.

onnxruntime has no int8 kernel for ConvTranspose, so in a QOperator INT8 model DispNet's seven upconvs stay fp32,
between Dequantize and Quantize: 11-14 ms of a 50 ms depth pass on a 2-core AVX2 CPU, bound by the fp32 weights
(9.4 MB for each of the coarsest three) and by col2im (benchmarks/RESULTS.md). A stride-2 ConvTranspose that
exactly doubles H and W (kernel 3, padding 1, output_padding 1 in DispNet; kernel 4, padding 1 in PoseExpNet's
mask decoder) is four ordinary convolutions, one per output phase (even/odd row x even/odd column), each reading
only the taps that land on that phase (``phase_weights``). For kernel 3:

- (even, even): tap (1, 1), a 1x1 convolution;
- (even, odd): taps (1, 2), (1, 0) over input columns j, j+1, a 1x2 convolution padded right by one;
- (odd, even): taps (2, 1), (0, 1) over rows i, i+1, a 2x1 convolution padded at the bottom;
- (odd, odd): taps (2, 2), (2, 0), (0, 2), (0, 0), a 2x2 convolution padded right and at the bottom.

These quantise to QLinearConv. The phases [B,4C,H,W] are interleaved into [B,C,2H,2W] through channels-last
(Transpose, Reshape, a Transpose that moves whole C-channel pixels, Reshape, Transpose): onnxruntime runs QLinearConv
channels-last and cancels the outer Transposes against its own, so the interleave is cheap. The same graph in fp32
is slower than ConvTranspose (its convolutions run in the NCHWc layout), so only the INT8 path uses it.

A ReLU that is the transposed convolution's only consumer is applied per phase (they commute), which lets the
quantiser fold it into each QLinearConv. Other ConvTranspose forms are left as they are. numpy and onnx only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["phase_weights", "polyphase_transposed_convs"]


def _attributes(node) -> dict:
    import onnx

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _doubling_padding(attributes: dict, weight: np.ndarray) -> int | None:
    """The padding of a ConvTranspose (attributes, weight) that exactly doubles H and W with stride 2, or None."""
    if weight.ndim != 4:
        return None
    if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in attributes:
        return None
    kernel = [int(k) for k in weight.shape[2:]]
    pads = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
    output_padding = [int(p) for p in attributes.get("output_padding", [0, 0])]
    if (list(attributes.get("strides", [1, 1])) != [2, 2] or list(attributes.get("dilations", [1, 1])) != [1, 1]
            or attributes.get("group", 1) != 1 or list(attributes.get("kernel_shape", kernel)) != kernel
            or kernel[0] != kernel[1] or len(set(pads)) != 1 or len(set(output_padding)) != 1):
        return None
    # output size (H-1)*2 - 2*pad + kernel + output_padding must be 2H
    return pads[0] if kernel[0] + output_padding[0] - 2 * pads[0] == 2 and pads[0] < kernel[0] else None


def phase_weights(weight: np.ndarray, padding: int = 1) -> list[tuple[np.ndarray, list[int]]]:
    """The four phase kernels of a size-doubling stride-2 ConvTranspose, with their ONNX Conv pads.

    weight: [C_in, C_out, K, K] (ConvTranspose layout), ``padding`` its pads. Returns [(kernel [C_out, C_in, kh, kw],
    pads [top, left, bottom, right])] for output phases (even, even), (even, odd), (odd, even), (odd, odd).
    Output index 2m+r takes tap k from input index m+d where 2d = r + padding - k: the taps of one parity,
    ordered by d. Kernel 3, padding 1: even [tap 1], odd [tap 2, tap 0] reading m, m+1. Kernel 4, padding 1: even
    [tap 3, tap 1] reading m-1, m; odd [tap 2, tap 0] reading m, m+1.
    """
    w = np.ascontiguousarray(weight.transpose(1, 0, 2, 3))  # [C_out, C_in, K, K]
    size = w.shape[-1]
    taps, pads = [], []
    for phase in (0, 1):
        offsets = {(phase + padding - k) // 2: k for k in range(size) if (phase + padding - k) % 2 == 0}
        if not min(offsets) <= 0 <= max(offsets):  # a Conv cannot start past its output pixel's input pixel
            raise ValueError(f"kernel {size} with padding {padding} does not double the size")
        taps.append([offsets[d] for d in sorted(offsets)])
        pads.append((max(0, -min(offsets)), max(0, max(offsets))))
    phases = []
    for rows, (top, bottom) in zip(taps, pads, strict=True):
        for columns, (left, right) in zip(taps, pads, strict=True):
            kernel = w[:, :, rows][:, :, :, columns]
            phases.append((np.ascontiguousarray(kernel), [top, left, bottom, right]))
    return phases


def polyphase_transposed_convs(model):
    """Rewrite every ConvTranspose of the form above (with a following sole-consumer Relu, if any) in place.

    ``model``: an onnx.ModelProto with static input shapes and the weights as initializers. Returns the number of
    layers rewritten. The outputs are the same to float rounding (checked by the caller on real inputs).
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    shapes = {}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    for value in (*inferred.value_info, *inferred.input, *inferred.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = [_copy(node) for node in graph.node]
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    graph_outputs = {output.name for output in graph.output}

    rewritten, absorbed_relus, new_nodes, new_initializers = 0, set(), [], []
    for index, node in enumerate(nodes):
        if index in absorbed_relus:
            continue
        weight = padding = None
        if node.op_type == "ConvTranspose" and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            padding = _doubling_padding(_attributes(node), weight)
        input_shape = shapes.get(node.input[0]) if padding is not None else None
        if input_shape is None or len(input_shape) != 4:
            new_nodes.append(node)
            continue
        users = consumers.get(node.output[0], [])
        relu = None
        if len(users) == 1 and nodes[users[0]].op_type == "Relu" and node.output[0] not in graph_outputs:
            relu = nodes[users[0]]
            absorbed_relus.add(users[0])
        layer_nodes, layer_initializers = _polyphase_layer(node, weight, padding, input_shape,
                                                           relu.output[0] if relu is not None else None)
        new_nodes += layer_nodes
        new_initializers += layer_initializers
        rewritten += 1
    if not rewritten:
        return 0
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_initializers)
    still_used = {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in still_used]:
        graph.initializer.remove(tensor)
    return rewritten


def _copy(node):
    import onnx

    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    return clone


def _polyphase_layer(node, weight: np.ndarray, padding: int, input_shape: list[int], relu_output: str | None
                     ) -> tuple[list, list]:
    """Nodes and initializers replacing one ConvTranspose (and its Relu, when ``relu_output`` names its output).

    Input [B,C_in,H,W] -> four phase Convs [B,C,H,W] -> interleaved [B,C,2H,2W], under the layer's output name.
    """
    from onnx import helper, numpy_helper

    batch, _, height, width = input_shape
    channels = weight.shape[1]
    prefix = f"{node.name or node.output[0]}/polyphase"
    bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
    nodes, initializers, phase_outputs = [], [], []
    for number, (kernel, pads) in enumerate(phase_weights(weight, padding)):
        kernel_name, phase = f"{prefix}/phase{number}_weight", f"{prefix}/phase{number}"
        initializers.append(numpy_helper.from_array(kernel.astype(weight.dtype), kernel_name))
        nodes.append(helper.make_node("Conv", [node.input[0], kernel_name, *bias], [phase], name=f"{phase}/Conv",
                                      kernel_shape=list(kernel.shape[2:]), pads=pads))
        if relu_output is not None:  # Relu commutes with the interleave: one per phase, folded into QLinearConv
            nodes.append(helper.make_node("Relu", [phase], [f"{phase}/relu"], name=f"{phase}/Relu"))
            phase = f"{phase}/relu"
        phase_outputs.append(phase)
    shape_6d, shape_4d = f"{prefix}/shape_6d", f"{prefix}/shape_4d"
    initializers += [numpy_helper.from_array(np.array([batch, height, width, 2, 2, channels], np.int64), shape_6d),
                     numpy_helper.from_array(np.array([batch, 2 * height, 2 * width, channels], np.int64), shape_4d)]
    # [B,4C,H,W] (phase-major channels) -> [B,H,W,(2,2,C)] -> [B,H,2,W,2,C] -> [B,2H,2W,C] -> [B,C,2H,2W]
    steps = [("Concat", phase_outputs, {"axis": 1}), ("Transpose", [], {"perm": [0, 2, 3, 1]}),
             ("Reshape", [shape_6d], {}), ("Transpose", [], {"perm": [0, 1, 3, 2, 4, 5]}),
             ("Reshape", [shape_4d], {}), ("Transpose", [], {"perm": [0, 3, 1, 2]})]
    output = relu_output if relu_output is not None else node.output[0]
    previous = None
    for step, (op_type, extra_inputs, attributes) in enumerate(steps):
        inputs = extra_inputs if previous is None else [previous, *extra_inputs]
        result = output if step == len(steps) - 1 else f"{prefix}/interleave{step}"
        nodes.append(helper.make_node(op_type, inputs, [result], name=f"{prefix}/{op_type}{step}", **attributes))
        previous = result
    return nodes, initializers
