"""What the sketch rules read of a kernel: its top-level loop nests, the heaviest one's loops and
the buffers it reads, computed once per kernel (KernelInfo) and shared by every rule.

The main nest is the heaviest top-level nest: spatial loops around an optional reduction
(`Out = init; for r...: Out += ...`). Its vector loop walks the output's last (contiguous)
dimension. Where another spatial loop indexes one output dimension alone (plus multiples of its
extent: a grouped convolution's g * M + m) and every input the reduction reads moves with it
either along its last dimension or along one dimension that `pack` can block (the output
channels of a convolution, read through OIHW weights), the lanes may sit on that loop instead
(`Lanes`). Row reductions (softmax, layer normalization: reductions along the inputs'
contiguous axis only) are the reductions rfactor can split into vector lanes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..ir import Allocate, Buffer, Expr, For, Kernel, Load, Seq, Stmt, Store, Var, loads, walk_stmts
from ..ir.affine import affine_form
from ..ir.machine import MachineParams
from ..passes import Pass, Rfactor, ScheduleError, canonical_loops, list_passes
from ..passes.analysis import variables
from ..passes.registry import BUILTINS

LANE_FACTORS = (8, 16, 32, 64)  # lanes on another loop (they must divide it); 32, 64: 2-4 vectors
RFACTOR_FACTORS = (8, 16, 32, 64)  # vector lanes of partial results for a row reduction
CHUNK_FACTORS = (2, 4, 8, 16, 32)  # iterations of the outermost reduction loop a chunk holds


@dataclass(frozen=True)
class Nest:
    """A top-level loop nest: its perfect chain of spatial loops and the reduction inside."""
    spatial: tuple[For, ...]
    reduce: tuple[str, ...]       # reduction loops of the innermost body, outermost first
    output: Buffer | None         # the buffer the nest's reduction (or store) writes
    index: tuple[Expr, ...]
    work: int                     # innermost iterations

    @property
    def root(self) -> str:
        return self.spatial[0].var


def top_level_nests(kernel: Kernel) -> list[Nest]:
    out = []

    def visit(s: Stmt) -> None:
        if isinstance(s, Allocate):
            visit(s.body)
        elif isinstance(s, Seq):
            for x in s.stmts:
                visit(x)
        elif isinstance(s, For):
            out.append(_nest(s))
    visit(kernel.body)
    return out


def _nest(loop: For) -> Nest:
    chain = [loop]
    while isinstance(chain[-1].body, For) and chain[-1].body.axis == "spatial" and chain[-1].axis == "spatial":
        chain.append(chain[-1].body)
    body = chain[-1].body
    stores = [s for s in walk_stmts(body) if isinstance(s, Store)]
    reduce = []
    for s in walk_stmts(body):
        if isinstance(s, For) and s.axis == "reduce" and s.var not in reduce:
            reduce.append(s.var)
    work = 1
    for s in walk_stmts(loop):
        if isinstance(s, For):
            work *= s.extent
    target = next((s for s in stores if s.reduce), stores[0] if stores else None)
    return Nest(tuple(chain), tuple(reduce), target.buffer if target else None,
                target.indices if target else (), work)


@dataclass(frozen=True)
class Lanes:
    """A spatial loop that may hold the vector lanes instead of the output's contiguous one."""
    loop: int                              # position in Nest.spatial
    out_dim: int                           # the output dimension it alone indexes
    packs: tuple[tuple[str, int], ...]     # (input, dimension) to block so its reads are contiguous
    factors: tuple[int, ...]               # lane counts that divide the loop and every packed dimension


def lane_choices(kernel: Kernel, nest: Nest, vector: int | None, machine: MachineParams) -> tuple[Lanes, ...]:
    if not nest.reduce or nest.output is None or _block_lanes(nest, vector, machine):
        return ()
    inputs = {b.name: b for b in kernel.inputs}
    loaded = reduction_loads(nest)
    operands = reduction_operands(nest, loaded)
    out = []
    for k, loop in enumerate(nest.spatial):
        var = Var(loop.var)
        dims = [d for d, e in enumerate(nest.index) if _moves_with(e, loop.var, loop.extent)]
        if k == vector or len(dims) != 1 or any(loop.var in variables((e,)) for d, e in enumerate(nest.index)
                                                if d != dims[0]):
            continue
        packs, ok, broadcast = [], True, False
        # the reduction's loads decide; an epilogue (bias, residual) is read once per output
        # element and may gather across the lanes
        for load in loaded:
            uses = [d for d, e in enumerate(load.indices) if loop.var in variables((e,))]
            if not uses:
                broadcast = True
                continue
            if uses == [len(load.indices) - 1] and load.indices[-1] == var:
                continue  # already contiguous along the loop
            if len(uses) == 1 and _moves_with(load.indices[uses[0]], loop.var, loop.extent) \
                    and load.buffer.name in inputs:
                packs.append((load.buffer.name, uses[0]))
            else:
                ok = False
        sizes = [loop.extent] + [inputs[b].shape[d] for b, d in packs]
        factors = tuple(f for f in LANE_FACTORS if all(n % f == 0 for n in sizes))
        # of a product, one operand the same in every lane (a conv's input, across its output
        # channels): where the loop indexes every operand (a batched matmul's batch) each lane
        # is a matrix of its own, packed, and the output's contiguous loop holds the lanes better
        if ok and packs and factors and (broadcast or len(operands) < 2):
            out.append(Lanes(k, dims[0], tuple(dict.fromkeys(packs)), factors))
    return tuple(out)


