"""Blocked layouts for CPU convolutions: activations between convolutions live in NCHW<b>c.

In NCHW a convolution's output channels are a feature map apart, so a vector of output channels
(the layout that fills the registers: one weight vector per reduction step, one input value
broadcast) is scattered over 16 planes when stored, and a vector along a row of 7, 14 or 56
pixels has a tail. Blocked as [N, C/b, H, W, b] (b = a cache line of channels, 16, or half of one where 16 does not divide C:
MachineParams.channel_blocks), the
b channels are adjacent: every accumulator is one vector and every store a whole vector.

The pass walks the nodes in order and keeps, for each tensor it has blocked, the name of its
blocked copy. A group-1 2-D Conv becomes ConvNCHWc (frontend/ops/blocked.py) with its weights
packed at compile time; it reads its input blocked when the producer made it so, else plain.
A depthwise Conv whose input is blocked becomes DepthwiseNCHWc, its output blocked alike.
Ops that work on blocked tensors as they are then propagate the layout: elementwise ops whose
data inputs are all blocked alike (a per-channel or scalar constant operand is re-blocked),
MaxPool / AveragePool, Concat along the channels. Every other reader of a blocked tensor, and
the graph's outputs, read the plain tensor under its original name, produced by a FromNCHWc
node inserted before its first such reader: layout conversions stand only where the layout
changes, once per tensor.

A 3x3 stride-1 convolution on a blocked input whose output tiles into whole 2x2 tiles becomes
three nodes instead (Winograd F(2x2, 3x3), frontend/winograd.py); its output is blocked alike.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..ir import TensorType, canonical
from ..ir.machine import GENERIC_CPU, MachineParams
from .winograd import takes_winograd, winograd_nodes
from .graph_passes import _attr, _fresh, _new_const
from .ops.blocked import pack_conv_weight, pack_depthwise_weight
from .ops.elementwise import BINARY, UNARY, VARIADIC
from .ops.registry import NESTOR_DOMAIN

POOLS = ("MaxPool", "AveragePool")
GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool")


def block_size(channels: int, machine: MachineParams = GENERIC_CPU) -> int | None:
    """The first of the machine's channel blocks that divides `channels`."""
    return next((b for b in machine.channel_blocks if channels % b == 0), None)


