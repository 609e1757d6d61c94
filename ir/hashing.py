"""Structural hash and equality of kernels, blind to names.

Two identical convolutions of a model are one tuning task, whatever their buffers and loops are
called. `canonicalize` renames everything in order of first appearance (parameters in order,
then allocations and loops as a pre-order walk meets them); the hash is SHA-256 of the canonical
text, which the printer makes exact (it round-trips), so it is stable across processes.
"""
from __future__ import annotations

import dataclasses
import hashlib

from .expr import Buffer, Expr, Load, Var
from .printer import print_kernel
from .stmt import Allocate, For, If, Kernel, Seq, Stmt, Store
from .visit import rewrite


def structural_hash(kernel: Kernel) -> str:
    return hashlib.sha256(_canonical_text(kernel).encode()).hexdigest()


def structural_equal(a: Kernel, b: Kernel) -> bool:
    # Compared as text, not dataclasses, so that nan constants compare equal.
    return _canonical_text(a) == _canonical_text(b)


def _canonical_text(kernel: Kernel) -> str:
    return print_kernel(canonicalize(kernel))


def canonicalize(kernel: Kernel) -> Kernel:
    """The kernel with names k, b0.. (buffers), v0.. (one per loop) and u0.. (free variables)."""
    return _Renamer().kernel(kernel)


class _Renamer:
    def __init__(self):
        self.buffers = 0
        self.loops = 0
        self.free: dict = {}  # undeclared buffers and variables, so invalid kernels hash too

    def new_buffer(self, b: Buffer) -> Buffer:
        self.buffers += 1
        return dataclasses.replace(b, name=f"b{self.buffers - 1}")

    def kernel(self, k: Kernel) -> Kernel:
        scope = {}
        inputs = tuple(scope.setdefault(b, self.new_buffer(b)) for b in k.inputs)
        outputs = tuple(scope.setdefault(b, self.new_buffer(b)) for b in k.outputs)
        return Kernel("k", inputs, outputs, self.stmt(k.body, scope, {}))

    def buffer(self, b: Buffer, scope: dict) -> Buffer:
        if b in scope:
            return scope[b]
        if b not in self.free:
            self.free[b] = dataclasses.replace(b, name=f"x{len(self.free)}")
        return self.free[b]

    def expr(self, e: Expr, scope: dict, names: dict) -> Expr:
        def fn(node):
            if isinstance(node, Var):
                if node.name in names:
                    return Var(names[node.name])
                return self.free.setdefault(node.name, Var(f"u{len(self.free)}"))
            if isinstance(node, Load):
                return Load(self.buffer(node.buffer, scope), node.indices)
            return None
        return rewrite(e, fn)

    def stmt(self, s: Stmt, scope: dict, names: dict) -> Stmt:
        if isinstance(s, For):
            self.loops += 1
            name = f"v{self.loops - 1}"
            return For(name, s.extent, self.stmt(s.body, scope, {**names, s.var: name}), s.kind, s.axis)
        if isinstance(s, Store):
            return Store(self.buffer(s.buffer, scope), tuple(self.expr(i, scope, names) for i in s.indices),
                         self.expr(s.value, scope, names), s.reduce)
        if isinstance(s, Seq):
            return Seq(tuple(self.stmt(x, scope, names) for x in s.stmts))
        if isinstance(s, If):
            other = None if s.otherwise is None else self.stmt(s.otherwise, scope, names)
            return If(self.expr(s.cond, scope, names), self.stmt(s.then, scope, names), other)
        if isinstance(s, Allocate):
            buf = self.new_buffer(s.buffer)
            return Allocate(buf, self.stmt(s.body, {**scope, s.buffer: buf}, names))
        raise TypeError(f"not a statement: {s!r}")