def _block_lanes(nest: Nest, vector: int | None, machine: MachineParams) -> bool:
    """Whether the output's contiguous dimension is a blocked layout's channel lane (NCHW16c,
    frontend/layout.py): whole vectors already, so lanes on another loop would only stride."""
    return vector is not None and nest.spatial[vector].extent in machine.channel_blocks


def _moves_with(e: Expr, var: str, extent: int) -> bool:
    """Whether index `e` is `var` plus multiples of its extent (a grouped conv's output channel
    g * M + m): blocks of `var` are then blocks of the dimension, and lanes on `var` stay
    contiguous in a blocked layout of it."""
    form = affine_form(e)
    if form is None:
        return False
    coefs, const = form
    return coefs.get(var) == 1 and const % extent == 0 and all(
        c % extent == 0 for v, c in coefs.items() if v != var)


@dataclass(frozen=True)
class KernelInfo:
    """A kernel (canonical loop names) as the sketch rules see it on one machine."""
    kernel: Kernel
    machine: MachineParams
    nests: tuple[Nest, ...]
    main: Nest                              # the heaviest top-level nest
    vector: int | None                      # position of the output's contiguous loop in main.spatial
    inputs: tuple[str, ...]                 # inputs the main nest reads (cache_read may copy them)
    lanes: tuple[Lanes, ...]                # other loops of main that may hold the vector lanes
    rows: tuple[tuple[str, str], ...]       # (nest root, reduction loop) pairs rfactor can split
    stages: tuple[str, ...]                 # intermediates main reads (a padded input)
    panels: tuple[str, ...]                 # inputs read along the vector loop, a row per reduction step
    extra: tuple[Pass, ...] = ()            # plugin passes' instances on the kernel (their schedule_space)

    @classmethod
    def of(cls, kernel: Kernel, machine: MachineParams) -> KernelInfo:
        kernel = canonical_loops(kernel)
        nests = tuple(top_level_nests(kernel))
        main = max(nests, key=lambda n: n.work)
        vector = None
        if main.index and isinstance(main.index[-1], Var):
            names = [l.var for l in main.spatial]
            if main.index[-1].name in names:
                vector = names.index(main.index[-1].name)
        read = {l.buffer.name for l in loads(main.spatial[0])}
        inputs = tuple(b.name for b in kernel.inputs if b.name in read)
        extra = tuple(p for name, pass_ in list_passes().items() if name not in BUILTINS
                      for p in pass_.schedule_space(kernel))
        return cls(kernel, machine, nests, main, vector, inputs, lane_choices(kernel, main, vector, machine),
                   row_reductions(kernel, list(nests)), stages_read(kernel, main), panel_inputs(kernel, main, vector),
                   extra)

    @property
    def other_nests(self) -> tuple[Nest, ...]:
        """The top-level nests other than the main one (a convolution's padding)."""
        return tuple(n for n in self.nests if n is not self.main)

    @property
    def row(self) -> int | None:
        """Position of the loop of the output's next-to-last dimension (a feature map's row): the
        loop before the vector loop, where it indexes that dimension (a global pool's output
        [1, C/16, 1, 1, 16] has no row; the loop before its lanes walks channel blocks)."""
        if not self.vector or len(self.main.index) < 2:
            return None
        row = self.vector - 1
        return row if self.main.spatial[row].var in variables((self.main.index[-2],)) else None

    @functools.cached_property
    def mixed_loops(self) -> frozenset[str]:
        """Loops of the main nest that share an output dimension with another loop."""
        out = set()
        for e in self.main.index:
            names = variables((e,)) & {l.var for l in self.main.spatial}
            if len(names) > 1:
                out |= names
        return frozenset(out)

    @property
    def block_lanes(self) -> bool:
        return _block_lanes(self.main, self.vector, self.machine)

    def extent(self, loop: str) -> int:
        return _extent(self.kernel, loop)

    def input_shape(self, name: str) -> tuple[int, ...]:
        return next(b.shape for b in self.kernel.inputs if b.name == name)

    @functools.cached_property
    def chunk_factors(self) -> tuple[int, ...]:
        """Chunk sizes that divide the outermost reduction loop into two chunks or more."""
        if not self.main.reduce or self.main.output is None:
            return ()
        extent = self.extent(self.main.reduce[0])
        return tuple(f for f in CHUNK_FACTORS if f < extent and extent % f == 0)


