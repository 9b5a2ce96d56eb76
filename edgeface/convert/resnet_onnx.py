"""ONNX graph (FP32) of dlib's face-recognition ResNet, built from `DlibResnet` layers.

Graph contract:
- input `rgb`: float32 (n, 3, 150, 150), RGB channel order, raw pixel values 0..255 (dlib's
  mean subtraction and /256 scaling happen inside the graph, exactly as dlib's input layer does);
- output `descriptor`: float32 (n, 128), dlib's raw (not normalised) face descriptor.

Each con + affine pair is folded into one Conv (weights * gamma, bias * gamma + beta, folded in
float64 then rounded to float32); onnxruntime would fuse them anyway, and folding first lets the
INT8 quantizer see the real weights. add_prev's zero-padding at the end is an explicit Pad.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeface.convert.dlib_resnet import (
    AddPrev,
    Affine,
    AvgPool,
    Conv,
    DlibResnet,
    FcNoBias,
    MaxPool,
    Relu,
    Skip,
    Tag,
)
from edgeface.errors import ModelFileError

INPUT_NAME = "rgb"
OUTPUT_NAME = "descriptor"
OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.10 on the boards


@dataclass
class _Builder:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    counter: int = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attributes: object) -> str:
        from onnx import helper

        output = self.name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))  # type: ignore[arg-type]
        return output


def _fold(conv: Conv, affine: Affine | None) -> tuple[np.ndarray, np.ndarray]:
    if affine is None:
        return conv.weight, conv.bias
    gamma = affine.gamma.astype(np.float64)
    weight = conv.weight.astype(np.float64) * gamma[:, None, None, None]
    bias = conv.bias.astype(np.float64) * gamma + affine.beta.astype(np.float64)
    return weight.astype(np.float32), bias.astype(np.float32)


def build_resnet_onnx(net: DlibResnet, doc: str = ""):  # -> onnx.ModelProto (onnx imported lazily)
    """The FP32 ONNX model of `net` (deterministic: the same net gives byte-identical protobuf)."""
    import onnx
    from onnx import TensorProto, helper

    b = _Builder()
    size = net.input.size
    mean = np.asarray(net.input.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
    x = b.node("Sub", [INPUT_NAME, b.const("input_mean", mean)], "centred")
    x = b.node("Mul", [x, b.const("input_scale", np.asarray(1.0 / 256.0, dtype=np.float32))], "scaled")

    shape = (3, size, size)  # (channels, rows, cols) of the current tensor, known statically
    saved: dict[int, tuple[str, tuple[int, int, int]]] = {}
    layers = list(net.layers)
    index = 0
    while index < len(layers):
        layer = layers[index]
        if isinstance(layer, Tag):
            saved[layer.slot] = (x, shape)
        elif isinstance(layer, Skip):
            x, shape = saved[layer.slot]
        elif isinstance(layer, Conv):
            following = layers[index + 1] if index + 1 < len(layers) else None
            affine = following if isinstance(following, Affine) else None
            weight, bias = _fold(layer, affine)
            index += 1 if affine is not None else 0
            kernel = int(weight.shape[2])
            x = b.node(
                "Conv",
                [x, b.const("conv_w", weight), b.const("conv_b", bias)],
                "conv",
                kernel_shape=[kernel, kernel],
                strides=[layer.stride, layer.stride],
                pads=[layer.padding] * 4,
            )
            rows = (shape[1] + 2 * layer.padding - kernel) // layer.stride + 1
            shape = (int(weight.shape[0]), rows, rows)
        elif isinstance(layer, Affine):
            x = b.node("Mul", [x, b.const("affine_gamma", layer.gamma.reshape(1, -1, 1, 1))], "affine_mul")
            x = b.node("Add", [x, b.const("affine_beta", layer.beta.reshape(1, -1, 1, 1))], "affine_add")
        elif isinstance(layer, Relu):
            x = b.node("Relu", [x], "relu")
        elif isinstance(layer, AvgPool) and layer.size == 0:
            x = b.node("GlobalAveragePool", [x], "global_avg")
            shape = (shape[0], 1, 1)
        elif isinstance(layer, (MaxPool, AvgPool)):
            op = "MaxPool" if isinstance(layer, MaxPool) else "AveragePool"
            x = b.node(
                op,
                [x],
                op.lower(),
                kernel_shape=[layer.size, layer.size],
                strides=[layer.stride, layer.stride],
                pads=[layer.padding] * 4,
            )
            rows = (shape[1] + 2 * layer.padding - layer.size) // layer.stride + 1
            shape = (shape[0], rows, rows)
        elif isinstance(layer, AddPrev):
            other, other_shape = saved[layer.slot]
            target = (max(shape[0], other_shape[0]), max(shape[1], other_shape[1]), max(shape[2], other_shape[2]))
            x = b.node("Add", [_pad_to(b, x, shape, target), _pad_to(b, other, other_shape, target)], "add_prev")
            shape = target
        elif isinstance(layer, FcNoBias):
            features = shape[0] * shape[1] * shape[2]
            if layer.weight.shape[0] != features:
                raise ModelFileError(f"fc layer expects {layer.weight.shape[0]} inputs but gets {features}")
            x = b.node("Flatten", [x], "flatten", axis=1)
            x = b.node("MatMul", [x, b.const("fc_w", layer.weight)], "fc")
            shape = (int(layer.weight.shape[1]), 1, 1)
        else:  # pragma: no cover - the reader only produces the types above
            raise ModelFileError(f"unsupported dlib layer {type(layer).__name__}")
        index += 1

    b.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))
    graph = helper.make_graph(
        b.nodes,
        "dlib_resnet_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", shape[0]])],
        b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgeface",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _pad_to(b: _Builder, x: str, shape: tuple[int, int, int], target: tuple[int, int, int]) -> str:
    """Zero-pad (channels, rows, cols) at the end up to `target`, as dlib's add_prev does."""
    if shape == target:
        return x
    extra = [t - s for s, t in zip(shape, target)]
    pads = np.asarray([0, 0, 0, 0, 0, *extra], dtype=np.int64)
    return b.node("Pad", [x, b.const("pad", pads)], "pad", mode="constant")
