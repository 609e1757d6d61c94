"""Features of a scheduled kernel for the cost model, in the spirit of Ansor's.

Every Store statement gets one fixed-length vector describing
- the loop nest around it: execution count, depth, extents of the innermost loops, and per
  annotation (parallel, vectorized, unrolled, GPU block/thread) the product of extents, the
  number of loops and where they sit; `if` guards (how many, inside the vector loop or not, the
  estimated fraction of iterations that pass them); local buffers allocated in scope;
- arithmetic: operation counts by kind, float and integer apart, times the execution count;
- its buffer accesses (the stored buffer first, then up to N_ACCESSES - 1 distinct loads,
  most bytes touched first): scope, strides of the innermost and of the vectorized loop, and
  at each level of the nest (innermost 1..4 loops, whole nest) the bytes and cache lines
  touched and the reuse (iterations / distinct elements); Ansor's reuse distance (iterations
  and bytes inside the innermost loop the access does not depend on).

Numbers are log-scaled, log2(1 + x). `kernel_features` aggregates the raw statement vectors:
the sum over statements (totals: work, bytes, flags become counts), the maximum, and the full
vector of the heaviest statement (execution count × work per iteration), which in a tiled
kernel is the hot loop whose structure decides the speed.

Index expressions are read as affine forms where they are (every conv, matmul, pool and
elementwise op); other index dimensions (fused loops' `f // c`, `f % c`, data-dependent loads)
fall back to interval arithmetic, which over-approximates ranges but never fails.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..ir import (Allocate, Binary, Buffer, Call, Cast, Compare, Const, Expr, For, If, Kernel, Load,
                  Logic, Not, Select, Seq, Stmt, Store, Var)
from ..ir import itemsize as _itemsize
from ..ir.affine import affine_form

itemsize = functools.cache(_itemsize)

N_ACCESSES = 5            # accessed buffers described per statement (store + loads)
LEVELS = (1, 2, 3, 4, 0)  # innermost loops varying for footprint / reuse; 0: the whole nest
CACHE_LINE = 64           # bytes
UNKNOWN = 1 << 20         # stride of an index that is not affine (data-dependent)

# arithmetic categories; intrinsics are 'cheap' (one instruction) or 'math' (a libm call)
OPS = ("f_add", "f_mul", "f_div", "f_minmax", "f_cmp", "f_math", "f_cheap", "select", "cast",
       "i_add", "i_mul", "i_divmod", "i_minmax", "i_cmp", "logic")
_OP = {name: n for n, name in enumerate(OPS)}
_FLOAT_BINARY = {"add": "f_add", "sub": "f_add", "mul": "f_mul", "div": "f_div", "floordiv": "f_div",
                 "mod": "f_div", "min": "f_minmax", "max": "f_minmax"}
_INT_BINARY = {"add": "i_add", "sub": "i_add", "mul": "i_mul", "div": "i_divmod",
               "floordiv": "i_divmod", "mod": "i_divmod", "min": "i_minmax", "max": "i_minmax"}
_CHEAP = {"abs", "floor", "ceil", "round", "neg"}
_REDUCE_OP = {"add": "f_add", "mul": "f_mul", "max": "f_minmax", "min": "f_minmax"}

LOOP_NAMES = [
    "count", "exec", "depth", "reduce_loops", "reduce_iters",
    "extent_in1", "extent_in2", "extent_in3", "extent_in4",
    "par_prod", "par_loops", "par_launches", "par_task_iters",
    "vec_len", "vec_loops", "vec_innermost", "vec_inner_loops",
    "unroll_prod", "unroll_loops", "unroll_in1", "unroll_innermost",
    "gpu_block_prod", "gpu_thread_prod",
    "guards", "guard_in_vec", "guard_fraction",
    "is_reduce", "reduce_minmax",
    "local_alloc_bytes", "local_allocs", "shared_alloc_bytes", "global_alloc_bytes",
]
ARITH_NAMES = [f"{op}" for op in OPS] + ["float_per_iter", "int_per_iter", "float_vector_instrs"]
ACCESS_NAMES = (
    ["present", "is_store", "read_write", "global", "local", "shared", "itemsize", "buffer_bytes",
     "stride_in1", "stride_vec", "unit_in1", "zero_in1", "unit_vec", "zero_vec",
     "stride_nonzero", "nonzero_depth", "unknown_index"]
    + [f"{what}_L{level or 'all'}" for level in LEVELS for what in ("bytes", "lines", "reuse")]
    + ["reuse_dist_iters", "reuse_dist_bytes", "reuse_count"])
STATEMENT_NAMES = ([f"loop.{n}" for n in LOOP_NAMES] + [f"arith.{n}" for n in ARITH_NAMES]
                   + [f"acc{a}.{n}" for a in range(N_ACCESSES) for n in ACCESS_NAMES])
FEATURE_NAMES = ([f"sum.{n}" for n in STATEMENT_NAMES] + [f"max.{n}" for n in STATEMENT_NAMES]
                 + [f"top.{n}" for n in STATEMENT_NAMES])
_EXEC = STATEMENT_NAMES.index("loop.exec")
_FLOAT_PER_ITER = STATEMENT_NAMES.index("arith.float_per_iter")
_INT_PER_ITER = STATEMENT_NAMES.index("arith.int_per_iter")


def log_scale(x):
    return np.log2(1.0 + np.abs(x))


def statement_features(kernel: Kernel) -> list[np.ndarray]:
    """One log-scaled vector (len(STATEMENT_NAMES)) per Store statement, in program order."""
    return [log_scale(r) for r in _raw_statements(kernel)]


def kernel_features(kernel: Kernel) -> np.ndarray:
    """sum, max and heaviest statement's features (see the module doc); len(FEATURE_NAMES)."""
    raw = _raw_statements(kernel)
    if not raw:
        return np.zeros(len(FEATURE_NAMES))
    rows = np.array(raw)
    weight = rows[:, _EXEC] * (1.0 + rows[:, _FLOAT_PER_ITER] + 0.25 * rows[:, _INT_PER_ITER])
    return np.concatenate([log_scale(rows.sum(0)), log_scale(rows).max(0),
                           log_scale(rows[int(np.argmax(weight))])])


