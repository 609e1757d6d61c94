"""Dependence analysis for the legality of reorder, tile, parallel, vectorize and bind.

Deliberately simple and conservative. For the statements a transformation reorders, every buffer
they write (other than buffers allocated inside them) must be accessed through one index tuple
only, so each iteration touches one element per buffer (or, with inner loops, a set of elements).
Two iterations then conflict only if that tuple takes the same value for both; we prove it does
not with an injectivity test of the tuple (affine, mixed-radix coefficients). Buffers updated only
by reduction stores of one operator, and never read otherwise, may be updated in any order.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Allocate, Binary, Buffer, Const, Expr, For, Load, Stmt, Store, print_expr, walk, walk_stmts
from ..ir.affine import affine_form
from ..ir.visit import stmt_exprs, variables


@dataclass(frozen=True)
class Uses:
    """How a statement uses one buffer it writes."""
    indices: frozenset[tuple[Expr, ...]]  # every index tuple it is stored or loaded at
    stores: frozenset[str | None]          # store operators: None for `=`, else the reduction op
    loaded: bool                           # read by an explicit load

    @property
    def reduce_only(self) -> bool:
        """Only `op=` updates of a single op: their order does not matter (up to rounding)."""
        return not self.loaded and len(self.stores) == 1 and None not in self.stores

    def index(self) -> tuple[Expr, ...] | None:
        return next(iter(self.indices)) if len(self.indices) == 1 else None


def written_uses(body: Stmt) -> dict[Buffer, Uses]:
    local = {s.buffer for s in walk_stmts(body) if isinstance(s, Allocate)}
    indices: dict[Buffer, set] = {}
    stores: dict[Buffer, set] = {}
    loaded: set[Buffer] = set()
    for s in walk_stmts(body):
        if isinstance(s, Store) and s.buffer not in local:
            indices.setdefault(s.buffer, set()).add(s.indices)
            stores.setdefault(s.buffer, set()).add(s.reduce)
    for s in walk_stmts(body):
        for e in stmt_exprs(s):
            for load in walk(e):
                if isinstance(load, Load) and load.buffer in stores:
                    indices[load.buffer].add(load.indices)
                    loaded.add(load.buffer)
    return {b: Uses(frozenset(indices[b]), frozenset(stores[b]), b in loaded) for b in stores}


def loop_extents(outer, body: Stmt) -> dict[str, int]:
    """Extents of the enclosing loops and of every loop in `body`; the largest where names repeat
    (a larger range only makes the injectivity test stricter)."""
    extents: dict[str, int] = {}
    for loop in list(outer) + [s for s in walk_stmts(body) if isinstance(s, For)]:
        extents[loop.var] = max(loop.extent, extents.get(loop.var, 0))
    return extents


def determined_vars(indices: tuple[Expr, ...], extents: dict[str, int]) -> set[str]:
    """Variables whose values the index tuple determines: x, y with equal indices agree on them.

    A dimension determines its variables when it is affine with mixed-radix coefficients (each
    larger than the span of all smaller terms). A pair of dimensions `e // c`, `e % c` (what
    fuse makes) stands for `e`.
    """
    dims = list(indices)
    for d in indices:
        if isinstance(d, Binary) and d.op == "floordiv":
            partner = Binary("mod", d.a, d.b)
            if partner in dims:
                dims = [x for x in dims if x not in (d, partner)] + [d.a]
    out: set[str] = set()
    for d in dims:
        form = affine_form(d)
        if form is None:
            continue
        terms = sorted(((abs(c), v) for v, c in form[0].items() if c), key=lambda t: t[0])
        if any(v not in extents for _, v in terms):
            continue
        out |= {v for _, v in terms if extents[v] == 1}  # a loop of one iteration is always 0
        terms = [(c, v) for c, v in terms if extents[v] > 1]
        span = 0
        for c, v in terms:
            if c <= span:
                break
            span += c * (extents[v] - 1)
        else:
            out |= {v for _, v in terms}
    return out


def _show(buffer: Buffer, indices) -> str:
    return f"{buffer.name}[{', '.join(print_expr(i) for i in indices)}]"


def _single_index(buffer: Buffer, uses: Uses) -> tuple[Expr, ...] | str:
    idx = uses.index()
    if idx is None:
        a, b = sorted(_show(buffer, i) for i in uses.indices)[:2]
        return f"{buffer.name} is accessed at different indices ({a} and {b})"
    return idx


def independence_problem(loop: For, outer, body: Stmt | None = None) -> str | None:
    """Why iterations of `loop` might touch a common element of a written buffer, or None when
    they are independent (may run in parallel or in lockstep). `body` defaults to the loop's."""
    body = loop.body if body is None else body
    extents = loop_extents(list(outer) + [loop], body)
    fixed = {l.var for l in outer}
    for buffer, uses in written_uses(body).items():
        if _disjoint_along(loop.var, uses.indices, fixed, extents):
            continue
        idx = _single_index(buffer, uses)
        if isinstance(idx, str):
            return idx
        if loop.var not in determined_vars(idx, extents):
            return f"different iterations may write the same element {_show(buffer, idx)}"
    return None


def _disjoint_along(var: str, indices, fixed: set[str], extents: dict[str, int]) -> bool:
    """Whether some dimension reads `c * var + (the same expression of the loops around) + (a
    part spread over fewer than |c| values)` in every index tuple: then each iteration of `var`
    has its own slice of that dimension (the tile copies of cache_read / cache_write)."""
    forms = [[affine_form(e) for e in idx] for idx in indices]
    for d in range(len(next(iter(indices)))):
        dims = [f[d] for f in forms]
        if any(x is None for x in dims):
            continue
        c = dims[0][0].get(var, 0)
        around = {v: k for v, k in dims[0][0].items() if v in fixed and k}
        lo, hi = None, None
        for coefs, const in dims:
            if coefs.get(var, 0) != c or {v: k for v, k in coefs.items() if v in fixed and k} != around:
                break
            inner = {v: k for v, k in coefs.items() if v != var and v not in fixed}
            if any(v not in extents for v in inner):
                break
            low = const + sum(min(0, k * (extents[v] - 1)) for v, k in inner.items())
            high = const + sum(max(0, k * (extents[v] - 1)) for v, k in inner.items())
            lo, hi = (low, high) if lo is None else (min(lo, low), max(hi, high))
        else:
            if c and hi - lo < abs(c):
                return True
    return False


def reorder_problem(old: dict[str, int], new: list[str], body: Stmt, outer) -> str | None:
    """Why executing the perfect band `old` (var -> extent, outer to inner, around `body`) in the
    loop order `new` might change the result, or None when it is legal.

    Iterations touching different elements commute. Iterations touching the same element of a
    buffer differ only in the band loops absent from its index (once the index is known to
    determine the others): those must keep their relative order, except for reduce-only buffers.
    """
    extents = {**loop_extents(outer, body), **old}
    for buffer, uses in written_uses(body).items():
        if uses.reduce_only:
            continue  # accepted: reassociation of the reduction (see loops.Reorder)
        idx = _single_index(buffer, uses)
        if isinstance(idx, str):
            return idx
        used = variables(idx)
        unproven = [v for v in old if v in used and v not in determined_vars(idx, extents)]
        if unproven:
            return (f"{_show(buffer, idx)} may be the same element for different iterations of "
                    f"{', '.join(unproven)}")
        repeated = [v for v in old if v not in used]
        if [v for v in new if v in repeated] != repeated:
            return (f"{_show(buffer, idx)} is not a pure reduction and is updated again in each "
                    f"iteration of {', '.join(repeated)}, whose order must be kept")
    return None
