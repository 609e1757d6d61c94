"""Annotation passes: they change how a loop runs (kind), never which iterations it runs."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import For, Kernel, Store, walk_stmts
from .analysis import independence_problem
from .base import Pass, Site, find_loop, loop_ref, loop_sites, replace_loop

MAX_VECTOR = 64     # lanes: longer vectorized loops only bloat the code
MAX_UNROLL = 64     # iterations a loop may be unrolled into
SPACE_UNROLL = 16   # the longest loops the schedule space offers to unroll
GPU_AXES = ("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z")


def _annotated(kernel: Kernel, site: Site, kind: str) -> Kernel:
    loop = site.loop
    return replace_loop(kernel, site, For(loop.var, loop.extent, loop.body, kind, loop.axis))


def _inner_loops(site: Site) -> list[For]:
    return [s for s in walk_stmts(site.loop.body) if isinstance(s, For)]


def _check_free(step: Pass, site: Site, spatial: bool) -> None:
    """The loop is serial, spatial when `spatial`, and its iterations are independent."""
    loop = site.loop
    if loop.kind != "serial":
        raise step.fail(loop.var, f"is already {loop.kind}")
    if spatial and loop.axis != "spatial":
        raise step.fail(loop.var, f"is a {loop.axis} loop; only spatial loops can run concurrently")
    problem = independence_problem(loop, site.outer)
    if problem:
        raise step.fail(loop.var, f"its iterations are not independent: {problem}")


def _cooperative(inner: For, outer: For) -> bool:
    """Whether `inner` may take the GPU axis `outer` already has: it only fills shared memory
    (a cooperative fetch: the block's threads split the copy, each doing the iterations of its
    own index, and TVM puts a barrier before the copy is read), and no wider than `outer`, whose
    threads are the ones launched."""
    stores = [s for s in walk_stmts(inner.body) if isinstance(s, Store)]
    return bool(stores) and all(s.buffer.scope == "shared" for s in stores) and inner.extent <= outer.extent


def _candidates(kernel: Kernel, make) -> list[Pass]:
    sites = loop_sites(kernel.body)
    return [p for s in sites for p in make(s, loop_ref(s, sites))]


@dataclass(frozen=True)
class Parallel(Pass):
    """Run the iterations of a spatial loop on several threads (not nested in another)."""
    name = "parallel"
    creates = False
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        _check_free(self, site, spatial=True)
        others = site.outer + tuple(_inner_loops(site))
        clash = next((l for l in others if l.kind == "parallel" or l.kind in GPU_AXES), None)
        if clash:  # TVM's CPU backend runs no nested parallel loops
            raise self.fail(self.loop, f"loop {clash.var} around or inside it is already {clash.kind}")
        return _annotated(kernel, site, "parallel")

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        return cls.legal(kernel, _candidates(kernel, lambda s, ref: [cls(ref)] if s.loop.extent > 1 else []))


@dataclass(frozen=True)
class Vectorize(Pass):
    """Run an innermost spatial loop (no loops inside it) as one vector of at most MAX_VECTOR lanes."""
    name = "vectorize"
    creates = False
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        if _inner_loops(site):
            raise self.fail(self.loop, "is not innermost: only a loop with no loops inside vectorizes")
        if site.loop.extent > MAX_VECTOR:
            raise self.fail(self.loop, f"extent {site.loop.extent} exceeds {MAX_VECTOR} lanes; split it first")
        _check_free(self, site, spatial=True)
        return _annotated(kernel, site, "vectorized")

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        return cls.legal(kernel, _candidates(kernel, lambda s, ref: [cls(ref)]))


@dataclass(frozen=True)
class Unroll(Pass):
    """Unroll a loop of at most MAX_UNROLL iterations (any axis: the order is unchanged)."""
    name = "unroll"
    creates = False
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        if site.loop.kind != "serial":
            raise self.fail(self.loop, f"is already {site.loop.kind}")
        if site.loop.extent > MAX_UNROLL:
            raise self.fail(self.loop, f"extent {site.loop.extent} exceeds {MAX_UNROLL}; split it first")
        return _annotated(kernel, site, "unrolled")

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        return cls.legal(kernel, _candidates(
            kernel, lambda s, ref: [cls(ref)] if 1 < s.loop.extent <= SPACE_UNROLL else []))


@dataclass(frozen=True)
class Bind(Pass):
    """Bind a spatial loop to a GPU block or thread axis."""
    name = "bind"
    creates = False
    loop: str
    axis: str

    def apply(self, kernel: Kernel) -> Kernel:
        if self.axis not in GPU_AXES:
            raise self.fail(self.loop, f"unknown GPU axis {self.axis!r}; one of {', '.join(GPU_AXES)}")
        site = find_loop(kernel, self.loop, self)
        _check_free(self, site, spatial=True)
        for other in site.outer:
            if other.kind in ("parallel", "vectorized") or (other.kind == self.axis and not _cooperative(site.loop, other)):
                raise self.fail(self.loop, f"loop {other.var} around it is {other.kind}")
        for other in _inner_loops(site):  # a vector inside stays: one thread's wide load or store
            if other.kind == "parallel" or (other.kind == self.axis and not _cooperative(other, site.loop)):
                raise self.fail(self.loop, f"loop {other.var} inside it is {other.kind}")
        return _annotated(kernel, site, self.axis)

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        return cls.legal(kernel, _candidates(
            kernel, lambda s, ref: [cls(ref, a) for a in ("blockIdx.x", "threadIdx.x")]))
