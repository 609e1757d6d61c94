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

from ..ir import Allocate, Binary, Buffer, Const, Expr, For, Load, Stmt, Store, Var, print_expr, rewrite, walk, walk_stmts
from ..ir.affine import affine_form
from ..ir.interval import index_bounds
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
    fuse makes) stands for `e`, which may pair again.
    """
    dims = list(indices)
    paired = True
    while paired:  # pairs of pairs too: three loops fused, `(f // 77) // 12, (f // 77) % 12, f % 77`
        paired = False
        for d in dims:
            if isinstance(d, Binary) and d.op == "floordiv":
                partner = Binary("mod", d.a, d.b)
                if partner in dims:
                    dims = [x for x in dims if x not in (d, partner)] + [d.a]
                    paired = True
                    break
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
        indices = _without_loads_of_unwritten(buffer, body, uses.indices, extents) if uses.loaded else uses.indices
        if _independent_writes(loop.var, indices, fixed, extents):
            continue
        idx = _single_index(buffer, Uses(indices, uses.stores, uses.loaded))
        if isinstance(idx, str):
            return idx
        return f"different iterations may write the same element {_show(buffer, idx)}"
    return None


def _without_loads_of_unwritten(buffer: Buffer, body: Stmt, indices, extents: dict[str, int]):
    """`indices` less the loads of elements that no store of `body` writes (their ranges apart
    in some dimension, over every value of the loops): such a load never sees another
    iteration's write (a halving `P[h] = max(P[h], P[h + 8])`, h < 8, reads the upper half only)."""
    stored = {s.indices for s in walk_stmts(body) if isinstance(s, Store) and s.buffer == buffer}
    written = [[index_bounds(e, extents) for e in idx] for idx in stored]

    def apart(idx) -> bool:
        read = [index_bounds(e, extents) for e in idx]
        return all(any(r is not None and w is not None and (r[1] < w[0] or w[1] < r[0])
                       for r, w in zip(read, bounds)) for bounds in written)
    return frozenset(idx for idx in indices if idx in stored or not apart(idx))


def _independent_writes(var: str, indices, fixed: set[str], extents: dict[str, int]) -> bool:
    """Whether different iterations of `var` write different elements through `indices`. A loop
    that fuse made (`f`, read as `f // n` and `f % n` only) is the pair of loops it came from:
    iterations differ in the outer part, or in the inner one with the outer fixed."""
    indices, fixed, extents = _fixed_parts(indices, fixed, extents)
    if _disjoint_along(var, indices, fixed, extents):
        return True
    if len(indices) == 1 and var in determined_vars(next(iter(indices)), extents):
        return True
    joined = _split_parts(var, indices, extents)
    if joined is not None:  # different iterations of `var` are different values of the whole
        whole, rewritten, joined_extents = joined
        return _independent_writes(whole, rewritten, fixed, joined_extents)
    parts = _fused_parts(var, indices, extents)
    if parts is None:
        return False
    hi, lo, split, split_extents = parts
    return (_independent_writes(hi, split, fixed, split_extents)
            and _independent_writes(lo, split, fixed | {hi}, split_extents))


def _split_parts(var: str, indices, extents: dict[str, int]):
    """`var` read only in `high * c + low`, low a loop of at most c iterations and var either of
    them (a split loop, often a fused one): the indices with that sum as one new variable, and
    its extent; None otherwise."""
    def whole_of(e: Expr):
        """(high loop, c) where `e` is high * c + low, low of at most c iterations, var either."""
        if isinstance(e, Binary) and e.op == "add":
            form = affine_form(e)
            if form is not None and form[1] == 0 and len(form[0]) == 2 and var in form[0]:
                (high, c), (low, one) = sorted(form[0].items(), key=lambda t: -t[1])
                if one == 1 and c > 1 and low in extents and extents[low] <= c:
                    return high, c
        return None
    sizes = {whole_of(e) for idx in indices for d in idx for e in walk(d)} - {None}
    if len(sizes) != 1:
        return None
    name = f"{var}.whole"

    def join(e: Expr) -> Expr | None:
        return Var(name) if whole_of(e) is not None else None
    rewritten = frozenset(tuple(rewrite(d, join) for d in idx) for idx in indices)
    if any(var in variables(idx) for idx in rewritten):
        return None
    ((high, c),) = sizes
    return name, rewritten, {**extents, name: extents.get(high, 1) * c}


def _fixed_parts(indices, fixed: set[str], extents: dict[str, int]):
    """`v // n` and `v % n` of loops around (fixed: each is one value for the loop asked about,
    as a fused outer loop's parts are) read as variables of their own, also fixed."""
    names: dict[Expr, str] = {}
    extents = dict(extents)

    def part(e: Expr) -> Expr | None:
        if (isinstance(e, Binary) and e.op in ("floordiv", "mod") and isinstance(e.a, Var) and e.a.name in fixed
                and isinstance(e.b, Const) and e.a.name in extents):
            name = names.setdefault(e, f"{e.a.name}.{e.op}{len(names)}")
            n = e.b.value
            extents[name] = -(-extents[e.a.name] // n) if e.op == "floordiv" else n
            return Var(name)
        return None
    split = frozenset(tuple(rewrite(d, part) for d in idx) for idx in indices)
    if not names:
        return indices, fixed, extents
    return split, fixed | set(names.values()), extents


def _fused_parts(var: str, indices, extents: dict[str, int]):
    """`var` read only as `var // n` and `var % n` (one n): the indices with those replaced by
    two new variables (hi, lo), and their extents; None otherwise."""
    divisors = {e.b.value for idx in indices for d in idx for e in walk(d)
                if isinstance(e, Binary) and e.op in ("floordiv", "mod") and e.a == Var(var)
                and isinstance(e.b, Const)}
    if len(divisors) != 1:
        return None
    (n,) = divisors
    hi, lo = f"{var}.hi", f"{var}.lo"

    def part(e: Expr) -> Expr | None:
        if isinstance(e, Binary) and e.op in ("floordiv", "mod") and e.a == Var(var):
            return Var(hi if e.op == "floordiv" else lo)
        return None
    split = frozenset(tuple(rewrite(d, part) for d in idx) for idx in indices)
    if any(var in variables(idx) for idx in split):
        return None
    return hi, lo, split, {**extents, hi: -(-extents[var] // n), lo: n}


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
