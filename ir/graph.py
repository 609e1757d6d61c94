"""A model as a graph of kernel calls over named tensors.

The frontend produces it, graph passes rewrite it, codegen lowers it to one module. Nodes are kept
in a valid execution order. A node either calls a kernel (its kernel's inputs are bound to
`inputs`, its outputs to `outputs`, in order) or is an alias: its single output is the same data as
its single input under another shape (Reshape, Flatten, Squeeze, ...), so no kernel runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .stmt import Kernel


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Node:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    kernel: Kernel | None = None  # None for an alias node

    @property
    def is_alias(self) -> bool:
        return self.kernel is None


@dataclass
class Graph:
    name: str
    inputs: list[str]                      # runtime inputs, in the model's order
    outputs: list[str]
    nodes: list[Node]
    types: dict[str, TensorType]           # every tensor: inputs, intermediates, outputs, constants
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def kernels(self) -> list[Kernel]:
        return [n.kernel for n in self.nodes if n.kernel is not None]

    def producers(self) -> dict[str, Node]:
        return {t: n for n in self.nodes for t in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for t in n.inputs:
                out.setdefault(t, []).append(n)
        return out