# -- walking the kernel ---------------------------------------------------------------------

def _raw_statements(kernel: Kernel) -> list[list[float]]:
    out: list[list[float]] = []

    def go(s: Stmt, loops: tuple, guards: tuple, allocs: tuple) -> None:
        if isinstance(s, For):
            go(s.body, loops + (s,), guards, allocs)
        elif isinstance(s, Store):
            out.append(_statement(s, loops, guards, allocs))
        elif isinstance(s, Seq):
            for x in s.stmts:
                go(x, loops, guards, allocs)
        elif isinstance(s, If):
            go(s.then, loops, guards + ((s.cond, len(loops)),), allocs)
            if s.otherwise is not None:
                go(s.otherwise, loops, guards + ((Not(s.cond), len(loops)),), allocs)
        elif isinstance(s, Allocate):
            go(s.body, loops, guards, allocs + (s.buffer,))
    go(kernel.body, (), (), ())
    return out


def _statement(s: Store, loops: tuple[For, ...], guards: tuple, allocs: tuple[Buffer, ...]) -> list[float]:
    exec_count = math.prod(l.extent for l in loops)
    vec = next((n for n in range(len(loops) - 1, -1, -1) if loops[n].kind == "vectorized"), None)
    loop = _loop_features(s, loops, guards, allocs, exec_count, vec)
    vec_len = loops[vec].extent if vec is not None else 1
    arith = _arith_features(s, guards, exec_count, vec_len)
    accesses = [_access(s.buffer, s.indices, loops, vec, True, s.reduce is not None)]
    seen = {(s.buffer.name, s.indices)}
    loaded = []
    _collect_loads(s.value, loaded)
    for ld in loaded:
        key = (ld.buffer.name, ld.indices)
        if key in seen:
            if key == (s.buffer.name, s.indices):
                accesses[0][2] = 1.0  # `Y[i] = Y[i] + ...`: a read-modify-write
            continue
        seen.add(key)
        accesses.append(_access(ld.buffer, ld.indices, loops, vec, False, False))
    byte_col = ACCESS_NAMES.index("bytes_Lall")
    rows = [accesses[0]] + sorted(accesses[1:], key=lambda a: -a[byte_col])
    rows = rows[:N_ACCESSES] + [[0.0] * len(ACCESS_NAMES)] * (N_ACCESSES - len(rows))
    return loop + arith + [x for r in rows for x in r]


