"""Stages that depend only on a model's constants run once, at compile time.

A scheduled kernel may begin by rewriting a weight into a better layout (the `pack` pass:
`alloc W_packed { for ...: W_packed[...] = W[...]; <the rest> }`). When W is a constant of the
model, that stage computes the same thing on every run, so the compiler peels it off: it runs the
stage once on the constant, stores the result as a new constant, and the kernel reads it as an
input. Packed weights then cost nothing at run time.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Allocate, Buffer, Kernel, Load, Seq, Stmt, Store, loads, seq, walk_stmts
from ..ir.visit import rewrite_stmt


@dataclass(frozen=True)
class ConstantStage:
    """A peeled stage: `kernel` computes `output` from the constants `sources` (input indices
    of the original kernel)."""
    kernel: Kernel
    sources: tuple[int, ...]


def hoist_constant_stages(kernel: Kernel, constant: set[int]) -> tuple[Kernel, list[ConstantStage], list[int]]:
    """Peel the leading constant-only stages of `kernel` (`constant`: indices of inputs that are
    model constants). Returns the remaining kernel, the stages (their outputs are the remaining
    kernel's last inputs, in order) and the original input indices the remaining kernel still
    reads, which come first among its inputs."""
    stages: list[ConstantStage] = []
    body = kernel.body
    names = {b.name: i for i, b in enumerate(kernel.inputs)}
    while isinstance(body, Allocate) and isinstance(body.body, Seq):
        stage, *rest = body.body.stmts
        produced = body.buffer
        read = {l.buffer.name for l in loads(stage)}
        written = {s.buffer.name for s in walk_stmts(stage) if isinstance(s, Store)}
        if written != {produced.name} or not read or any(
                r not in names or names[r] not in constant for r in read):
            break
        sources = tuple(sorted(names[r] for r in read))
        output = Buffer(produced.name, produced.shape, produced.dtype, "global")
        stage_kernel = Kernel(f"{kernel.name}_{produced.name}",
                              tuple(kernel.inputs[i] for i in sources), (output,),
                              _as_global(stage, produced, output))
        stages.append(ConstantStage(stage_kernel, sources))
        body = _as_global(seq(*rest), produced, output)
    if not stages:
        return kernel, [], list(range(len(kernel.inputs)))
    used = {l.buffer.name for l in loads(body)}
    kept = [i for i, b in enumerate(kernel.inputs) if b.name in used]
    inputs = tuple(kernel.inputs[i] for i in kept) + tuple(s.kernel.outputs[0] for s in stages)
    return Kernel(kernel.name, inputs, kernel.outputs, body), stages, kept


def _as_global(stmt: Stmt, old: Buffer, new: Buffer) -> Stmt:
    """`stmt` with the allocated buffer `old` replaced by the parameter `new` (same name)."""
    if old == new:
        return stmt
    return rewrite_stmt(
        stmt, lambda e: Load(new, e.indices) if isinstance(e, Load) and e.buffer == old else None,
        lambda s: Store(new, s.indices, s.value, s.reduce) if isinstance(s, Store) and s.buffer == old else None)
