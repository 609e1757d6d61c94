"""The search space of a kernel: sketches (structure) × decisions (parameters) → schedules.

A sketch reads the kernel's heaviest top-level nest — spatial loops around an optional reduction
(`Out = init; for r...: Out += ...`) — and derives a multi-level tiled schedule from a handful of
decisions, as Ansor's sketch rules do for conv- and matmul-like nests:

    split each spatial loop by its tile factor; outer loops first (in a chosen order), then the
    tile loops, the vector loop last; fuse outer loops into one parallel loop; accumulate the
    tile in registers (cache_write), move the reduction loops outside the tile (distribute +
    reorder), unroll the innermost reduction loop; optionally split the outermost reduction
    loop into chunks and sweep each chunk over all the tiles of an outer loop (partial sums
    in a second, outer accumulator: the `chunk` decision); optionally copy an input's panel to a
    contiguous buffer (cache_read); vectorize the vector loop and unroll the other tile loops.

The vector lanes normally walk the output's last (contiguous) dimension. Where another spatial
loop indexes one output dimension alone (plus multiples of its extent: a grouped convolution's
g * M + m) and every input the reduction reads moves with it either along its last dimension or
along one dimension that `pack` can block (the output channels of a convolution, read through
OIHW weights), the sketch may put the lanes on that loop instead: the weights are
packed OIHW → OIHW<f>o and the accumulator tile is laid out with that dimension last
(cache_write's order), so 56-wide feature maps still fill 16-lane vectors. The accumulator is
then stored back either a lane vector at a time (a scatter over channels) or, transposed, along
the output's contiguous dimension (transpose_store).

An input read a row per reduction step along the vector loop (a matmul's B[k, n]) may be packed
into panels [n / tile][k][tile] (the `panel` decision), so each tile's columns are one contiguous
stream over k instead of a row-strided walk the prefetcher loses.

An intermediate the main nest reads (a convolution's padded input) may be computed at one of the
tile's outer loops (compute_at), a tile's region at a time, instead of in a pass of its own.

Row reductions (softmax, layer normalization: reductions along the inputs' contiguous axis
only) have a second sketch: every such reduction split by rfactor into vector lanes of partial
results, its nest parallel, and the nests optionally merged into one loop over rows.

Other top-level nests (a convolution's padding, a softmax's maxima) get `default(loop)`. Every
decision is a plain value, so a candidate is a dict that mutates and crosses over easily; its
schedule is what the passes accepted, so every schedule in the records replays exactly.
Plugin passes join the space through `extra_steps`: their `schedule_space` instances are
offered as one more decision.
"""
from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

from ..codegen.target import machine_params
from ..ir import Allocate, Buffer, Expr, For, Kernel, Load, Seq, Stmt, Store, Var, loads, walk_stmts
from ..ir.affine import affine_form
from ..ir.machine import AVX512, MachineParams
from ..passes import (CacheRead, CacheWrite, ComputeAt, DefaultNest, Distribute, Fuse, Merge, Pack, Parallel, Pass,
                      Reorder, Rfactor, Schedule, ScheduleError, Split, Unroll, Vectorize, canonical_loops, list_passes)
from ..passes.analysis import variables
from ..passes.registry import BUILTINS