def blocked_shape(shape: tuple[int, ...], b: int) -> tuple[int, ...]:
    return (shape[0], shape[1] // b, *shape[2:], b)


def to_blocked(value: np.ndarray, b: int) -> np.ndarray:
    """A plain [N, C, ...] array as [N, C/b, ..., b]."""
    n, c, *rest = value.shape
    split = value.reshape(n, c // b, b, *rest)
    return np.ascontiguousarray(np.moveaxis(split, 2, -1))


def blocked_layout(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                   types: dict[str, TensorType], outputs: list[str],
                   winograd: bool = True, machine: MachineParams = GENERIC_CPU) -> list[onnx.NodeProto]:
    """The node list with convolutions and their neighbours in blocked layouts (module doc);
    new tensors and constants are added to `types` and `consts`. With `winograd`, the convs
    that frontend/winograd.py takes become its three nodes. Blocks: `machine.channel_blocks`."""
    return _Rewriter(consts, types, winograd, machine).run(nodes, outputs)


class _Rewriter:
    def __init__(self, consts, types, winograd: bool, machine: MachineParams):
        self.consts, self.types, self.winograd, self.machine = consts, types, winograd, machine
        self.names = set(consts) | set(types)
        self.blocked: dict[str, tuple[str, int]] = {}   # plain name -> (blocked name, block)
        self.plain_ready: set[str] = set()
        self.out: list[onnx.NodeProto] = []
        self.shared: dict[str, str] = {}

    def run(self, nodes, outputs):
        self.names |= {o for n in nodes for o in n.output}
        for node in nodes:
            new = self._rewrite(node)
            if new is None:
                for name in node.input:
                    self._need_plain(name)
                new = node
            self.out.extend(new if isinstance(new, list) else [new])
        for name in outputs:
            self._need_plain(name)
        return self.out

    # -- each op --------------------------------------------------------------------------

    def _rewrite(self, node) -> onnx.NodeProto | list[onnx.NodeProto] | None:
        """The node (or the nodes replacing it) on blocked tensors, or None to leave it reading
        plain ones."""
        op = node.op_type
        if len([o for o in node.output if o]) != 1:  # (MaxPool's Indices: plain)
            return None
        if op == "Conv":
            return self._conv(node)
        if op in UNARY or op in BINARY or op in VARIADIC or op == "Clip":
            return self._elementwise(node, data=[i for i in node.input if i and i not in self.consts])
        if op in POOLS and node.input[0] in self.blocked:
            return self._propagate(node, [node.input[0]], self.blocked[node.input[0]][1])
        if op in GLOBAL_POOLS and node.input[0] in self.blocked:
            new = self._propagate(node, [node.input[0]], self.blocked[node.input[0]][1])
            new.op_type, new.domain = f"{op}NCHWc", NESTOR_DOMAIN
            return new
        if op == "Concat":
            return self._concat(node)
        return None

    def _conv(self, node):
        x, w_name = node.input[0], node.input[1]
        w = self.consts.get(w_name)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        out_t = self.types.get(node.output[0])
        if (w is None or w.ndim != 4 or out_t is None or canonical(w.dtype) != "float32"
                or (bias and bias not in self.consts)):
            return None
        if _attr(node, "group", 1) != 1:
            return self._depthwise(node, w, bias)
        bo = block_size(w.shape[0], self.machine)
        if bo is None:
            return None
        xb, bi = self.blocked.get(x, (x, 0))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.pop("kernel_shape", None)
        if self.winograd and takes_winograd(attrs, w, self.types[x].shape, out_t.shape, bi, bo):
            out = self._blocked_output(node.output[0], bo)
            return winograd_nodes(node.name, xb, w, bias, out, out_t.shape, self._shared_const,
                                  self._tensor)
        packed = self._const(f"{w_name}_nchwc", pack_conv_weight(w, bi, bo))
        out = self._blocked_output(node.output[0], bo)
        inputs = [xb, packed] + ([bias] if bias else [])
        return helper.make_node("ConvNCHWc", inputs, [out], name=node.name, domain=NESTOR_DOMAIN,
                                in_block=bi, **attrs)

    def _depthwise(self, node, w, bias):
        """A depthwise conv (group = channels, one filter each) reading a blocked input."""
        x = node.input[0]
        if x not in self.blocked or w.shape[1] != 1 or _attr(node, "group", 1) != w.shape[0] \
                or self.types[x].shape[1] != w.shape[0]:
            return None
        xb, b = self.blocked[x]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for name in ("kernel_shape", "group"):
            attrs.pop(name, None)
        packed = self._const(f"{node.input[1]}_nchwc", pack_depthwise_weight(w, b))
        out = self._blocked_output(node.output[0], b)
        return helper.make_node("DepthwiseNCHWc", [xb, packed] + ([bias] if bias else []), [out], name=node.name,
                                domain=NESTOR_DOMAIN, **attrs)

    def _elementwise(self, node, data):
        """Blocked when every data input is blocked with one block, one of them shaped as the
        output and the others varying along the channels only (a squeeze-excite gate); constant
        operands must be scalars or vary along the channels only."""
        if not data or any(d not in self.blocked for d in data):
            return None
        blocks = {self.blocked[d][1] for d in data}
        out_t = self.types.get(node.output[0])
        if len(blocks) != 1 or out_t is None:
            return None
        shapes = [self.types[d].shape for d in data]
        if out_t.shape not in shapes or not all(s == out_t.shape or _per_channel(s, out_t.shape) for s in shapes):
            return None
        b = blocks.pop()
        operands = {}
        for name in node.input:
            if name and name in self.consts:
                value = _blocked_operand(self.consts[name], out_t.shape, b)
                if value is None:
                    return None
                operands[name] = value
        new = self._propagate(node, data, b)
        for k, name in enumerate(new.input):
            if name in operands and operands[name] is not self.consts[name]:
                new.input[k] = self._const(f"{name}_nchwc", operands[name])
        return new

    def _concat(self, node):
        inputs = [i for i in node.input if i]
        out_t = self.types.get(node.output[0])
        if out_t is None or any(i not in self.blocked for i in inputs):
            return None
        axis = _attr(node, "axis", 0)
        blocks = {self.blocked[i][1] for i in inputs}
        if (axis + len(out_t.shape) if axis < 0 else axis) != 1 or len(blocks) != 1:
            return None
        new = self._propagate(node, inputs, blocks.pop())
        _set_attr(new, "axis", 1)
        return new

    # -- helpers --------------------------------------------------------------------------

    def _propagate(self, node, data, b):
        """A copy of `node` reading the blocked copies of `data` and writing a blocked output."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for k, name in enumerate(new.input):
            if name in data:
                new.input[k] = self.blocked[name][0]
        new.output[0] = self._blocked_output(node.output[0], b)
        return new

    def _blocked_output(self, name, b):
        t = self.types[name]
        blocked = _fresh(f"{name}_nchw{b}c", self.names)
        self.types[blocked] = TensorType(blocked_shape(t.shape, b), t.dtype)
        self.blocked[name] = (blocked, b)
        return blocked

    def _need_plain(self, name):
        if name in self.blocked and name not in self.plain_ready:
            self.plain_ready.add(name)
            self.out.append(helper.make_node("FromNCHWc", [self.blocked[name][0]], [name],
                                             name=f"{name}_to_nchw", domain=NESTOR_DOMAIN))

    def _const(self, base, value):
        return _new_const(base, value, self.consts, self.types, self.names)

    def _shared_const(self, base, value):
        """A constant by `base` name, made once (the Winograd transforms' matrices)."""
        if base not in self.shared:
            self.shared[base] = self._const(base, value)
        return self.shared[base]

    def _tensor(self, base, t: TensorType):
        name = _fresh(base, self.names)
        self.types[name] = t
        return name


def _per_channel(shape, out_shape) -> bool:
    """`shape` is `out_shape` with every dim but the channels' (1) reduced to 1."""
    return len(shape) == len(out_shape) and all(n == (out_shape[1] if d == 1 else 1) for d, n in enumerate(shape))


def _blocked_operand(c: np.ndarray, shape, b: int) -> np.ndarray | None:
    """Constant operand `c` of an elementwise op over logical `shape`, broadcast against its
    blocked form; None if it varies along an axis other than the channels. A scalar (or
    size-1 everywhere) operand is returned as it is."""
    if c.size == 1:
        return c
    if c.ndim > len(shape):
        return None
    full = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    if any(n != 1 for d, n in enumerate(full.shape) if d != 1):
        return None
    return to_blocked(full, b)


def _set_attr(node, name, value):
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(helper.make_attribute(name, value))
