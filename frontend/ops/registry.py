"""The op registry: ONNX op type → a function that lowers one node to a Nestor kernel.

A lowering function receives an `OpContext` (the node, its attributes, the static shapes and dtypes
of its inputs and outputs, and the values of constant inputs) and returns either
- `Lowered(kernel, args)`: a kernel whose inputs are the node inputs listed in `args` (indices into
  node.input, in the kernel's input order) and whose outputs are the node's outputs, in order; or
- `Alias(input_index)`: the (single) output is the same data as that input under the output's
  shape (Reshape, Flatten, Squeeze, Unsqueeze, Dropout, Identity): no kernel, no copy.
Constant inputs that act as attributes (Reshape's shape, Slice's starts, ReduceMean's axes, a
scalar exponent) are read with `ctx.const(i)` and baked into the kernel instead of passed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from ...ir import Kernel
from ...ir.errors import NestorError


class UnsupportedOpError(NestorError):
    """An op type, attribute or input form Nestor cannot compile; the message names the node."""


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str                       # canonical name: 'float32', 'int64', 'bool', ...
    value: np.ndarray | None = None  # set when the tensor is a compile-time constant


@dataclass
class Lowered:
    kernel: Kernel
    args: list[int]


@dataclass
class Alias:
    input_index: int = 0


@dataclass
class OpContext:
    node: onnx.NodeProto
    name: str                              # node name (synthesized if the model has none)
    opset: int                             # opset of the node's domain
    inputs: list[TensorInfo | None]        # None for an omitted optional input ('')
    outputs: list[TensorInfo]
    attrs: dict = field(default_factory=dict)
    gpu: bool = False                      # imported for a GPU, where arithmetic is cheap beside memory

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def const(self, i: int, default=None) -> np.ndarray | None:
        """The value of constant input `i`; `default` if it is omitted; an error if it is not constant."""
        if not self.has_input(i):
            return default
        info = self.inputs[i]
        if info.value is None:
            raise self.unsupported(f"input {i} ('{self.node.input[i]}') must be a constant")
        return info.value

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"{self.op_type} node '{self.name}' (opset {self.opset}): {why}")

    def kernel_name(self) -> str:
        return self.op_type.lower()


NESTOR_DOMAIN = "nestor"
LowerFn = Callable[[OpContext], "Lowered | Alias"]
_REGISTRY: dict[str, LowerFn] = {}


def register_op(*op_types: str):
    """Decorator: `@register_op("Add", "Sub")` registers a lowering for those ONNX op types."""
    def deco(fn: LowerFn) -> LowerFn:
        for op in op_types:
            _REGISTRY[op] = fn
        return fn
    return deco


def lowering_for(op_type: str, domain: str = "") -> LowerFn | None:
    """The lowering of an ONNX op, or of an op of Nestor's own domain (registered as
    "nestor.Op": what graph passes write, never read from a model)."""
    return _REGISTRY.get(f"{domain}.{op_type}" if domain == NESTOR_DOMAIN else op_type)


def supported_ops() -> list[str]:
    return sorted(op for op in _REGISTRY if "." not in op)


def make_context(node: onnx.NodeProto, name: str, opset: int,
                 inputs: list[TensorInfo | None], outputs: list[TensorInfo], gpu: bool = False) -> OpContext:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return OpContext(node, name, opset, inputs, outputs, attrs, gpu)
