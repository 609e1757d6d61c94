"""A ConvTranspose whose kernel is as wide as its stride, with no pads, dilation, groups or
output padding (a UNet's k = s = 2 upsampling) paints one k x k block of the output per input
pixel: it is a matrix product, W^T [M*k*k, C] x X [N, C, H*W], whose columns are then laid out
as blocks (Reshape, Transpose, Reshape) and the bias added. The product is a MatMul kernel the
tuner tiles like any other; the general ConvTranspose lowering (frontend/ops/nn.py) gathers
with strided indices (o // s, o % s) that its tiling cannot vectorize. Runs on the folded,
typed graph: the new tensors are typed here.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..ir import TensorType, canonical


def matmul_conv_transposes(nodes: list[onnx.NodeProto], consts: dict,
                           types: dict[str, TensorType]) -> list[onnx.NodeProto]:
    """`nodes` with every block-painting ConvTranspose (constant weights, 2-D) replaced."""
    out = []
    for node in nodes:
        out.extend(_as_matmul(node, consts, types) if _paints_blocks(node, consts, types) else [node])
    return out


def _paints_blocks(node: onnx.NodeProto, consts: dict, types: dict[str, TensorType]) -> bool:
    if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return False
    x, w = (types.get(name) for name in node.input[:2])
    if x is None or w is None or len(x.shape) != 4 or node.input[1] not in consts or not x.dtype.startswith("float"):
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in consts:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(w.shape[2:])
    zeros = [0] * 4
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    out = types.get(node.output[0])
    return (list(attrs.get("strides", [1, 1])) == kernel and list(attrs.get("dilations", [1, 1])) == [1, 1]
            and list(attrs.get("pads", zeros)) == zeros and attrs.get("group", 1) == 1
            and list(attrs.get("output_padding", [0, 0])) == [0, 0] and auto_pad in ("NOTSET", "VALID")
            and out is not None and tuple(out.shape) == (x.shape[0], w.shape[1], x.shape[2] * kernel[0],
                                                         x.shape[3] * kernel[1]))


def _as_matmul(node: onnx.NodeProto, consts: dict, types: dict[str, TensorType]) -> list[onnx.NodeProto]:
    (n, c, h, w_), weight = types[node.input[0]].shape, np.asarray(consts[node.input[1]])
    m, kh, kw = weight.shape[1:]
    dtype = types[node.input[0]].dtype
    prefix = f"{node.name or node.output[0]}__"
    made: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        consts[prefix + name] = value
        types[prefix + name] = TensorType(tuple(value.shape), canonical(value.dtype))
        return prefix + name

    def add(op: str, inputs: list[str], shape, output: str | None = None, **attrs) -> str:
        output = output or prefix + f"{op.lower()}{len(made)}"
        types[output] = TensorType(tuple(shape), dtype)
        made.append(helper.make_node(op, inputs, [output], name=prefix + f"{op}{len(made)}", **attrs))
        return output

    def reshape(name: str, shape, output: str | None = None) -> str:
        return add("Reshape", [name, const(f"shape{len(made)}", np.array(shape, np.int64))], shape, output)

    columns = reshape(node.input[0], (n, c, h * w_))
    wt = const("wt", np.ascontiguousarray(weight.reshape(c, m * kh * kw).T))
    y = add("MatMul", [wt, columns], (n, m * kh * kw, h * w_))
    y = add("Transpose", [reshape(y, (n, m, kh, kw, h, w_))], (n, m, h, kh, w_, kw), perm=[0, 1, 4, 2, 5, 3])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    out_shape = (n, m, h * kh, w_ * kw)
    y = reshape(y, out_shape, None if bias else node.output[0])
    if bias:
        add("Add", [y, const("bias", np.asarray(consts[bias]).reshape(m, 1, 1))], out_shape, node.output[0])
    return made