def _collect_loads(e: Expr, out: list) -> None:
    if isinstance(e, Load):
        out.append(e)
        for i in e.indices:
            _collect_loads(i, out)
        return
    for k in _children(e):
        _collect_loads(k, out)


def _children(e: Expr) -> tuple:
    t = type(e)
    if t is Binary or t is Compare or t is Logic:
        return (e.a, e.b)
    if t is Call:
        return e.args
    if t is Select:
        return (e.cond, e.t, e.f)
    if t is Cast:
        return (e.value,)
    if t is Not:
        return (e.a,)
    if t is Load:
        return e.indices
    return ()


# -- loops ----------------------------------------------------------------------------------

def _loop_features(s: Store, loops, guards, allocs, exec_count: int, vec: int | None) -> list[float]:
    depth = len(loops)
    ext = [l.extent for l in loops]
    inner = [ext[depth - n] if depth >= n else 0 for n in (1, 2, 3, 4)]
    reduce_iters = math.prod(l.extent for l in loops if l.axis == "reduce")
    par = [n for n, l in enumerate(loops) if l.kind == "parallel"]
    par_prod = math.prod(ext[n] for n in par)
    par_launches = math.prod(ext[:par[0]]) if par else 0
    vecs = [n for n, l in enumerate(loops) if l.kind == "vectorized"]
    unrolled = [n for n, l in enumerate(loops) if l.kind == "unrolled"]
    block = math.prod(l.extent for l in loops if l.kind.startswith("blockIdx"))
    thread = math.prod(l.extent for l in loops if l.kind.startswith("threadIdx"))
    guard_in_vec = float(vec is not None and any(at > vec for _, at in guards))
    fraction = 1.0
    ranges = {l.var: l.extent for l in loops}
    for cond, _ in guards:
        fraction *= _pass_fraction(cond, ranges)
    local = [b for b in allocs if b.scope == "local"]
    return [
        1.0, exec_count, depth, sum(l.axis == "reduce" for l in loops), reduce_iters, *inner,
        par_prod, len(par), par_launches, exec_count / par_prod if par else 0,
        ext[vec] if vec is not None else 0, len(vecs), float(vec == depth - 1 and vec is not None),
        depth - 1 - vec if vec is not None else 0,
        math.prod(ext[n] for n in unrolled), len(unrolled), ext[unrolled[-1]] if unrolled else 0,
        float(bool(unrolled) and unrolled[-1] == depth - 1),
        block if block > 1 else 0, thread if thread > 1 else 0,
        len(guards), guard_in_vec, fraction,
        float(s.reduce is not None), float(s.reduce in ("max", "min")),
        sum(_nbytes(b) for b in local), len(local),
        sum(_nbytes(b) for b in allocs if b.scope == "shared"),
        sum(_nbytes(b) for b in allocs if b.scope == "global"),
    ]


def _pass_fraction(cond: Expr, ranges: dict[str, int]) -> float:
    """The fraction of iterations for which a guard holds, assuming uniform independent loops."""
    if isinstance(cond, Logic):
        a, b = _pass_fraction(cond.a, ranges), _pass_fraction(cond.b, ranges)
        return a * b if cond.op == "and" else a + b - a * b
    if isinstance(cond, Not):
        return 1.0 - _pass_fraction(cond.a, ranges)
    if not isinstance(cond, Compare):
        return 0.5
    diff = Binary("sub", cond.a, cond.b)
    form = affine_form(diff)
    if form is not None:
        lo = hi = form[1]
        for v, c in form[0].items():
            reach = c * (ranges.get(v, 1) - 1)
            lo, hi = (lo + reach, hi) if reach < 0 else (lo, hi + reach)
    else:
        lo, hi = _interval(diff, ranges)
    if lo is None:
        return 0.5
    span = hi - lo + 1
    below = lambda x: min(max((x - lo) / span, 0.0), 1.0)  # fraction of values < x
    return {"lt": below(0), "le": below(1), "gt": 1 - below(1), "ge": 1 - below(0),
            "eq": below(1) - below(0), "ne": 1 - (below(1) - below(0))}[cond.op]