TILE_FACTORS = (1, 2, 3, 4, 6, 7, 8, 16)   # 7: feature maps of 7, 14, 28, 56, 112
VECTOR_FACTORS = (1, 4, 8, 16, 32, 64)
LANE_FACTORS = (8, 16, 32, 64)  # lanes on another loop (they must divide it); 32, 64: 2-4 vectors
UNROLL_FACTORS = (1, 2, 4, 8)
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
    out = []
    for k, loop in enumerate(nest.spatial):
        var = Var(loop.var)
        dims = [d for d, e in enumerate(nest.index) if _moves_with(e, loop.var, loop.extent)]
        if k == vector or len(dims) != 1 or any(loop.var in variables((e,)) for d, e in enumerate(nest.index)
                                                if d != dims[0]):
            continue
        packs, ok = [], True
        # the reduction's loads decide; an epilogue (bias, residual) is read once per output
        # element and may gather across the lanes
        for load in reduction_loads(nest):
            uses = [d for d, e in enumerate(load.indices) if loop.var in variables((e,))]
            if not uses or (uses == [len(load.indices) - 1] and load.indices[-1] == var):
                continue  # a broadcast, or already contiguous along the loop
            if len(uses) == 1 and _moves_with(load.indices[uses[0]], loop.var, loop.extent) \
                    and load.buffer.name in inputs:
                packs.append((load.buffer.name, uses[0]))
            else:
                ok = False
        sizes = [loop.extent] + [inputs[b].shape[d] for b, d in packs]
        factors = tuple(f for f in LANE_FACTORS if all(n % f == 0 for n in sizes))
        if ok and packs and factors:
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
class Sketch:
    """The tiling sketch of one kernel (canonical loop names), with its decision domains."""
    kernel: Kernel
    nest: Nest
    others: tuple[str, ...]                 # roots of the other top-level nests
    vector: int | None                      # position of the vector loop in nest.spatial
    inputs: tuple[str, ...]                 # buffers cache_read may copy
    extra: tuple[Pass, ...] = ()            # plugin passes' instances on the kernel
    lanes: tuple[Lanes, ...] = ()           # other loops that may hold the vector lanes
    rows: tuple[tuple[str, str], ...] = ()  # (nest root, reduction loop) pairs rfactor can split
    stages: tuple[str, ...] = ()            # intermediates the main nest reads (a padded input)
    panels: tuple[str, ...] = ()            # inputs read along the vector loop, a row per reduction step
    machine: MachineParams = AVX512         # the target, whose vector registers tiles must fit

    @classmethod
    def of(cls, kernel: Kernel, machine: MachineParams | None = None) -> Sketch:
        """The sketch of `kernel` for `machine` (default: this host)."""
        machine = machine or machine_params()
        kernel = canonical_loops(kernel)
        nests = top_level_nests(kernel)
        main = max(nests, key=lambda n: n.work)
        vector = None
        if main.index and isinstance(main.index[-1], Var):
            names = [l.var for l in main.spatial]
            if main.index[-1].name in names:
                vector = names.index(main.index[-1].name)
        read = {l.buffer.name for l in loads(kernel.body)}
        inputs = tuple(b.name for b in kernel.inputs if b.name in read)
        extra = tuple(p for name, cls_ in list_passes().items() if name not in BUILTINS
                      for p in cls_.schedule_space(kernel))
        return cls(kernel, main, tuple(n.root for n in nests if n is not main), vector, inputs, extra,
                   lane_choices(kernel, main, vector, machine), row_reductions(kernel, nests), stages_read(kernel, main),
                   panel_inputs(kernel, main, vector), machine)

    # decisions

    def sample(self, rng: random.Random) -> dict:
        loops = self.nest.spatial
        factors = []
        for k, loop in enumerate(loops):
            choices = VECTOR_FACTORS if k == self.vector else TILE_FACTORS
            factors.append(rng.choice([f for f in choices if f <= loop.extent] or [1]))
        d = {"factors": factors, "order": rng.randrange(24), "fuse": rng.choice([1, 2]),
             "unroll": rng.choice(UNROLL_FACTORS), "cache_read": None, "extra": None}
        if self.inputs and rng.random() < 0.5:
            d["cache_read"] = (rng.choice(self.inputs), rng.randrange(4))
        if self.extra and rng.random() < 0.3:
            d["extra"] = rng.randrange(len(self.extra))
        d["lanes"] = self._sample_lanes(rng) if self.lanes and rng.random() < 0.5 else None
        d["rfactor"] = rng.choice(RFACTOR_FACTORS) if self.rows and rng.random() < 0.5 else None
        d["merge_rows"] = bool(self.rows) and rng.random() < 0.5
        d["stage_at"] = rng.randrange(4) if self.stages and rng.random() < 0.6 else None
        d["transpose_store"] = bool(self.lanes) and rng.random() < 0.5
        d["panel"] = bool(self.panels) and rng.random() < 0.5
        d["chunk"] = self._sample_chunk(rng) if rng.random() < 0.3 else None
        return self._bounded(d)

    @functools.cached_property
    def chunk_factors(self) -> tuple[int, ...]:
        """Chunk sizes that divide the outermost reduction loop into two chunks or more."""
        if not self.nest.reduce or self.nest.output is None:
            return ()
        extent = _extent(self.kernel, self.nest.reduce[0])
        return tuple(f for f in CHUNK_FACTORS if f < extent and extent % f == 0)

    def _sample_chunk(self, rng: random.Random) -> tuple[int, int] | None:
        factors = self.chunk_factors
        return (rng.choice(factors), rng.randrange(3)) if factors else None

    def _sample_lanes(self, rng: random.Random) -> tuple[int, int]:
        n = rng.randrange(len(self.lanes))
        return n, rng.choice(self.lanes[n].factors)

    def _lanes(self, d: dict) -> Lanes | None:
        return self.lanes[d["lanes"][0]] if d.get("lanes") and d["lanes"][0] < len(self.lanes) else None

    def vector_loop(self, d: dict) -> int | None:
        """The position of the loop holding the vector lanes under decisions `d`."""
        lanes = self._lanes(d)
        return lanes.loop if lanes else self.vector

    def mutate(self, d: dict, rng: random.Random) -> dict:
        d = {**d, "factors": list(d["factors"])}
        what = rng.choice(["factor", "factor", "order", "fuse", "unroll", "cache_read", "extra", "lanes",
                           "rfactor", "stage_at", "merge_rows", "transpose_store", "panel", "chunk"])
        if what == "factor":
            k = rng.randrange(len(d["factors"]))
            choices = VECTOR_FACTORS if k == self.vector_loop(d) else TILE_FACTORS
            d["factors"][k] = rng.choice([f for f in choices if f <= self.nest.spatial[k].extent] or [1])
        elif what == "order":
            d["order"] = rng.randrange(24)
        elif what == "fuse":
            d["fuse"] = 3 - d["fuse"]
        elif what == "unroll":
            d["unroll"] = rng.choice(UNROLL_FACTORS)
        elif what == "merge_rows":
            d["merge_rows"] = bool(self.rows) and not d.get("merge_rows")
        elif what == "transpose_store":
            d["transpose_store"] = bool(self.lanes) and not d.get("transpose_store")
        elif what == "panel":
            d["panel"] = bool(self.panels) and not d.get("panel")
        elif what == "chunk":
            d["chunk"] = self._sample_chunk(rng) if not d.get("chunk") or rng.random() < 0.5 else None
        elif what == "stage_at":
            d["stage_at"] = rng.choice([None, 0, 1, 2, 3]) if self.stages else None
        elif what == "rfactor":
            d["rfactor"] = rng.choice([None, *RFACTOR_FACTORS]) if self.rows else None
        elif what == "lanes":
            d["lanes"] = self._sample_lanes(rng) if self.lanes and not d.get("lanes") else None
        elif what == "cache_read":
            d["cache_read"] = (rng.choice(self.inputs), rng.randrange(4)) if self.inputs and not d["cache_read"] else None
        elif self.extra:
            d["extra"] = None if d["extra"] is not None else rng.randrange(len(self.extra))
        return self._bounded(d)

    def crossover(self, a: dict, b: dict, rng: random.Random) -> dict:
        child = {k: (a if rng.random() < 0.5 else b)[k] for k in a}
        child["factors"] = [rng.choice(p) for p in zip(a["factors"], b["factors"])]
        return self._bounded(child)

    def adopt(self, d: dict) -> dict | None:
        """Decisions of a similar kernel's sketch (another conv of the same shape of nest) made
        valid here: factors clipped to what each loop offers, choices this sketch lacks dropped.
        None when the nests differ in depth."""
        loops = self.nest.spatial
        if len(d.get("factors", ())) != len(loops):
            return None
        d = {**d}
        lanes = d.get("lanes")
        if lanes and not (lanes[0] < len(self.lanes) and lanes[1] in self.lanes[lanes[0]].factors):
            d["lanes"] = None
        vector = self.vector_loop(d)
        factors = []
        for k, (loop, f) in enumerate(zip(loops, d["factors"])):
            choices = [c for c in (VECTOR_FACTORS if k == vector else TILE_FACTORS) if c <= loop.extent] or [1]
            factors.append(max((c for c in choices if c <= f), default=choices[0]))
        d["factors"] = factors
        if d.get("cache_read") and d["cache_read"][0] not in self.inputs:
            d["cache_read"] = None
        if not self.rows:
            d["rfactor"] = None
        if not self.stages:
            d["stage_at"] = None
        d["panel"] = bool(self.panels) and bool(d.get("panel"))
        if d.get("chunk") and d["chunk"][0] not in self.chunk_factors:
            d["chunk"] = None
        if d.get("extra") is not None and d["extra"] >= len(self.extra):
            d["extra"] = None
        return self._bounded(d)

    def rule_decisions(self) -> list[dict]:
        """A few decisions that rules of thumb expect to be good, measured before random samples
        (as Ansor's initial population starts from rule-built sketches): with a model's 28
        tasks in 30 minutes, a task gets 50-100 trials, too few to find by chance the tile that
        fills the registers. Sizes are in the target's vector registers (L lanes; A accumulators:
        16 with AVX-512, 12 with AVX2). Row reductions: rfactor 16 and 32 lanes. Convolutions
        whose output channels can hold the lanes: 2L lanes × a row tile of 4-8 pixels (2 vectors
        a pixel, at most A), or L lanes × 2 rows of such a tile; the padded input computed per
        output-channel block. Other reductions (matmuls): a vector of up to 2L lanes × the 4-8
        rows that fit."""
        loops = self.nest.spatial
        lanes_per, acc = self.machine.lanes(), self.machine.accumulators
        base = {"factors": [1] * len(loops), "order": 0, "fuse": 1, "unroll": 1, "cache_read": None,
                "extra": None, "lanes": None, "rfactor": None, "merge_rows": False, "stage_at": None,
                "transpose_store": False, "panel": False, "chunk": None}
        out = [{**base, "rfactor": f} for f in (16, 32)] if self.rows else []
        v = self.vector

        def divisor(k, choices):
            return max((c for c in choices if loops[k].extent % c == 0), default=1)
        row = v - 1 if v else None  # the loop of the output's next-to-last dimension
        for n, lanes in enumerate(self.lanes):
            for f in (2 * lanes_per, lanes_per):
                if f not in lanes.factors or v is None:
                    continue
                factors = list(base["factors"])
                if f == lanes_per and row is not None and row != lanes.loop:
                    factors[row] = divisor(row, (2,))
                rows = factors[row] if row is not None else 1
                fit = tuple(c for c in (4, 6, 7, 8) if c * rows * (f // lanes_per) <= acc)
                factors[v] = divisor(v, fit)
                if factors[v] == 1:  # no such divisor (26): the tile that wastes least
                    factors[v] = min((c for c in fit if c >= 6), key=lambda c: (-loops[v].extent % c, -c))
                rule = {**base, "factors": factors, "lanes": (n, f), "stage_at": 0 if self.stages else None}
                out += [rule, {**rule, "transpose_store": True}] if f > lanes_per else [rule]
        if self.nest.reduce and _block_lanes(self.nest, v, self.machine) and row is not None:
            return [self._bounded(d) for d in out + self._block_tiles(base, v, row)]
        if self.nest.reduce and v is not None and not self.rows:
            factors = list(base["factors"])
            factors[v] = divisor(v, tuple(c for c in (8, 16, 32) if c <= 2 * lanes_per))
            if row is not None:
                vectors = -(-factors[v] // lanes_per)
                factors[row] = divisor(row, tuple(c for c in (4, 6, 8) if c * vectors <= acc))
            if factors[v] > 1:  # with its weights in panels if it reads them a row per step
                out.append({**base, "factors": factors, "stage_at": 0 if self.stages else None,
                            "panel": bool(self.panels)})
            if not any({lanes_per, 2 * lanes_per} & set(l.factors) for l in self.lanes):
                out += self._channel_tiles(base, v, row)
        return [self._bounded(d) for d in out]

    def _block_tiles(self, base: dict, v: int, row: int) -> list[dict]:
        """Blocked convolutions (NCHW16c: the vector is a channel block). Where a block is one
        register (AVX-512): a row tile of the whole row (up to 16 pixels) or its largest divisor
        of 4-8, × 1 or 2 channel blocks (at most 16 accumulators). Where it is more (AVX2: two),
        8-12 accumulators as rows × pixels × blocks of 1 × p × 1, 1 × p × 2 or 2 × p × 1
        (Zen 3, a 3x3 conv at 56x56: 1×4×1, 1×2×2 and 2×2×1 all 103-109 GF/s; 1×7×1, 14
        accumulators, 57); 4 blocks of one pixel where the row has no such divisor (7); and
        the widest row tile that 2 registers short of all hold (7 pixels: it spills, but its
        weight loads serve more pixels: ResNet-50's 1x1 convs at 14-28 and its 7x7 convs ran
        50-70 GF/s with it, 37-60 with the 8-accumulator tiles); and all the accumulators in
        one row tile (6 pixels), its last tile peeled where 6 does not divide the row. The padded input computed per outer block or before."""
        loops = self.nest.spatial
        width = loops[row].extent
        height = loops[row - 1].extent if row > 0 else 1
        channel = next((k for k, l in enumerate(loops[:row]) if l.var in variables((self.nest.index[1],))), None)
        blocks_total = loops[channel].extent if channel is not None else 1
        per_pixel = -(-loops[v].extent // self.machine.lanes())  # registers of one pixel's block
        acc = self.machine.accumulators
        tiles = []  # (rows, pixels, blocks)
        if per_pixel == 1:
            for blocks, limit in ((1, acc), (2, acc // 2)):
                pixels = width if width <= limit else max(
                    (c for c in (4, 5, 6, 7, 8) if width % c == 0), default=None)
                if pixels is None and blocks == 1 and width <= self.machine.vector_registers - 2:
                    # a row no 4-8 divides (SqueezeNet's 13, NCHW8c with AVX2) whole: all
                    # in registers still, 1.9 ms against the tuner's best 3.9 without it
                    pixels = width
                if pixels is not None:
                    tiles.append((1, pixels, blocks))
        else:
            for rows, blocks in ((1, 1), (1, 2), (2, 1)):
                most = acc // (rows * blocks * per_pixel)
                pixels = max((c for c in range(1, most + 1) if width % c == 0), default=1)
                if rows * pixels * blocks * per_pixel >= acc * 2 // 3:
                    tiles.append((rows, pixels, blocks))
            if not tiles:
                tiles.append((1, 1, max(b for b in (1, 2, 4) if b * per_pixel <= acc)))
            # all the accumulators in one row tile, its last tile peeled where it does not
            # divide the row (Zen 3: 6 pixels at 56, 28 and 7: the 3x3 convs 98-105 -> 112-123
            # GF/s against 4 pixels; the 1x1 convs at 56 and 28 stay better with 4)
            full = acc // per_pixel
            if width > full and (1, full, 1) not in tiles:
                tiles.append((1, full, 1))
            # a row tile that spills two accumulators but reuses each weight load on more
            # pixels: better where the weights stream from L2 (1x1 and 7x7 convs)
            wide = max(c for c in range(1, (self.machine.vector_registers - 2) // per_pixel + 1) if width % c == 0)
            if (1, wide, 1) not in tiles:
                tiles.append((1, wide, 1))
        out = []
        for rows, pixels, blocks in tiles:
            if height % rows or blocks_total % blocks or (blocks > 1 and channel is None) \
                    or (rows > 1 and row == 0):
                continue
            factors = list(base["factors"])
            factors[v], factors[row] = loops[v].extent, pixels
            if rows > 1:
                factors[row - 1] = rows
            if channel is not None:
                factors[channel] = blocks
            chunk = self._l1_chunk(blocks * loops[v].extent) if rows * pixels * blocks * per_pixel <= 8 else None
            for stage_at in ((0, None) if self.stages else (None,)):
                out.append({**base, "factors": factors, "unroll": 4, "stage_at": stage_at})
                if chunk:
                    out.append({**out[-1], "chunk": (chunk, 0)})
        return out

    def _l1_chunk(self, channels: int) -> int | None:
        """The chunk of the outermost reduction loop whose weights for `channels` output
        channels fill about half of L1 (16 KB), where all of them (over 32 KB) do not: the chunk a tile of
        at most 8 accumulators sweeps over the plane (ResNet-50's 1x1 convs of 512-2048 input
        channels at 7-14 pixels: 0.73 -> 0.58 ms, 1.78 -> 1.43; wider tiles, which spill, and
        3x3 convs, whose chunk of one input block is 9 KB a channel block, gained nothing)."""
        per_step = channels * 4
        for r in self.nest.reduce[1:]:
            per_step *= _extent(self.kernel, r)
        if _extent(self.kernel, self.nest.reduce[0]) * per_step <= self.machine.l1_bytes:
            return None
        fits = [f for f in self.chunk_factors if f * per_step <= self.machine.l1_bytes // 2]
        return max(fits) if fits else None

    def _channel_tiles(self, base: dict, v: int, row: int | None) -> list[dict]:
        """Convolutions whose output channels hold no 16 or 32 lanes (SqueezeNet's 1000
        classes, ShuffleNet's 34-136 channels a group) and whose rows are short (7-28): the
        vector spans a row (or half of a 28-pixel one: a 28-lane vector ran 10x slower) and the
        tile takes 2-8 output channels × the rows that fit, 3-4x the throughput of the tiles
        random samples found there. Tiles divide their loops (a guard on the vector lanes would scalarize them)."""
        loops = self.nest.spatial
        width = loops[v].extent
        lanes = self.machine.lanes()
        # one register's lanes where a divisor allows: with AVX2 a 14-lane vector (two ymm, one
        # partial) ran ShuffleNet's grouped 1x1 conv at 6 GF/s, 7 lanes at 37
        vec = width if width <= lanes else max((d for d in range(lanes // 2 + 1, lanes + 1) if width % d == 0),
                                               default=None)
        if vec is None:
            vec = width if width <= 16 else max((d for d in range(7, 17) if width % d == 0), default=None)
        channel = max((k for k, l in enumerate(loops) if l.var in variables((self.nest.index[1],))),
                      default=None) if len(self.nest.index) >= 3 else None
        if vec is None or width > 32 or channel is None or channel in (v, row):
            return []
        channels = loops[channel].extent
        height = loops[row].extent if row is not None else 1
        budget = self.max_tile()
        c = 4 if channels % 4 == 0 else 2
        tiles = [(c, height if height <= 8 else 8 // c)]  # 8 rows of a vector at most
        if channels % 8 == 0:
            tiles.append((8, 1))
        out = []
        for c, rows in tiles:
            while _tile_size((c, rows, vec), 2) > budget and c > 1 and channels % (c // 2) == 0:
                c //= 2  # fewer channels, all the rows: AVX2's 16 registers
            if channels % c or height % rows or _tile_size((c, rows, vec), 2) > budget:
                continue
            factors = list(base["factors"])
            factors[v], factors[channel] = vec, c
            if row is not None:
                factors[row] = rows
            out.append({**base, "factors": factors, "stage_at": 0 if self.stages else None})
        return out

    def max_tile(self) -> int:
        """The register tile's limit in _tile_size's units (vectors of 8 floats): all registers
        but two for operands, 16 at most (32 with AVX-512's 16 lanes; 14 with AVX2: two spill,
        which the rules' widest row tile accepts, see _block_tiles)."""
        return min(self.machine.vector_registers - 2, 16) * self.machine.lanes() // 8

    def _bounded(self, d: dict) -> dict:
        """Keep the register tile small enough to stay in registers."""
        factors = list(d["factors"])
        vector = self.vector_loop(d)
        while _tile_size(factors, vector) > self.max_tile() and any(
                f > 1 for i, f in enumerate(factors) if i != vector):
            k = max((i for i in range(len(factors)) if i != vector), key=lambda i: factors[i])
            factors[k] = max(f for f in TILE_FACTORS if f < factors[k])
        return {**d, "factors": factors}

    # schedule

    def schedule(self, d: dict) -> Schedule:
        return self.realize(d)[0]

    def realize(self, d: dict) -> tuple[Schedule, Kernel]:
        """The steps the decisions describe and the kernel they make. A step the passes refuse
        is left out (so the schedule replays exactly); steps that name its loops fail with it."""
        if d.get("rfactor") and self.rows:
            return self._realize_rows(d["rfactor"], d.get("merge_rows", False))
        builder = _Builder(self.kernel)
        loops = self.nest.spatial
        lanes = self._lanes(d)
        vector = self.vector_loop(d)
        factors = list(d["factors"])
        if lanes:
            factors[lanes.loop] = d["lanes"][1]
        outer, inner = [], []
        for k, (loop, f) in enumerate(zip(loops, factors)):
            if 1 < f < loop.extent and builder.step(Split(loop.var, f)):
                outer.append(f"{loop.var}_o")
                inner.append((k, f"{loop.var}_i"))
            elif f >= loop.extent and f > 1:
                inner.append((k, loop.var))
            else:
                outer.append(loop.var)
        ones = [n for n in outer if _extent(builder.kernel, n) == 1]  # kept in front, never fused
        outer = [n for n in outer if n not in ones]
        perms = list(itertools.permutations(range(len(outer)))) if len(outer) <= 4 else [tuple(range(len(outer)))]
        outer = [outer[i] for i in perms[d["order"] % len(perms)]]
        inner.sort(key=lambda t: (t[0] == vector, t[0]))
        tile = [name for _, name in inner]
        band = ones + outer + tile
        if len(band) > 1:
            builder.step(Reorder(tuple(band)))
        vector_name = next((name for k, name in inner if k == vector), None)
        compute_tile = tile
        if self.nest.reduce and outer and tile and self.nest.output is not None:
            out = self.nest.output.name
            rank = len(self.nest.output.shape)
            layout = ()
            if lanes:  # the lanes' dimension last, so each accumulator is one vector
                layout = tuple(x for x in range(rank) if x != lanes.out_dim) + (lanes.out_dim,)
            accumulators = [out]
            chunk = d.get("chunk")
            if chunk and len(outer) >= 2 and chunk[0] in self.chunk_factors:
                outer, compute_tile = self._chunked(builder, d, out, layout, outer, tile)
                accumulators.append(f"{out}_local")
            elif builder.step(CacheWrite(out, outer[-1], layout)) and builder.step(Distribute(tile[0])):
                compute_tile = [builder.renamed(n) for n in tile]
                if builder.step(Reorder(tuple(self.nest.reduce) + tuple(compute_tile))):
                    self._unroll_reduction(builder, d, chunked=False)
            for name in accumulators:  # the register tile's copies unrolled, not a chunk's plane
                self._copy_loops(builder, d, name, rank, lanes, layout, unroll=name == accumulators[-1])
        if d.get("stage_at") is not None and outer:
            # each padded input computed where it is read, one tile's region at a time: no
            # pass over the whole padded copy before the main nest (before fuse: its indices
            # must stay affine)
            at = outer[d["stage_at"] % len(outer)]
            for stage in self.stages:
                builder.step(ComputeAt(stage, at))
        for buffer, dim in lanes.packs if lanes else ():
            rank = len(self._buffer_shape(buffer))
            builder.step(Pack(buffer, dim, d["lanes"][1],
                              tuple(x for x in range(rank + 1) if x != dim + 1) + (dim + 1,)))
        if d.get("panel") and not lanes and vector_name is not None:
            # a matmul's weights B[k, n] read a row per reduction step, with the vector tile's
            # columns: blocked into panels [n / tile][k][tile], each tile's stream contiguous
            # (a row stride of 3 KB outran the prefetcher: 2-4x slower on BERT's matmuls)
            for buffer in self.panels:
                rank = len(self._buffer_shape(buffer))
                builder.step(Pack(buffer, rank - 1, factors[vector], (rank - 1, *range(rank - 1), rank)))
        if d["cache_read"] and outer:
            buffer, at = d["cache_read"]
            builder.step(CacheRead(buffer, outer[at % len(outer)]))
            builder.step(Vectorize(f"{buffer}_c{len(self._buffer_shape(buffer)) - 1}"))
        # fused last: tiles and copies need the outer loops' plain (affine) indices
        if len(outer) >= 2 and d["fuse"] == 2 and builder.step(Fuse(outer[0], outer[1])):
            outer = [f"{outer[0]}_{outer[1]}"] + outer[2:]
        if outer:
            builder.step(Parallel(outer[0]))
        # the tile loops of the init, reduction and epilogue nests (after distribute)
        epilogues = [[builder.renamed(n, c) for n in tile] for c in range(1, len(builder.copies(tile[0])))] if tile else []
        vector_names = {vector_name} | set(builder.copies(vector_name or ""))
        for names in [list(tile), compute_tile] + epilogues:
            for n in names:
                if n in vector_names:
                    builder.step(Vectorize(n))
                else:
                    builder.step(Unroll(n), max_extent=16)
        for root in self.others:
            builder.step(DefaultNest.for_machine(root, self.machine))
        if d.get("extra") is not None and d["extra"] < len(self.extra):
            builder.step(self.extra[d["extra"]])
        return Schedule(tuple(builder.steps)), builder.kernel

    def _chunked(self, builder: _Builder, d: dict, out: str, layout, outer: list[str],
                 tile: list[str]) -> tuple[list[str], list[str]]:
        """The reduction in chunks (MLAS's pointwise convolutions): the outermost reduction loop
        split, its chunks outermost below outer loop `at`, so each chunk of the weights (a few
        KB) serves every tile below `at` from L1 instead of streaming whole from L2 per tile.
        The partial sums of the tiles below `at` live in an outer accumulator (cache_write at
        `at`), each tile's in registers (cache_write at the last outer loop). ResNet-50's
        2048->512 1x1 conv at 7x7 (Zen 3): 0.86 -> 0.70 ms. Returns the outer loops of the
        reduction's nest and its register tile's loops."""
        factor, level = d["chunk"]
        at = level % (len(outer) - 1)
        first, rest = self.nest.reduce[0], tuple(self.nest.reduce[1:])
        if not (builder.step(Split(first, factor)) and builder.step(CacheWrite(out, outer[at], layout))
                and builder.step(Distribute(outer[at + 1]))):
            return outer, tile
        below = [builder.renamed(n) for n in outer[at + 1:]]
        compute_tile = [builder.renamed(n) for n in tile]
        if builder.step(Reorder((f"{first}_o", *below, f"{first}_i", *rest, *compute_tile))) \
                and builder.step(CacheWrite(f"{out}_local", below[-1])):
            self._unroll_reduction(builder, d, chunked=True)
        return outer[:at + 1] + below, compute_tile

    def _unroll_reduction(self, builder: _Builder, d: dict, chunked: bool) -> None:
        """Unroll the innermost reduction loop by d["unroll"] (a chunked matmul's: r0_i)."""
        last = self.nest.reduce[-1]
        if len(self.nest.reduce) == 1 and chunked:
            last = f"{last}_i"
        if d["unroll"] > 1 and builder.step(Split(last, d["unroll"])):
            builder.step(Unroll(f"{last}_i"))

    @staticmethod
    def _copy_loops(builder: _Builder, d: dict, out: str, rank: int, lanes, layout, unroll: bool) -> None:
        """Vectorize (and unroll) the loops that copy accumulator `out` in (r) and back (w)."""
        for tag in ("w", "r"):
            names = [f"{out}_{tag}{i}" for i in range(rank)]
            if names[-1] not in builder.extents():  # no such copy (an initialized tile has no copy-in)
                continue
            if tag == "w" and lanes and d.get("transpose_store"):
                # the lanes' dimension is not the output's contiguous one: store along
                # the output's last dimension (one vector store, a strided read of the
                # accumulator) instead of scattering each lane to its own channel
                at = layout.index(rank - 1)
                band = names[:at] + [names[-1]] + names[at:-1]
                if builder.step(Reorder(tuple(band))):
                    names = band[:at + 1] + band[at + 2:] + [band[at + 1]]
            builder.step(Vectorize(names[-1]))
            for n in names[:-1] if unroll else ():
                builder.step(Unroll(n), max_extent=16)

    def _realize_rows(self, factor: int, merge: bool) -> tuple[Schedule, Kernel]:
        """Row reductions (softmax, layer norm, reduce-mean over the contiguous axis): each
        reduction split into `factor` vector lanes of partial results, its nest parallel; the
        other nests get the default schedule. With `merge`, the nests run as one loop over rows
        (one parallel region; a row stays in cache across them) wherever merge allows."""
        builder = _Builder(self.kernel)
        split_roots = set()
        for root, loop in self.rows:
            if builder.step(Rfactor(loop, factor)):
                builder.step(Vectorize(f"{loop}_i"))
                builder.step(Vectorize(f"{loop}_z"))
                split_roots.add(root)
        nests = top_level_nests(self.kernel)
        roots = [n.root for n in nests]
        for nest in nests:
            if nest.root in split_roots:
                # the first loop with work to share (a matrix-vector product's rows are i1,
                # inside an i0 of extent 1)
                builder.step(Parallel(next((l.var for l in nest.spatial if l.extent > 1), nest.root)))
            else:
                builder.step(DefaultNest.for_machine(nest.root, self.machine))
        if merge:
            into = roots[0]
            for root in roots[1:]:
                if not builder.step(Merge(into, root)):
                    into = root  # a nest that cannot join starts the next group
        return Schedule(tuple(builder.steps)), builder.kernel

    def _buffer_shape(self, name: str) -> tuple[int, ...]:
        return next(b.shape for b in self.kernel.inputs if b.name == name)


def row_reductions(kernel: Kernel, nests: list[Nest]) -> tuple[tuple[str, str], ...]:
    """(nest root, loop) of every reduction loop that reads inputs along their contiguous axis,
    and only along it, and that rfactor splits at some RFACTOR_FACTORS width."""
    out = []
    for nest in nests:
        spatial = {Var(l.var) for l in nest.spatial}
        for loop in (s for s in walk_stmts(nest.spatial[0]) if isinstance(s, For) and s.axis == "reduce"):
            last = {l.indices[-1] for l in loads(loop.body) if l.indices}
            # along the reduction only: where a spatial loop is contiguous too (a matmul's
            # columns), vectorizing that loop is better and the tiling sketch does it
            if Var(loop.var) in last and not last & spatial and any(
                    _accepts(Rfactor(loop.var, f), kernel) for f in RFACTOR_FACTORS):
                out.append((nest.root, loop.var))
    return tuple(out)


def reduction_loads(nest: Nest) -> list[Load]:
    """The loads of the nest's reduction updates (`Out += ...`), not of its init or epilogue."""
    updates = [x for x in walk_stmts(nest.spatial[-1].body) if isinstance(x, Store) and x.reduce is not None]
    return [l for x in updates for l in loads(x.value)]


def panel_inputs(kernel: Kernel, main: Nest, vector: int | None) -> tuple[str, ...]:
    """Inputs of the main nest's reduction indexed by the vector loop alone in their last
    dimension and by a reduction loop in another: a matmul's B[k, n]."""
    if vector is None or not main.reduce:
        return ()
    var = main.spatial[vector].var
    inputs = {b.name for b in kernel.inputs}
    out = []
    for load in reduction_loads(main):
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


def _tile_size(factors, vector) -> int:
    """A register tile's size in vectors of 8 floats (the vector loop's lanes / 8)."""
    size = 1
    for k, f in enumerate(factors):
        size *= max(1, f // 8) if k == vector else f
    return size


class _Builder:
    """Applies steps as they are chosen, keeping those the passes accept."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.steps: list[Pass] = []
        self.names: dict[str, list[str]] = {}
        self._extents: tuple[Kernel | None, dict[str, int]] = (None, {})

    def extents(self) -> dict[str, int]:
        """The current kernel's loops and their extents (computed once per kernel)."""
        if self._extents[0] is not self.kernel:
            self._extents = (self.kernel, {s.var: s.extent for s in walk_stmts(self.kernel.body)
                                           if isinstance(s, For)})
        return self._extents[1]

    def step(self, step: Pass, max_extent: int | None = None) -> bool:
        if max_extent is not None and self.extents().get(getattr(step, "loop", None), max_extent + 1) > max_extent:
            return False
        before = set(self.extents()) if isinstance(step, Distribute) else set()
        try:
            self.kernel = step.apply(self.kernel)
        except ScheduleError:
            return False
        if isinstance(step, Distribute):  # the copies' loops: `x` became `x_1`, `x_2`, ... in order
            after = list(self.extents())
            for name in after:
                base = name.rsplit("_", 1)[0]
                if name not in before and base in before:
                    self.names.setdefault(base, []).append(name)
        self.steps.append(step)
        return True

    def renamed(self, name: str, copy: int = 0) -> str:
        """The loop `name` of the `copy`-th nest a distribute made (0: the first new one, the
        reduction of `init; reduce; epilogue`); `name` itself where there is none."""
        copies = self.names.get(name, [])
        return copies[copy] if copy < len(copies) else name

    def copies(self, name: str) -> list[str]:
        return self.names.get(name, [])