def row_reductions(kernel: Kernel, nests: list[Nest]) -> tuple[tuple[str, str], ...]:
    """(nest root, loop) of every reduction loop that reads inputs along their contiguous axis,
    and only along it, and that rfactor splits at some RFACTOR_FACTORS width (one that divides
    it, or with the last chunk guarded: rows of prime length). Loads the loop does not move (a
    row's mean, `Mean[i]`, in its variance) are the same in every lane: they do not count."""
    out = []
    for nest in nests:
        spatial = {l.var for l in nest.spatial}
        for loop in (s for s in walk_stmts(nest.spatial[0]) if isinstance(s, For) and s.axis == "reduce"):
            moving = [l for l in loads(loop.body) if l.indices and loop.var in variables(l.indices)]
            strides = [_unit_strides(l.indices[-1]) for l in moving]
            # every load it moves steps one element at a time, along its last axis (a load
            # it moves along another, a Winograd output's M[r, tile, k], would gather a lane
            # at a time), and no spatial loop steps so too (a matmul's columns): vectorizing
            # that loop is better, and the tiling sketch does it
            if strides and all(loop.var in unit and not unit & spatial for unit in strides) and any(
                    _accepts(Rfactor(loop.var, f, tail=True), kernel) for f in RFACTOR_FACTORS):
                out.append((nest.root, loop.var))
    return tuple(out)


def _unit_strides(index: Expr) -> set[str]:
    """The variables that step `index` by one element (none where it is not affine)."""
    form = affine_form(index)
    return {v for v, c in form[0].items() if c == 1} if form else set()


def reduction_loads(nest: Nest) -> list[Load]:
    """The loads of the nest's reduction updates (`Out += ...`), not of its init or epilogue."""
    updates = [x for x in walk_stmts(nest.spatial[-1].body) if isinstance(x, Store) and x.reduce is not None]
    return [l for x in updates for l in loads(x.value)]


def reduction_operands(nest: Nest, loaded: list[Load]) -> set[str]:
    """The buffers among the reduction's loads (`loaded`) that its loops move along: a product's
    two operands, a pool's one input (not a bias or a row's mean read once per output)."""
    return {l.buffer.name for l in loaded if set(nest.reduce) & variables(l.indices)}


def panel_inputs(kernel: Kernel, main: Nest, vector: int | None) -> tuple[str, ...]:
    """Inputs of the main nest's reduction indexed by the vector loop alone in their last
    dimension and by a reduction loop in another, in a product with another buffer the reduction
    moves along: a matmul's B[k, n]. (A pool's input, reduced alone, would only be copied.)"""
    if vector is None or not main.reduce:
        return ()
    var = main.spatial[vector].var
    inputs = {b.name for b in kernel.inputs}
    loaded = reduction_loads(main)
    if len(reduction_operands(main, loaded)) < 2:
        return ()
    out = []
    for load in loaded:
        idx = load.indices
        if load.buffer.name in inputs and len(idx) >= 2 and idx[-1] == Var(var) \
                and set(main.reduce) & variables(idx[:-1]) and var not in variables(idx[:-1]):
            out.append(load.buffer.name)
    return tuple(dict.fromkeys(out))


def stages_read(kernel: Kernel, main: Nest) -> tuple[str, ...]:
    """Buffers the kernel allocates, writes in another top-level nest and reads in `main`."""
    allocated = {s.buffer.name for s in walk_stmts(kernel.body) if isinstance(s, Allocate)}
    read = {l.buffer.name for l in loads(main.spatial[0])}
    written = {s.buffer.name for s in walk_stmts(main.spatial[0]) if isinstance(s, Store)}
    return tuple(sorted((allocated & read) - written))


def _accepts(step: Pass, kernel: Kernel) -> bool:
    try:
        step.check(kernel)
    except ScheduleError:
        return False
    return True


def _extent(kernel: Kernel, loop: str) -> int:
    return next(s.extent for s in walk_stmts(kernel.body) if isinstance(s, For) and s.var == loop)
