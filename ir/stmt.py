"""Statements and kernels of the Nestor IR (immutable, like expressions)."""
from __future__ import annotations

from dataclasses import dataclass

from .expr import Buffer, Expr, Var

# Loop kinds. GPU bindings are written as the thread axis they bind to.
LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled",
              "blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z")
AXES = ("spatial", "reduce")
# Reduction stores: `Y[i] += v` is Store(Y, (i,), v, reduce="add").
REDUCE_OPS = ("add", "mul", "max", "min")


class Stmt:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class For(Stmt):
    """`for var in 0..extent`. `axis` says whether the loop walks output positions ('spatial') or
    accumulates into them ('reduce'); reorder and fusion legality depend on it."""
    var: str
    extent: int
    body: Stmt
    kind: str = "serial"
    axis: str = "spatial"

    @property
    def loop_var(self) -> Var:
        return Var(self.var)


@dataclass(frozen=True, slots=True)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr
    reduce: str | None = None


@dataclass(frozen=True, slots=True)
class Seq(Stmt):
    stmts: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class If(Stmt):
    cond: Expr
    then: Stmt
    otherwise: Stmt | None = None


@dataclass(frozen=True, slots=True)
class Allocate(Stmt):
    """A local (or shared) buffer that lives for the duration of `body`."""
    buffer: Buffer
    body: Stmt


@dataclass(frozen=True, slots=True)
class Kernel:
    """A loop nest over named buffers: reads `inputs`, writes `outputs` (distinct buffers)."""
    name: str
    inputs: tuple[Buffer, ...]
    outputs: tuple[Buffer, ...]
    body: Stmt

    @property
    def params(self) -> tuple[Buffer, ...]:
        return self.inputs + self.outputs


def seq(*stmts: Stmt) -> Stmt:
    """A Seq with nested Seqs flattened; a single statement stays itself."""
    flat: list[Stmt] = []
    for s in stmts:
        if s is None:
            continue
        flat.extend(s.stmts if isinstance(s, Seq) else (s,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def store(buffer: Buffer, indices, value, reduce: str | None = None) -> Store:
    from .expr import as_expr
    if not isinstance(indices, (tuple, list)):
        indices = (indices,)
    return Store(buffer, tuple(as_expr(i) for i in indices), as_expr(value, buffer.dtype), reduce)


def loop_nest(extents, body_fn, prefix: str = "i", axis: str = "spatial", names=None) -> Stmt:
    """A perfect nest of loops over `extents`; `body_fn(*vars)` builds the innermost statement.

    Loops are named prefix0, prefix1, ... unless `names` are given.
    """
    names = list(names) if names is not None else [f"{prefix}{d}" for d in range(len(extents))]
    body = body_fn(*[Var(n) for n in names])
    for name, extent in reversed(list(zip(names, extents))):
        body = For(name, int(extent), body, axis=axis)
    return body
