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
  and bytes inside the innermost loop the access does not depend on);
- how the schedule fits the target (MachineParams): vector registers and lanes in use, parallel
  tasks per core, accumulator registers, flops per byte (ShapeFeatures), and, over every loop
  level, how far out the working set fits each cache and the traffic that follows (CacheFeatures).

Each group is a dataclass whose fields are the features' names (as Halide's Featurization.h
names every feature): `named_statement_features` returns them, and the vectors and
STATEMENT_NAMES / FEATURE_NAMES are both read off the same fields, so they cannot drift apart.

Numbers are log-scaled, log2(1 + x). `kernel_features` aggregates the raw statement vectors:
the sum over statements (totals: work, bytes, flags become counts), the maximum, and the full
vector of the heaviest statement (execution count × work per iteration), which in a tiled
kernel is the hot loop whose structure decides the speed.

Index expressions are read as affine forms where they are (every conv, matmul, pool and
elementwise op); other index dimensions (fused loops' `f // c`, `f % c`, data-dependent loads)
fall back to interval arithmetic (ir/interval.py), which over-approximates ranges but never fails.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, fields

import numpy as np

from ..ir import (Allocate, Binary, Buffer, Call, Cast, Compare, Expr, For, If, Kernel, Logic, Not, Select,
                  Seq, Stmt, Store, index_bounds, loads, variables)
from ..ir import itemsize as _itemsize
from ..ir.affine import affine_form
from ..ir.machine import GENERIC_CPU, MachineParams
from ..ir.visit import children

itemsize = functools.cache(_itemsize)

N_ACCESSES = 5            # accessed buffers described per statement (store + loads)
LEVELS = (1, 2, 3, 4, 0)  # innermost loops varying for footprint / reuse; 0: the whole nest
UNKNOWN = 1 << 20         # stride of an index that is not affine (data-dependent)

# arithmetic categories (ArithFeatures' fields); intrinsics are 'cheap' (one instruction) or
# 'math' (a libm call)
_FLOAT_BINARY = {"add": "f_add", "sub": "f_add", "mul": "f_mul", "div": "f_div", "floordiv": "f_div",
                 "mod": "f_div", "min": "f_minmax", "max": "f_minmax"}
_INT_BINARY = {"add": "i_add", "sub": "i_add", "mul": "i_mul", "div": "i_divmod",
               "floordiv": "i_divmod", "mod": "i_divmod", "min": "i_minmax", "max": "i_minmax",
               "bitand": "i_add", "bitor": "i_add", "bitxor": "i_add", "shl": "i_add", "shr": "i_add"}
_CHEAP = {"abs", "floor", "ceil", "round", "neg"}
_REDUCE_OP = {"add": "f_add", "mul": "f_mul", "max": "f_minmax", "min": "f_minmax"}


# -- the feature groups: a field is a feature, its name the feature's name ---------------------

@dataclass(slots=True, kw_only=True)
class LoopFeatures:
    """The loop nest around a statement and its annotations."""
    count: float               # 1: sums to the number of statements
    exec: float                # iterations of the whole nest
    depth: float
    reduce_loops: float
    reduce_iters: float
    extent_in1: float          # extents of the innermost 1..4 loops (0 where the nest is shallower)
    extent_in2: float
    extent_in3: float
    extent_in4: float
    par_prod: float            # product of the parallel loops' extents
    par_loops: float
    par_launches: float        # iterations outside the outermost parallel loop
    par_task_iters: float      # iterations per parallel task
    vec_len: float             # extent of the innermost vectorized loop (0 without one)
    vec_loops: float
    vec_innermost: float       # the vectorized loop is the innermost
    vec_inner_loops: float     # loops inside the vectorized one
    unroll_prod: float
    unroll_loops: float
    unroll_in1: float          # extent of the innermost unrolled loop
    unroll_innermost: float
    gpu_block_prod: float      # 0 unless more than one block
    gpu_thread_prod: float
    gpu_threads_x: float       # extent of the threadIdx.x loop (warps are made along x)
    gpu_occupancy: float       # estimated fraction of an SM's threads resident (gpu_residency)
    gpu_waves: float           # blocks / (SMs x blocks resident per SM)
    guards: float              # enclosing `if`s
    guard_in_vec: float        # one of them sits inside the vectorized loop
    guard_fraction: float      # estimated fraction of iterations that pass them all
    is_reduce: float
    reduce_minmax: float
    local_alloc_bytes: float   # buffers allocated around the statement, by scope
    local_allocs: float
    shared_alloc_bytes: float
    global_alloc_bytes: float


@dataclass(slots=True, kw_only=True)
class ArithFeatures:
    """Operations by kind (f_: float, i_: integer), times the execution count; an op the
    statement does not use counts 0."""
    f_add: float = 0
    f_mul: float = 0
    f_div: float = 0
    f_minmax: float = 0
    f_cmp: float = 0
    f_math: float = 0
    f_cheap: float = 0
    select: float = 0
    cast: float = 0
    i_add: float = 0
    i_mul: float = 0
    i_divmod: float = 0
    i_minmax: float = 0
    i_cmp: float = 0
    logic: float = 0
    float_per_iter: float      # float operations in one iteration
    int_per_iter: float        # integer and logic operations in one iteration
    float_vector_instrs: float # float operations executed / vector lanes


@dataclass(slots=True, kw_only=True)
class AccessFeatures:
    """One accessed buffer; every field is 0 where the statement has fewer accesses."""
    present: float
    is_store: float
    read_write: float          # the stored element is read too (`+=`, `Y[i] = Y[i] + ...`)
    global_: float             # its scope (the trailing _ keeps the keyword out: named `global`)
    local: float
    shared: float
    itemsize: float
    buffer_bytes: float
    stride_in1: float          # elements the access moves per step of the innermost loop
    stride_vec: float          # ... and of the vectorized loop
    unit_in1: float
    zero_in1: float
    unit_vec: float
    zero_vec: float
    stride_nonzero: float      # the stride of the innermost loop that moves it
    stride_thread_x: float     # ... of the threadIdx.x loop: 1 coalesced, 0 one address a warp
    nonzero_depth: float       # loops inside that one
    unknown_index: float       # an index dimension the interval arithmetic cannot bound
    # bytes, cache lines and reuse (iterations / distinct elements) while the innermost 1..4
    # loops (all: the whole nest) run
    bytes_L1: float
    lines_L1: float
    reuse_L1: float
    bytes_L2: float
    lines_L2: float
    reuse_L2: float
    bytes_L3: float
    lines_L3: float
    reuse_L3: float
    bytes_L4: float
    lines_L4: float
    reuse_L4: float
    bytes_Lall: float
    lines_Lall: float
    reuse_Lall: float
    reuse_dist_iters: float    # iterations and bytes inside the innermost loop it does not depend on,
    reuse_dist_bytes: float
    reuse_count: float         # and that loop's extent


@dataclass(slots=True, kw_only=True)
class ShapeFeatures:
    """What the computation is and how the schedule fits the target (MachineParams): ratios a
    tree cannot form from the features above, and the same on any machine."""
    batch_iters: float         # iterations of spatial loops that index every access: a batch
                               # matmul's batch and heads, a depthwise conv's channels, groups
    spatial_iters: float       # iterations of all spatial loops
    store_tail: float          # the stored buffer's last extent modulo the vector lanes (odd extents)
    vec_regs: float            # vector registers one vectorized operation takes
    vec_fill: float            # share of those registers' lanes in use (a tail: below 1)
    vec_guarded: float         # a guard inside the vector loop (a tail the vectors must mask)
    par_per_core: float        # parallel iterations per core
    par_balance: float         # parallel iterations / (rounds of `cores` tasks x cores): 1 balanced
    acc_registers: float       # vector registers the local buffers (register tile) would take
    acc_spill: float           # ... beyond what the target keeps as accumulators
    # float operations per byte of cache lines the accesses touch while the innermost
    # 1..4 loops (all: the whole nest) run, and the share of L1 / L2 those lines take
    intensity_L1: float
    intensity_L2: float
    intensity_L3: float
    intensity_L4: float
    intensity_Lall: float
    l1_share_L2: float
    l1_share_L3: float
    l1_share_L4: float
    l2_share_L4: float
    l2_share_Lall: float


@dataclass(slots=True, kw_only=True)
class CacheFeatures:
    """Where the working set of the loop nest stops fitting each cache of the target, and the
    traffic that follows: the classic reuse model, in which the widest loop nest (counted from
    the innermost) whose cache lines fit a cache brings them in once per execution and the
    loops outside it bring them in again. It tells apart tilings whose innermost four loops look
    alike (what AccessFeatures describes) but whose outer tiles do or do not fit. L1 and L2 are a
    core's; the shared L3 is counted as its share per core."""
    fit_L1: float              # loops, from the innermost, whose working set fits L1
    fit_L2: float
    fit_L3: float
    traffic_L1: float          # bytes loaded into L1 over the whole nest
    traffic_L2: float
    traffic_L3: float
    flops_per_L1: float        # float operations per byte of that traffic
    flops_per_L2: float
    flops_per_L3: float
    task_share_L2: float       # working set of one parallel task (inside the parallel loops) / L2


@functools.cache
def _field_names(group: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(group))


@functools.cache
def _values_of(group: type):
    return operator.attrgetter(*_field_names(group))


def _zeros(group: type):
    return group(**dict.fromkeys(_field_names(group), 0.0))


@dataclass(frozen=True, slots=True)
class StatementFeatures:
    """All features of one Store statement, raw (not log-scaled)."""
    loop: LoopFeatures
    arith: ArithFeatures
    accesses: tuple[AccessFeatures, ...]  # N_ACCESSES: the store, the loads; zeros pad
    shape: ShapeFeatures
    cache: CacheFeatures

    def groups(self) -> tuple:
        """The groups in vector order (named after _PREFIXES)."""
        return (self.loop, self.arith, *self.accesses, self.shape, self.cache)

    def names(self) -> list[str]:
        # a trailing underscore only keeps a Python keyword out of a field name (`global_`)
        return [f"{prefix}.{name.removesuffix('_')}" for prefix, group in zip(_PREFIXES, self.groups(), strict=True)
                for name in _field_names(type(group))]

    def vector(self) -> list[float]:
        out: list[float] = []
        for group in self.groups():
            out.extend(_values_of(type(group))(group))
        return out


_PREFIXES = ("loop", "arith", *(f"acc{n}" for n in range(N_ACCESSES)), "shape", "cache")
_ABSENT = _zeros(AccessFeatures)
STATEMENT_NAMES = StatementFeatures(_zeros(LoopFeatures), _zeros(ArithFeatures), (_ABSENT,) * N_ACCESSES,
                                    _zeros(ShapeFeatures), _zeros(CacheFeatures)).names()
FEATURE_NAMES = ([f"sum.{n}" for n in STATEMENT_NAMES] + [f"max.{n}" for n in STATEMENT_NAMES]
                 + [f"top.{n}" for n in STATEMENT_NAMES])


def log_scale(x):
    return np.log2(1.0 + np.abs(x))


def statement_features(kernel: Kernel, machine: MachineParams = GENERIC_CPU) -> list[np.ndarray]:
    """One log-scaled vector (len(STATEMENT_NAMES)) per Store statement, in program order."""
    return [log_scale(np.array(s.vector())) for s in named_statement_features(kernel, machine)]


def kernel_features(kernel: Kernel, machine: MachineParams = GENERIC_CPU) -> np.ndarray:
    """sum, max and heaviest statement's features (see the module doc); len(FEATURE_NAMES).
    Cache lines are counted in the machine's line size."""
    stmts = named_statement_features(kernel, machine)
    if not stmts:
        return np.zeros(len(FEATURE_NAMES))
    rows = np.array([s.vector() for s in stmts])
    heaviest = int(np.argmax([_work(s) for s in stmts]))
    return np.concatenate([log_scale(rows.sum(0)), log_scale(rows).max(0), log_scale(rows[heaviest])])


def _work(s: StatementFeatures) -> float:
    return s.loop.exec * (1.0 + s.arith.float_per_iter + 0.25 * s.arith.int_per_iter)


# -- walking the kernel ---------------------------------------------------------------------

def named_statement_features(kernel: Kernel, machine: MachineParams = GENERIC_CPU) -> list[StatementFeatures]:
    """The raw features of every Store statement, in program order."""
    out: list[StatementFeatures] = []
    line = machine.cache_line

    def go(s: Stmt, loops: tuple, guards: tuple, allocs: tuple) -> None:
        if isinstance(s, For):
            go(s.body, loops + (s,), guards, allocs)
        elif isinstance(s, Store):
            out.append(_statement(s, loops, guards, allocs, machine))
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


def _statement(s: Store, loops: tuple[For, ...], guards: tuple, allocs: tuple[Buffer, ...],
               machine: MachineParams) -> StatementFeatures:
    exec_count = math.prod(l.extent for l in loops)
    vec = next((n for n in range(len(loops) - 1, -1, -1) if loops[n].kind == "vectorized"), None)
    vec_len = loops[vec].extent if vec is not None else 1
    loop = _loop_features(s, loops, guards, allocs, exec_count, vec, machine)
    arith = _arith_features(s, guards, exec_count, vec_len)
    accesses, lines = _accesses(s, loops, vec, machine.cache_line)
    return StatementFeatures(loop=loop, arith=arith, accesses=accesses,
                             shape=_shape_features(s, loops, loop, arith, accesses, machine),
                             cache=_cache_features(loops, arith, lines, machine))


def _accesses(s: Store, loops, vec: int | None, line: int) -> tuple[tuple[AccessFeatures, ...], list[int]]:
    """The stored buffer, then its distinct loads, most bytes touched first; zeros pad. And the
    cache lines all of them (not only the first N_ACCESSES) touch while the innermost 0, 1, ...,
    depth loops run."""
    target = (s.buffer.name, s.indices)
    read_write = s.reduce is not None
    seen, reads = {target}, []
    lines = [0] * (len(loops) + 1)
    for load in loads(s.value):
        key = (load.buffer.name, load.indices)
        read_write = read_write or key == target  # `Y[i] = Y[i] + ...`
        if key not in seen:
            seen.add(key)
            reads.append(_access(load.buffer, load.indices, loops, vec, line, lines, is_store=False,
                                 read_write=False))
    reads.sort(key=lambda a: -a.bytes_Lall)
    store = _access(s.buffer, s.indices, loops, vec, line, lines, is_store=True, read_write=read_write)
    kept = [store, *reads][:N_ACCESSES]
    return tuple(kept) + (_ABSENT,) * (N_ACCESSES - len(kept)), lines


# -- loops ----------------------------------------------------------------------------------

def gpu_residency(threads: int, shared_bytes: int, local_bytes: int, machine: MachineParams) -> int:
    """Blocks of `threads` threads an SM holds at once, limited by its threads (two blocks of the
    most), shared memory (taken as twice a block's most, as on sm_80 and later) and registers
    (each thread's local buffer plus 32 for addresses and loop counters)."""
    if not machine.is_gpu or threads < 1:
        return 0
    registers = threads * (32 + local_bytes // 4)
    limits = [2 * machine.max_threads_per_block // threads, 32,
              machine.registers_per_block // max(1, registers)]
    if shared_bytes:
        limits.append(2 * machine.shared_memory_per_block // shared_bytes)
    return max(0, min(limits))


def _loop_features(s: Store, loops, guards, allocs, exec_count: int, vec: int | None,
                   machine: MachineParams) -> LoopFeatures:
    depth = len(loops)
    ext = [l.extent for l in loops]
    inner = [ext[depth - n] if depth >= n else 0 for n in (1, 2, 3, 4)]
    par = [n for n, l in enumerate(loops) if l.kind == "parallel"]
    par_prod = math.prod(ext[n] for n in par)
    unrolled = [n for n, l in enumerate(loops) if l.kind == "unrolled"]
    block = math.prod(l.extent for l in loops if l.kind.startswith("blockIdx"))
    thread = math.prod(l.extent for l in loops if l.kind.startswith("threadIdx"))
    local = [b for b in allocs if b.scope == "local"]
    shared_bytes = sum(_nbytes(b) for b in allocs if b.scope == "shared")
    x_loops = [l for l in loops if l.kind == "threadIdx.x"]
    resident = gpu_residency(thread, shared_bytes, sum(_nbytes(b) for b in local), machine)
    return LoopFeatures(
        count=1.0, exec=exec_count, depth=depth,
        reduce_loops=sum(l.axis == "reduce" for l in loops),
        reduce_iters=math.prod(l.extent for l in loops if l.axis == "reduce"),
        extent_in1=inner[0], extent_in2=inner[1], extent_in3=inner[2], extent_in4=inner[3],
        par_prod=par_prod, par_loops=len(par), par_launches=math.prod(ext[:par[0]]) if par else 0,
        par_task_iters=exec_count / par_prod if par else 0,
        vec_len=ext[vec] if vec is not None else 0,
        vec_loops=sum(l.kind == "vectorized" for l in loops),
        vec_innermost=float(vec == depth - 1 and vec is not None),
        vec_inner_loops=depth - 1 - vec if vec is not None else 0,
        unroll_prod=math.prod(ext[n] for n in unrolled), unroll_loops=len(unrolled),
        unroll_in1=ext[unrolled[-1]] if unrolled else 0,
        unroll_innermost=float(bool(unrolled) and unrolled[-1] == depth - 1),
        gpu_block_prod=block if block > 1 else 0, gpu_thread_prod=thread if thread > 1 else 0,
        gpu_threads_x=x_loops[-1].extent if x_loops else 0,
        gpu_occupancy=min(1.0, resident * thread / (2 * machine.max_threads_per_block)) if resident else 0,
        gpu_waves=block / (resident * machine.cores) if resident else 0,
        guards=len(guards), guard_in_vec=float(vec is not None and any(at > vec for _, at in guards)),
        guard_fraction=_guard_fraction(guards, loops),
        is_reduce=float(s.reduce is not None), reduce_minmax=float(s.reduce in ("max", "min")),
        local_alloc_bytes=sum(_nbytes(b) for b in local), local_allocs=len(local),
        shared_alloc_bytes=sum(_nbytes(b) for b in allocs if b.scope == "shared"),
        global_alloc_bytes=sum(_nbytes(b) for b in allocs if b.scope == "global"))


def _shape_features(s: Store, loops, loop: LoopFeatures, arith: ArithFeatures,
                    accesses: tuple[AccessFeatures, ...], machine: MachineParams) -> ShapeFeatures:
    every = None  # loop variables that index every access to a global buffer (a register
    for b, indices in ((s.buffer, s.indices), *((l.buffer, l.indices) for l in loads(s.value))):
        if b.scope == "global":  # tile's accumulator is indexed by the tile's loops only)
            used = variables(tuple(indices))
            every = used if every is None else every & used
    spatial = [l for l in loops if l.axis != "reduce"]
    lanes = machine.lanes(s.buffer.dtype)
    vec_regs = -(-int(loop.vec_len) // lanes) if loop.vec_len else 0
    cores = max(1, machine.cores)
    tasks = loop.par_prod if loop.par_loops else 0
    registers = loop.local_alloc_bytes / max(1, machine.vector_bytes)
    depth = len(loops)
    iters = {lv: math.prod(l.extent for l in loops[depth - min(lv, depth):]) for lv in (1, 2, 3, 4)}
    iters[0] = loop.exec
    line = machine.cache_line

    def lines(lv: str) -> float:  # bytes of the cache lines all accesses touch at a level
        return sum(getattr(a, f"lines_L{lv}") for a in accesses) * line

    def intensity(lv: int) -> float:
        return arith.float_per_iter * iters[lv] / max(1.0, lines(lv or "all"))

    return ShapeFeatures(
        batch_iters=math.prod(l.extent for l in spatial if every and l.var in every),
        spatial_iters=math.prod(l.extent for l in spatial),
        store_tail=(s.buffer.shape[-1] % lanes) if s.buffer.shape else 0,
        vec_regs=vec_regs, vec_fill=loop.vec_len / (vec_regs * lanes) if vec_regs else 0,
        vec_guarded=loop.guard_in_vec,
        par_per_core=tasks / cores,
        par_balance=tasks / (-(-tasks // cores) * cores) if tasks else 0,
        acc_registers=registers, acc_spill=max(0.0, registers - machine.accumulators),
        intensity_L1=intensity(1), intensity_L2=intensity(2), intensity_L3=intensity(3),
        intensity_L4=intensity(4), intensity_Lall=intensity(0),
        l1_share_L2=lines(2) / machine.l1_bytes, l1_share_L3=lines(3) / machine.l1_bytes,
        l1_share_L4=lines(4) / machine.l1_bytes, l2_share_L4=lines(4) / machine.l2_bytes,
        l2_share_Lall=lines("all") / machine.l2_bytes)


def _cache_features(loops, arith: ArithFeatures, lines: list[int], machine: MachineParams) -> CacheFeatures:
    """`lines[n]`: cache lines the accesses touch while the innermost n loops run."""
    depth = len(loops)
    inside = [1] * (depth + 1)  # iterations of the innermost n loops
    for n in range(1, depth + 1):
        inside[n] = inside[n - 1] * loops[depth - n].extent
    exec_count, flops = inside[depth], arith.float_per_iter * inside[depth]
    footprint = [n * machine.cache_line for n in lines]
    out = {}
    l3 = machine.l3_bytes // max(1, machine.cores) or machine.l2_bytes
    for name, size in (("L1", machine.l1_bytes), ("L2", machine.l2_bytes), ("L3", l3)):
        fit = max((n for n in range(depth + 1) if footprint[n] <= size), default=0)
        traffic = footprint[fit] * (exec_count // max(1, inside[fit]))
        out |= {f"fit_{name}": fit, f"traffic_{name}": traffic, f"flops_per_{name}": flops / max(1, traffic)}
    par = [n for n, l in enumerate(loops) if l.kind == "parallel"]
    task = footprint[depth - 1 - par[-1]] if par else footprint[depth]
    return CacheFeatures(**out, task_share_L2=task / machine.l2_bytes)


def _guard_fraction(guards, loops) -> float:
    ranges = {l.var: l.extent for l in loops}
    return math.prod((_pass_fraction(cond, ranges) for cond, _ in guards), start=1.0)


def _pass_fraction(cond: Expr, ranges: dict[str, int]) -> float:
    """The fraction of iterations for which a guard holds, assuming uniform independent loops."""
    if isinstance(cond, Logic):
        a, b = _pass_fraction(cond.a, ranges), _pass_fraction(cond.b, ranges)
        return a * b if cond.op == "and" else a + b - a * b
    if isinstance(cond, Not):
        return 1.0 - _pass_fraction(cond.a, ranges)
    if not isinstance(cond, Compare):
        return 0.5
    bounds = index_bounds(Binary("sub", cond.a, cond.b), ranges)
    if bounds is None:
        return 0.5
    lo, hi = bounds
    span = hi - lo + 1
    below = lambda x: min(max((x - lo) / span, 0.0), 1.0)  # fraction of values < x
    return {"lt": below(0), "le": below(1), "gt": 1 - below(1), "ge": 1 - below(0),
            "eq": below(1) - below(0), "ne": 1 - (below(1) - below(0))}[cond.op]


# -- arithmetic -----------------------------------------------------------------------------

_FLOAT_OPS = {op for op in _field_names(ArithFeatures) if op.startswith("f_")}
_INT_OPS = {op for op in _field_names(ArithFeatures) if op.startswith("i_")} | {"logic"}


def _arith_features(s: Store, guards, exec_count: int, vec_len: int) -> ArithFeatures:
    ops = _op_counts(s, guards)
    n_float = sum(n for op, n in ops.items() if op in _FLOAT_OPS)
    n_int = sum(n for op, n in ops.items() if op in _INT_OPS)
    return ArithFeatures(**{op: n * exec_count for op, n in ops.items()},
                         float_per_iter=n_float, int_per_iter=n_int,
                         float_vector_instrs=n_float * exec_count / vec_len)


def _op_counts(s: Store, guards) -> dict[str, int]:
    """Operations of one iteration by kind (ArithFeatures' field names): in the stored value,
    the indices, the guards, and the reduction's update."""
    ops: dict[str, int] = {}
    for root in (s.value, *s.indices, *(cond for cond, _ in guards)):
        _count_ops(root, ops)
    if s.reduce is not None:
        op = _REDUCE_OP[s.reduce]
        ops[op] = ops.get(op, 0) + 1
    return ops


def _count_ops(e: Expr, ops: dict[str, int]) -> None:
    op = _op_kind(e)
    if op is not None:
        ops[op] = ops.get(op, 0) + 1
    for k in children(e):
        _count_ops(k, ops)


def _op_kind(e: Expr) -> str | None:
    t = type(e)
    if t is Binary:
        return (_INT_BINARY if _is_int_like(e.a.dtype) else _FLOAT_BINARY)[e.op]
    if t is Compare:
        return "i_cmp" if _is_int_like(e.a.dtype) else "f_cmp"
    if t is Call:
        if e.args[0].dtype.startswith(("int", "uint")):
            return "i_add"
        return "f_cheap" if e.fn in _CHEAP else "f_math"
    if t is Select:
        return "select"
    if t is Cast:
        return "cast"
    if t is Logic or t is Not:
        return "logic"
    return None


def _is_int_like(dtype: str) -> bool:
    return dtype.startswith(("int", "uint", "bool"))


# -- buffer accesses ------------------------------------------------------------------------

def _nbytes(b: Buffer) -> int:
    return b.size * itemsize(b.dtype)


def _access(buf: Buffer, indices, loops, vec: int | None, line: int, lines: list[int], is_store: bool,
            read_write: bool) -> AccessFeatures:
    """One access's features; adds the cache lines it touches at each loop level to `lines`."""
    affine_uses, others, flat = _index_terms(buf.shape, indices)
    scope = buf.scope
    return AccessFeatures(
        present=1.0, is_store=float(is_store), read_write=float(read_write),
        global_=float(scope == "global"), local=float(scope == "local"), shared=float(scope == "shared"),
        itemsize=itemsize(buf.dtype), buffer_bytes=_nbytes(buf),
        **_strides(flat, loops, vec),
        unknown_index=float(not all(bounded for *_, bounded in others)),
        **_sweep(buf, indices, loops, affine_uses, others, line, lines))


def _index_terms(shape, indices) -> tuple[dict, list, dict]:
    """How the loop variables move an access:
    affine_uses: var -> [(dim, |coefficient|)] over the affine index dimensions;
    others: (dim, expr, its variables, bounded?) for the other dimensions, which get interval
        arithmetic;
    flat: var -> elements the access moves when var steps by one."""
    row = [math.prod(shape[d + 1:]) for d in range(len(indices))]
    affine_uses: dict[str, list] = {}
    others = []
    flat: dict[str, int] = {}
    for d, e in enumerate(indices):
        form = affine_form(e)
        if form is not None:
            for v, c in form[0].items():
                if c:
                    affine_uses.setdefault(v, []).append((d, abs(c)))
                    flat[v] = flat.get(v, 0) + c * row[d]
        else:
            names = variables((e,))
            others.append((d, e, names, index_bounds(e, {}) is not None))
            for v in names:
                flat[v] = flat.get(v, 0) + _step(e, v) * row[d]
    return affine_uses, others, flat


def _step(expr: Expr, var: str) -> int:
    """How far a non-affine index moves when `var` steps from 0 to 1 (others at 0)."""
    at0, at1 = index_bounds(expr, {}), index_bounds(expr, {var: 2})
    return UNKNOWN if at0 is None or at1 is None else at1[1] - at0[1]


def _strides(flat: dict[str, int], loops, vec: int | None) -> dict[str, float]:
    depth = len(loops)
    s_in = abs(flat.get(loops[-1].var, 0)) if loops else 0
    s_vec = abs(flat.get(loops[vec].var, 0)) if vec is not None else 0
    nonzero, nz_depth = 0, 0
    for n in range(depth - 1, -1, -1):
        if flat.get(loops[n].var, 0):
            nonzero, nz_depth = abs(flat[loops[n].var]), depth - 1 - n
            break
    x = next((l.var for l in reversed(loops) if l.kind == "threadIdx.x"), None)
    return dict(stride_in1=s_in, stride_vec=s_vec, stride_thread_x=abs(flat.get(x, 0)) if x else 0,
                unit_in1=float(s_in == 1),
                zero_in1=float(s_in == 0 and bool(loops)), unit_vec=float(s_vec == 1),
                zero_vec=float(s_vec == 0 and vec is not None), stride_nonzero=nonzero, nonzero_depth=nz_depth)


_LEVEL_NAMES = [(lv, tuple(f"{what}_L{lv or 'all'}" for what in ("bytes", "lines", "reuse"))) for lv in LEVELS]


def _sweep(buf: Buffer, indices, loops, affine_uses: dict, others: list, line: int,
           lines_by_level: list[int]) -> dict[str, float]:
    """Sweeps the loops from the innermost out: bytes, cache lines and reuse at each of LEVELS,
    and the reuse distance at the first loop (from inside) the access does not depend on; adds
    the lines touched at every level (0: one iteration) to `lines_by_level`."""
    isz = itemsize(buf.dtype)
    ndim = len(indices)
    extent = [buf.shape[d] if d < len(buf.shape) else 1 for d in range(ndim)]
    used = set(affine_uses).union(*(names for _, _, names, _ in others))
    width = [1] * ndim   # range of each dimension over the loops swept so far (affine dims)
    count = [1] * ndim   # iterations of the swept loops that dimension reads
    inner: dict[str, int] = {}
    cap = 1              # iterations of the swept loops the access depends on

    def footprint() -> tuple[int, int]:
        """(distinct elements, cache lines) touched while the swept loops run."""
        if not ndim:
            return 1, 1
        w = list(width)
        for d, e, names, bounded in others:
            bounds = index_bounds(e, inner) if bounded else None
            w[d] = extent[d] if bounds is None else bounds[1] - bounds[0] + 1
            count[d] = math.prod(inner[v] for v in names if v in inner)
        spans = [max(1, min(w[d], extent[d], count[d])) for d in range(ndim)]
        distinct = min(math.prod(spans), cap)
        last = max(1, min(w[-1], extent[-1]))
        lines = min(spans[-1], -(-last * isz // line)) * math.prod(spans[:-1])
        return distinct, min(distinct, lines)

    depth = len(loops)
    reuse = dict(reuse_dist_iters=0, reuse_dist_bytes=0, reuse_count=0)
    iters = 1
    wanted = {(depth if lv == 0 else min(lv, depth)) for lv in LEVELS}
    results = {0: (1, 1, 1.0)}
    lines_by_level[0] += 1
    for n in range(depth - 1, -1, -1):
        var, ext = loops[n].var, loops[n].extent
        if not reuse["reuse_count"] and var not in used and ext > 1:
            reuse = dict(reuse_dist_iters=iters, reuse_dist_bytes=footprint()[0] * isz, reuse_count=ext)
        for d, c in affine_uses.get(var, ()):
            width[d] += c * (ext - 1)
            count[d] *= ext
        if var in used:
            cap *= ext
        inner[var] = ext
        iters *= ext
        distinct, lines = footprint()
        lines_by_level[depth - n] += lines
        if depth - n in wanted:
            results[depth - n] = (distinct, lines, iters / distinct)
    levels = {}
    for lv, (nbytes, nlines, nreuse) in _LEVEL_NAMES:
        distinct, lines, r = results[depth if lv == 0 else min(lv, depth)]
        levels[nbytes], levels[nlines], levels[nreuse] = distinct * isz, lines, r
    return levels | reuse
