"""Which blocked convolutions run as Winograd F(2x2, 3x3) (frontend/ops/winograd.py), and the
three nodes that replace one.

A 3x3 convolution at stride 1, dilation 1 and one pixel of padding, on a blocked input and
output of even height and width (every 2x2 output tile whole) at batch 1: ResNet-50's 3x3
convolutions of 56x56, 28x28 and 14x14 planes, half its run time in direct form. The
matmul's 16 x T x C x K multiply-adds are 16/36 of the direct convolution's.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..ir import TensorType
from .ops.registry import NESTOR_DOMAIN
from .ops.winograd import output_transform_matrix, transform_weights


def takes_winograd(node_attrs: dict, w: np.ndarray, x_shape, out_shape, in_block: int, out_block: int) -> bool:
    """Whether a conv (its attributes, OIHW weights, plain input and output shapes) goes Winograd."""
    if w.ndim != 4 or w.shape[2:] != (3, 3) or not in_block or in_block != out_block:
        return False
    if node_attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return False
    ones = [1, 1]
    return (list(node_attrs.get("strides", ones)) == ones and list(node_attrs.get("dilations", ones)) == ones
            and list(node_attrs.get("pads", [0] * 4)) == [1, 1, 1, 1] and node_attrs.get("group", 1) == 1
            and x_shape[0] == 1 and tuple(out_shape[2:]) == tuple(x_shape[2:])
            and out_shape[2] % 2 == 0 and out_shape[3] % 2 == 0)


def winograd_nodes(name: str, x_blocked: str, w: np.ndarray, bias: str | None, out_blocked: str,
                   out_shape, new_const, new_tensor) -> list:
    """The nodes computing conv `name` as Winograd: `new_const(base, value)` and
    `new_tensor(base, TensorType)` name new constants and tensors."""
    k, c = w.shape[:2]
    tiles = (out_shape[2] // 2) * (out_shape[3] // 2)
    am = new_const("winograd_at", output_transform_matrix())
    u = new_const(f"{name}_winograd_u", transform_weights(w))
    v = new_tensor(f"{name}_winograd_v", TensorType((16, tiles, c), "float32"))
    m = new_tensor(f"{name}_winograd_m", TensorType((16, tiles, k), "float32"))
    return [
        helper.make_node("WinogradInput", [x_blocked], [v], name=f"{name}_wi", domain=NESTOR_DOMAIN),
        helper.make_node("MatMul", [v, u], [m], name=f"{name}_wm"),
        helper.make_node("WinogradOutput", [m, am] + ([bias] if bias else []), [out_blocked], name=name,
                         domain=NESTOR_DOMAIN),
    ]
