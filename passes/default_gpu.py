"""The untuned default schedule on a GPU: one thread per output point.

On a GPU, the outer perfect band of independent spatial loops of each nest is fused (the loop
that walks the stores' contiguous index innermost, so neighbouring threads touch neighbouring
addresses), split by a thread count and bound to blockIdx.x / threadIdx.x: each thread computes
one output point, with any reduction inside it. What has no such band (a reduction to a scalar,
a recurrence, a statement outside any loop) runs on one thread. Sibling nests become separate
launches (TVM splits the kernel at each bound nest), so they still run in order.
"""
from __future__ import annotations

from .analysis import independence_problem
from .annotate import Bind
from .base import ScheduleError, fresh_name, loop_names, loop_ref, loop_sites, replace_loop
from .loops import Fuse, Reorder, Split
from ..ir import Allocate, For, Kernel, Seq, Stmt, Store, replace_body, seq, walk_stmts
from ..ir.affine import affine_form
from ..ir.machine import MachineParams

GPU_THREADS = 256              # threads of a block, where the nest has that many points


def gpu_threads(machine: MachineParams) -> int:
    """Threads of a block on `machine`: GPU_THREADS, within its limit, in whole warps."""
    warp = max(machine.warp_size, 1)
    return max(warp, min(GPU_THREADS, machine.max_threads_per_block) // warp * warp)


def gpu_schedule(kernel: Kernel, threads: int) -> Kernel:
    kernel = replace_body(kernel, _one_thread_runs(kernel.body, loop_names(kernel)))
    nests = [s.index for s in loop_sites(kernel.body) if not s.outer and s.loop.kind == "serial"]
    for index in reversed(nests):  # the last first: binding a nest moves the loops after it
        kernel = bind_nest(kernel, index, threads)
    return kernel


def _one_thread_runs(stmt: Stmt, taken: set[str]) -> Stmt:
    """`stmt` (through Seq and Allocate) with each run of consecutive statements that have no
    band to bind (a lone store, a reduction to a scalar) wrapped to run on one GPU thread: one
    launch for the run instead of one each."""
    if isinstance(stmt, Allocate):
        return Allocate(stmt.buffer, _one_thread_runs(stmt.body, taken))
    if not isinstance(stmt, Seq):
        return stmt if _bindable(stmt) else _on_one_thread(stmt, taken)
    parts, run = [], []
    for part in stmt.stmts:
        if isinstance(part, (Seq, Allocate)) or _bindable(part):
            if run:
                parts.append(_on_one_thread(seq(*run), taken))
                run = []
            parts.append(_one_thread_runs(part, taken))
        else:
            run.append(part)
    if run:
        parts.append(_on_one_thread(seq(*run), taken))
    return seq(*parts)


def _bindable(stmt: Stmt) -> bool:
    return isinstance(stmt, For) and (stmt.kind != "serial" or bool(_band(stmt)))


def _on_one_thread(stmt: Stmt, taken: set[str]) -> For:
    block, thread = fresh_name("block", taken), fresh_name("thread", taken)
    return For(block, 1, For(thread, 1, stmt, "threadIdx.x"), "blockIdx.x")


def _band(loop: Stmt) -> list[For]:
    """The outer perfect band of serial spatial loops whose iterations are independent, from `loop`."""
    band: list[For] = []
    while (isinstance(loop, For) and loop.kind == "serial" and loop.axis == "spatial"
           and independence_problem(loop, band) is None):
        band.append(loop)
        loop = loop.body
    return band


def bind_nest(kernel: Kernel, index: int, threads: int) -> Kernel:
    """The kernel with the top-level nest at pre-order `index` on GPU threads: its band fused
    (the contiguous loop innermost), split by `threads` (fewer where the band is smaller) and
    bound; on one thread where it has no band."""
    sites = loop_sites(kernel.body)
    band = _band(sites[index].loop)
    if not band:
        return replace_loop(kernel, sites[index], _on_one_thread(sites[index].loop, loop_names(kernel)))
    contiguous = _contiguous_position(band)
    if contiguous != len(band) - 1:
        order = [p for p in range(len(band)) if p != contiguous] + [contiguous]
        try:
            kernel = Reorder(tuple(_ref(kernel, index + p) for p in order)).apply(kernel)
        except ScheduleError:
            pass  # the order as it is: uncoalesced, still right
    fused = _ref(kernel, index)
    for _ in band[1:]:  # the band's next loop is always the one directly inside the fused one
        kernel, made = Fuse(fused, _ref(kernel, index + 1)).trace(kernel)
        fused = made.one("fused")
    extent = loop_sites(kernel.body)[index].loop.extent
    kernel, made = Split(fused, min(threads, extent)).trace(kernel)
    kernel = Bind(made.one("outer"), "blockIdx.x").apply(kernel)
    return Bind(made.one("inner"), "threadIdx.x").apply(kernel)


def _ref(kernel: Kernel, index: int) -> str:
    sites = loop_sites(kernel.body)
    return loop_ref(sites[index], sites)


def _contiguous_position(band: list[For]) -> int:
    """Position in `band` of the loop with the shortest nonzero stride through the stores' flat
    addresses (the innermost one on ties, and where no store is affine in the band)."""
    stores = [s for s in walk_stmts(band[-1].body) if isinstance(s, Store)]
    flats = [f for f in (_flat_strides(s) for s in stores) if f is not None]

    def stride(position: int) -> float:
        steps = [abs(f.get(band[position].var, 0)) for f in flats]
        return max(steps) if steps and max(steps) else float("inf")
    return min(reversed(range(len(band))), key=stride)


def _flat_strides(store: Store) -> dict[str, int] | None:
    """Variable -> elements the store's address moves when the variable steps by one (row-major),
    None where an index is not affine."""
    strides: dict[str, int] = {}
    row = 1
    for index, dim in zip(reversed(store.indices), reversed(store.buffer.shape)):
        form = affine_form(index)
        if form is None:
            return None
        for var, coef in form[0].items():
            strides[var] = strides.get(var, 0) + coef * row
        row *= dim
    return strides