# -- arithmetic -----------------------------------------------------------------------------

def _arith_features(s: Store, guards, exec_count: int, vec_len: int) -> list[float]:
    counts = [0] * len(OPS)
    _count_ops(s.value, counts)
    for i in s.indices:
        _count_ops(i, counts)
    for cond, _ in guards:
        _count_ops(cond, counts)
    if s.reduce is not None:
        counts[_OP[_REDUCE_OP[s.reduce]]] += 1
    n_float = sum(counts[:_OP["select"]])
    n_int = sum(counts[_OP["i_add"]:])
    return ([c * exec_count for c in counts]
            + [n_float, n_int, n_float * exec_count / vec_len])


def _count_ops(e: Expr, counts: list[int]) -> None:
    t = type(e)
    if t is Binary:
        table = _INT_BINARY if e.a.dtype.startswith(("int", "uint", "bool")) else _FLOAT_BINARY
        counts[_OP[table[e.op]]] += 1
    elif t is Compare:
        counts[_OP["i_cmp" if e.a.dtype.startswith(("int", "uint", "bool")) else "f_cmp"]] += 1
    elif t is Call:
        if e.args[0].dtype.startswith(("int", "uint")):
            counts[_OP["i_add"]] += 1
        else:
            counts[_OP["f_cheap" if e.fn in _CHEAP else "f_math"]] += 1
    elif t is Select:
        counts[_OP["select"]] += 1
    elif t is Cast:
        counts[_OP["cast"]] += 1
    elif t is Logic or t is Not:
        counts[_OP["logic"]] += 1
    for k in _children(e):
        _count_ops(k, counts)


# -- buffer accesses ------------------------------------------------------------------------

def _nbytes(b: Buffer) -> int:
    return b.size * itemsize(b.dtype)


def _interval(e: Expr, ranges: dict[str, int]):
    """(lo, hi) of an integer expression with each variable in `ranges` over 0..extent-1 and
    every other variable at 0; (None, None) when unknown (loads, float arithmetic)."""
    t = type(e)
    if t is Var:
        return 0, ranges.get(e.name, 1) - 1
    if t is Const:
        return (e.value, e.value) if type(e.value) is int else (None, None)
    if t is not Binary:
        return None, None
    (alo, ahi), (blo, bhi) = _interval(e.a, ranges), _interval(e.b, ranges)
    if alo is None or blo is None:
        return None, None
    op = e.op
    if op == "add":
        return alo + blo, ahi + bhi
    if op == "sub":
        return alo - bhi, ahi - blo
    if op == "mul":
        p = (alo * blo, alo * bhi, ahi * blo, ahi * bhi)
        return min(p), max(p)
    if op in ("floordiv", "div") and blo == bhi and blo > 0:
        return alo // blo, ahi // blo
    if op == "mod" and blo == bhi and blo > 0:
        return (alo % blo, ahi % blo) if ahi // blo == alo // blo else (0, blo - 1)
    if op == "min":
        return min(alo, blo), min(ahi, bhi)
    if op == "max":
        return max(alo, blo), max(ahi, bhi)
    return None, None


def _vars(e: Expr, out: set) -> set:
    if type(e) is Var:
        out.add(e.name)
    for k in _children(e):
        _vars(k, out)
    return out


def _step(expr: Expr, var: str) -> int:
    """How far a non-affine index moves when `var` steps from 0 to 1 (others at 0)."""
    lo0, hi0 = _interval(expr, {})
    lo1, hi1 = _interval(expr, {var: 2})
    return UNKNOWN if lo0 is None or lo1 is None else hi1 - hi0


