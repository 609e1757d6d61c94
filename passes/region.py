"""The part of a buffer that a loop body touches, from the affine indices of its accesses.

Inside a loop `L`, an index such as `i0_o * 4 + i0_i` splits into a part fixed for one iteration
of L (the loops around the body: `i0_o * 4`) and a part that varies inside it (loops in the body:
`i0_i`). Per dimension the region is `base + [lo, hi]`, with `base` the fixed part: it is what
cache_read, cache_write and compute_at copy or compute once per iteration of L.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import (Binary, Buffer, Const, Expr, For, Load, Stmt, Store, Var, ge, logical_and, lt,
                  walk, walk_stmts)
from ..ir.visit import stmt_exprs
from ..ir.affine import affine_form

Affine = tuple[dict[str, int], int]  # ({var: coefficient}, constant)


def affine_expr(coefs: dict[str, int], const: int = 0) -> Expr:
    """`sum(c * v) + const`, written the way a person would (`i * 4 + j - 1`)."""
    out: Expr | None = None
    for var, c in coefs.items():
        if c == 0:
            continue
        term = Var(var) if abs(c) == 1 else Var(var) * abs(c)
        out = (term if c > 0 else Const(0) - term) if out is None else (out + term if c > 0 else out - term)
    if out is None:
        return Const(const)
    return out + const if const > 0 else out - (-const) if const < 0 else out


def accesses(body: Stmt, buffer: Buffer) -> tuple[list[Store], list[Load]]:
    """Stores to and loads of `buffer` in `body` (by name: a buffer is one name in a kernel)."""
    stores, found = [], []
    for s in walk_stmts(body):
        if isinstance(s, Store) and s.buffer.name == buffer.name:
            stores.append(s)
        for e in stmt_exprs(s):
            found += [x for x in walk(e) if isinstance(x, Load) and x.buffer.name == buffer.name]
    return stores, found


def inner_extents(body: Stmt) -> dict[str, int]:
    """Extents of the loops in `body` (the largest where sibling loops share a name)."""
    out: dict[str, int] = {}
    for s in walk_stmts(body):
        if isinstance(s, For):
            out[s.var] = max(s.extent, out.get(s.var, 0))
    return out


@dataclass(frozen=True)
class Region:
    """`buffer[base_d + lo_d : base_d + lo_d + extent_d]` per dimension d; `base` is affine in
    the variables fixed per iteration."""
    buffer: Buffer
    base: tuple[dict[str, int], ...]
    lo: tuple[int, ...]
    extents: tuple[int, ...]

    def start(self, d: int, offset: Expr | int = 0) -> Expr:
        """The buffer index of element `offset` of the region along dimension d."""
        start = affine_expr(self.base[d], self.lo[d])
        if isinstance(offset, int):
            return affine_expr(self.base[d], self.lo[d] + offset)
        return offset if start == Const(0) else start + offset

    def bounds_guard(self, offsets: list[Expr], outer: dict[str, int]) -> Expr | None:
        """A condition keeping `start(d, offsets[d])` inside the buffer, or None when it provably
        is for every value of the variables fixed per iteration (`outer`: their extents)."""
        conds = []
        for d, (coefs, lo, n, size) in enumerate(zip(self.base, self.lo, self.extents, self.buffer.shape)):
            low = lo + sum(min(0, c * (outer.get(v, 1) - 1)) for v, c in coefs.items())
            high = lo + n - 1 + sum(max(0, c * (outer.get(v, 1) - 1)) for v, c in coefs.items())
            if any(v not in outer for v in coefs):
                low, high = -1, size  # unknown range: guard both ends
            index = self.start(d, offsets[d])
            if low < 0:
                conds.append(ge(index, 0))
            if high >= size:
                conds.append(lt(index, size))
        return logical_and(*conds) if conds else None


def split_index(e: Expr, inner: dict[str, int]) -> tuple[dict[str, int], dict[str, int], int] | None:
    """An affine index as (fixed coefficients, varying coefficients, constant), or None."""
    form = affine_form(e)
    if form is None:
        return None
    coefs, const = form
    fixed = {v: c for v, c in coefs.items() if v not in inner and c}
    varying = {v: c for v, c in coefs.items() if v in inner and c}
    return fixed, varying, const


def region_of(buffer: Buffer, indices: list[tuple[Expr, ...]], inner: dict[str, int]) -> Region | str:
    """The region the index tuples cover as the `inner` loops run, or why it cannot be known."""
    base: list[dict[str, int] | None] = [None] * len(buffer.shape)
    lo = [None] * len(buffer.shape)
    hi = [None] * len(buffer.shape)
    for idx in indices:
        for d, e in enumerate(idx):
            parts = split_index(e, inner)
            if parts is None:
                return f"index {d} of {buffer.name} is not affine in the loop variables"
            fixed, varying, const = parts
            if base[d] is None:
                base[d] = fixed
            elif base[d] != fixed:
                return (f"{buffer.name} is accessed at different positions along dimension {d} "
                        f"within one iteration")
            low = const + sum(min(0, c * (inner[v] - 1)) for v, c in varying.items())
            high = const + sum(max(0, c * (inner[v] - 1)) for v, c in varying.items())
            lo[d] = low if lo[d] is None else min(lo[d], low)
            hi[d] = high if hi[d] is None else max(hi[d], high)
    extents = tuple(h - l + 1 for l, h in zip(lo, hi))
    return Region(buffer, tuple(base), tuple(lo), extents)


def local_index(region: Region, idx: tuple[Expr, ...], inner: dict[str, int]) -> tuple[Expr, ...]:
    """`idx` (an access inside the body) relative to the region's start."""
    out = []
    for d, e in enumerate(idx):
        _, varying, const = split_index(e, inner)
        out.append(affine_expr(varying, const - region.lo[d]))
    return tuple(out)


def simplify_divmod(e: Expr, extents: dict[str, int]) -> Expr:
    """Rewrite `(a * f + b) // f` to `a` and `(a * f + b) % f` to `b` when `0 <= b < f` for the
    loop extents given: what indexing a packed layout produces after tiling by its factor."""
    if not (isinstance(e, Binary) and e.op in ("floordiv", "mod") and isinstance(e.b, Const)):
        return e
    f, form = e.b.value, affine_form(e.a)
    if form is None or not isinstance(f, int) or f <= 0 or any(v not in extents for v in form[0]):
        return e
    coefs, const = form
    whole = {v: c // f for v, c in coefs.items() if c % f == 0}
    rest = {v: c for v, c in coefs.items() if c % f}
    low = const % f + sum(min(0, c * (extents[v] - 1)) for v, c in rest.items())
    high = const % f + sum(max(0, c * (extents[v] - 1)) for v, c in rest.items())
    if low < 0 or high >= f:
        return e
    if e.op == "floordiv":
        return affine_expr(whole, const // f)
    return affine_expr(rest, const % f)