def _access(buf: Buffer, indices, loops, vec, is_store: bool, rw: bool) -> list[float]:
    isz = itemsize(buf.dtype)
    shape = buf.shape
    ndim = len(indices)
    extent = [shape[d] if d < len(shape) else 1 for d in range(ndim)]
    row = [math.prod(shape[d + 1:]) for d in range(ndim)]
    # var -> [(dim, |coefficient|)] of the affine dims; the other dims get interval arithmetic
    affine_uses: dict[str, list] = {}
    others = []        # (dim, expr, vars, interval known)
    flat: dict[str, int] = {}  # var -> elements the access moves when it steps by one
    known = True
    for d, e in enumerate(indices):
        form = affine_form(e)
        if form is not None:
            for v, c in form[0].items():
                if c:
                    affine_uses.setdefault(v, []).append((d, abs(c)))
                    flat[v] = flat.get(v, 0) + c * row[d]
        else:
            names = _vars(e, set())
            ok = _interval(e, {}) != (None, None)
            known = known and ok
            others.append((d, e, names, ok))
            for v in names:
                flat[v] = flat.get(v, 0) + _step(e, v) * row[d]
    used = set(affine_uses).union(*(names for _, _, names, _ in others))

    depth = len(loops)
    s_in = abs(flat.get(loops[-1].var, 0)) if loops else 0
    s_vec = abs(flat.get(loops[vec].var, 0)) if vec is not None else 0
    nonzero, nz_depth = 0, 0
    for n in range(depth - 1, -1, -1):
        if flat.get(loops[n].var, 0):
            nonzero, nz_depth = abs(flat[loops[n].var]), depth - 1 - n
            break

    width = [1] * ndim   # range of each dimension over the loops swept so far (affine dims)
    count = [1] * ndim   # iterations of the swept loops that dimension reads
    inner: dict[str, int] = {}
    cap = 1              # iterations of the swept loops the access depends on

    def footprint() -> tuple[int, int]:
        """(distinct elements, cache lines) touched while the swept loops run."""
        if not ndim:
            return 1, 1
        w = list(width)
        for d, e, names, ok in others:
            lo, hi = _interval(e, inner) if ok else (None, None)
            w[d] = extent[d] if lo is None else hi - lo + 1
            count[d] = math.prod(inner[v] for v in names if v in inner)
        spans = [max(1, min(w[d], extent[d], count[d])) for d in range(ndim)]
        distinct = min(math.prod(spans), cap)
        last = max(1, min(w[-1], extent[-1]))
        lines = min(spans[-1], -(-last * isz // CACHE_LINE)) * math.prod(spans[:-1])
        return distinct, min(distinct, lines)

    reuse = [0, 0, 0]
    iters = 1
    wanted = {(depth if lv == 0 else min(lv, depth)) for lv in LEVELS}
    results = {0: (1, 1, 1.0)}
    for n in range(depth - 1, -1, -1):
        var, ext = loops[n].var, loops[n].extent
        if not reuse[2] and var not in used and ext > 1:
            reuse = [iters, footprint()[0] * isz, ext]
        for d, c in affine_uses.get(var, ()):
            width[d] += c * (ext - 1)
            count[d] *= ext
        if var in used:
            cap *= ext
        inner[var] = ext
        iters *= ext
        if depth - n in wanted:
            distinct, lines = footprint()
            results[depth - n] = (distinct, lines, iters / distinct)
    levels = []
    for lv in LEVELS:
        distinct, lines, r = results[depth if lv == 0 else min(lv, depth)]
        levels += [distinct * isz, lines, r]
    scope = buf.scope
    return [1.0, float(is_store), float(rw), float(scope == "global"), float(scope == "local"),
            float(scope == "shared"), isz, _nbytes(buf),
            s_in, s_vec, float(s_in == 1), float(s_in == 0 and bool(loops)),
            float(s_vec == 1), float(s_vec == 0 and vec is not None),
            nonzero, nz_depth, float(not known), *levels, *reuse]
