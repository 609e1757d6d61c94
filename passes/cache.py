"""Caching passes: keep the tile a loop iteration works on in a small local buffer.

cache_write(Out, L): inside each iteration of L, accumulate into `Out_local` (the region of Out
the iteration writes) and write it back once at the end of the iteration. With the accumulator
small and its indices constant after unrolling, LLVM keeps it in registers.

cache_read(B, L, scope, order): at the start of each iteration of L, copy the region of B the
iteration reads into `B_local`, in the dimension order given (`order[k]` = which dimension of B
is dimension k of the copy), and read the copy instead. With `scope=shared` this is the GPU
staging of a tile in shared memory (bind the copy loops to threads).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Allocate, Buffer, For, If, Kernel, Load, Stmt, Store, Var, seq, walk, walk_stmts
from ..ir.visit import rewrite_stmt, stmt_exprs
from .base import (Pass, Site, buffer_names, find_buffer, find_loop, fresh_name, loop_names,
                   loop_sites, loop_ref, replace_loop)
from .region import Region, accesses, inner_extents, local_index, region_of, split_index

MAX_LOCAL_ELEMENTS = 1 << 20   # a larger "local" copy is a mistake, not a cache
SCOPES = ("local", "shared")


def _outer_extents(site: Site) -> dict[str, int]:
    return {l.var: l.extent for l in site.outer + (site.loop,)}


def _copy_nest(names: list[str], extents, store: Stmt) -> Stmt:
    for name, extent in reversed(list(zip(names, extents))):
        store = For(name, extent, store)
    return store


def _redirect(body: Stmt, buffer: Buffer, to: Buffer, index) -> Stmt:
    """`body` with every access of `buffer` turned into an access of `to` at `index(indices)`."""
    def expr_fn(e):
        if isinstance(e, Load) and e.buffer.name == buffer.name:
            return Load(to, index(e.indices))
        return None

    def stmt_fn(s):
        if isinstance(s, Store) and s.buffer.name == buffer.name:
            return Store(to, index(s.indices), s.value, s.reduce)
        return None
    return rewrite_stmt(body, expr_fn, stmt_fn)


def _dense(coefs: dict[str, int], extents: dict[str, int]) -> bool:
    """Whether `sum(c * v)` over loops of these extents visits 0, 1, 2, ... in turn (a split loop
    put back together, `i_o * 4 + i_i`): coefficients 1, n1, n1 * n2, ..."""
    step = 1
    for var, c in sorted(coefs.items(), key=lambda t: t[1]):
        if c != step:
            return False
        step *= extents[var]
    return True


def _check_site(step: Pass, site: Site) -> None:
    if site.loop.kind == "vectorized":
        raise step.fail(site.loop.var, "is vectorized; a vector loop holds no statements but its body")


def _local_buffer(step: Pass, kernel: Kernel, buffer: Buffer, shape, scope: str) -> Buffer:
    size = 1
    for n in shape:
        size *= n
    if size > MAX_LOCAL_ELEMENTS:
        raise step.fail(None, f"the tile of {buffer.name} is {list(shape)} = {size} elements; "
                              f"cache at a deeper loop")
    return Buffer(fresh_name(f"{buffer.name}_{scope}", buffer_names(kernel)), tuple(shape),
                  buffer.dtype, scope)


def _first_access_initializes(body: Stmt, buffer: Buffer, varying: set[str]) -> bool:
    """Whether, in program order, `buffer` is first touched by a plain store (not under a
    condition, not reading the buffer) inside loops over every variable of the tile: then each
    element of the tile is written before it is read, and the tile needs no copy-in."""
    def first(s: Stmt, loops: frozenset, guarded: bool):
        if isinstance(s, For):
            return first(s.body, loops | {s.var}, guarded)
        if isinstance(s, Allocate):
            return first(s.body, loops, guarded)
        touches = any(isinstance(x, Load) and x.buffer.name == buffer.name
                      for e in stmt_exprs(s) for x in walk(e))
        if isinstance(s, Store):
            if s.buffer.name == buffer.name:
                return s.reduce is None and not touches and not guarded and varying <= loops
            return False if touches else None
        if isinstance(s, If):
            if touches:
                return False
            for part in (s.then, s.otherwise):
                found = None if part is None else first(part, loops, True)
                if found is not None:
                    return found
            return None
        for part in s.stmts:  # Seq
            found = first(part, loops, guarded)
            if found is not None:
                return found
        return None
    return bool(first(body, frozenset(), False))


@dataclass(frozen=True)
class CacheWrite(Pass):
    """Accumulate the tile of `buffer` that one iteration of `loop` writes in a local buffer, its
    dimensions in `order` (default: as in `buffer`), and store it back once, at the end of the
    iteration (loops `<buffer>_w0`, `_w1`, ..., one per dimension of the local buffer). An order
    that puts the vectorized dimension last keeps each accumulator one contiguous vector (output
    channels of an NCHW convolution, say)."""
    name = "cache_write"
    buffer: str
    loop: str
    order: tuple[int, ...] = ()

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        _check_site(self, site)
        buffer = find_buffer(kernel, self.buffer, self)
        body = site.loop.body
        if any(isinstance(s, Allocate) and s.buffer == buffer for s in walk_stmts(body)):
            raise self.fail(self.loop, f"{buffer.name} is allocated inside it; the write-back "
                                       f"would land outside its allocation")
        stores, loaded = accesses(body, buffer)
        if not stores:
            raise self.fail(self.loop, f"{buffer.name} is not written inside it")
        indices = {s.indices for s in stores} | {l.indices for l in loaded}
        if len(indices) > 1:
            raise self.fail(self.loop, f"{buffer.name} is accessed at {len(indices)} different "
                                       f"indices inside it; cache_write needs one")
        (index,) = indices
        order = self.order or tuple(range(len(buffer.shape)))
        if sorted(order) != list(range(len(buffer.shape))):
            raise self.fail(self.loop, f"order {list(order)} is not a permutation of the "
                                       f"{len(buffer.shape)} dimensions of {buffer.name}")
        inner = inner_extents(body)
        region = region_of(buffer, [index], inner)
        if isinstance(region, str):
            raise self.fail(self.loop, region)
        varying: set[str] = set()
        for d, e in enumerate(index):
            _, coefs, _ = split_index(e, inner)
            if not _dense(coefs, inner) or varying & set(coefs):
                raise self.fail(self.loop, f"index {d} of {buffer.name} does not walk a dense tile "
                                           f"(each dimension must follow inner loops of its own, "
                                           f"step 1: i or i_o * n + i_i with n the extent of i_i)")
            varying |= set(coefs)
        local = _local_buffer(self, kernel, buffer, [region.extents[d] for d in order], "local")

        def index(idx):
            rel = local_index(region, idx, inner)
            return tuple(rel[d] for d in order)
        new_body = _redirect(body, buffer, local, index)

        taken = loop_names(kernel)
        outer = _outer_extents(site)
        write_back = self._copy(region, order, local, taken, outer, "w", into_local=False)
        copy_in = None
        if not _first_access_initializes(body, buffer, varying):
            copy_in = self._copy(region, order, local, taken, outer, "r", into_local=True)
        loop = site.loop
        new = Allocate(local, seq(copy_in, new_body, write_back))
        return replace_loop(kernel, site, For(loop.var, loop.extent, new, loop.kind, loop.axis))

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """`read`: the loops copying the tile in (where its first access does not initialize
        it), `write`: those storing it back; one per dimension of the local buffer each."""
        rank = len(find_buffer(before, self.buffer, self).shape)
        return {"read": new[:-rank], "write": new[-rank:]}

    def _copy(self, region: Region, order, local: Buffer, taken, outer, tag: str,
              into_local: bool) -> Stmt:
        """The copy nest between the tile and the local buffer; loop k walks local dimension k."""
        names = [fresh_name(f"{region.buffer.name}_{tag}{k}", taken) for k in range(len(order))]
        offsets = [None] * len(order)
        for k, d in enumerate(order):
            offsets[d] = Var(names[k])
        outside = tuple(region.start(d, o) for d, o in enumerate(offsets))
        inside = tuple(Var(n) for n in names)
        if into_local:
            store = Store(local, inside, Load(region.buffer, outside))
        else:
            store = Store(region.buffer, outside, Load(local, inside))
        guard = region.bounds_guard(offsets, outer)
        return _copy_nest(names, local.shape, If(guard, store) if guard is not None else store)

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        written = {s.buffer.name for s in walk_stmts(kernel.body) if isinstance(s, Store)}
        return cls.legal(kernel, [cls(b, loop_ref(s, sites)) for s in sites for b in sorted(written)
                                  if isinstance(s.loop.body, For) or s.loop.kind == "serial"])


@dataclass(frozen=True)
class CacheRead(Pass):
    """Copy the region of `buffer` that one iteration of `loop` reads into a `scope` buffer
    (local or shared) at the start of the iteration, dimensions in `order` (default: as in
    `buffer`), and read the copy (loops `<buffer>_c0`, `_c1`, ..., outermost first). A shared
    copy holds what all threads of the block read (the threadIdx loops around it vary)."""
    name = "cache_read"
    buffer: str
    loop: str
    scope: str = "local"
    order: tuple[int, ...] = ()

    def apply(self, kernel: Kernel) -> Kernel:
        if self.scope not in SCOPES:
            raise self.fail(self.loop, f"scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        site = find_loop(kernel, self.loop, self)
        _check_site(self, site)
        buffer = find_buffer(kernel, self.buffer, self)
        body = site.loop.body
        stores, loaded = accesses(body, buffer)
        if stores:
            raise self.fail(self.loop, f"{buffer.name} is written inside it; a copy would go stale")
        if not loaded:
            raise self.fail(self.loop, f"{buffer.name} is not read inside it")
        order = self.order or tuple(range(len(buffer.shape)))
        if sorted(order) != list(range(len(buffer.shape))):
            raise self.fail(self.loop, f"order {list(order)} is not a permutation of the "
                                       f"{len(buffer.shape)} dimensions of {buffer.name}")
        inner = inner_extents(body)
        if self.scope == "shared":  # shared by the block's threads: what all of them read
            inner.update({l.var: l.extent for l in site.outer if l.kind.startswith("threadIdx")})
        region = region_of(buffer, [l.indices for l in loaded], inner)
        if isinstance(region, str):
            raise self.fail(self.loop, region)
        local = _local_buffer(self, kernel, buffer, [region.extents[d] for d in order], self.scope)

        def index(idx):
            rel = local_index(region, idx, inner)
            return tuple(rel[d] for d in order)
        new_body = _redirect(body, buffer, local, index)

        names = [fresh_name(f"{buffer.name}_c{k}", loop_names(kernel)) for k in range(len(order))]
        offsets = [None] * len(order)
        for k, d in enumerate(order):
            offsets[d] = Var(names[k])
        store = Store(local, tuple(Var(n) for n in names),
                      Load(buffer, tuple(region.start(d, o) for d, o in enumerate(offsets))))
        guard = region.bounds_guard(offsets, _outer_extents(site))
        copy = _copy_nest(names, local.shape, If(guard, store) if guard is not None else store)
        loop = site.loop
        new = Allocate(local, seq(copy, new_body))
        return replace_loop(kernel, site, For(loop.var, loop.extent, new, loop.kind, loop.axis))

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        return {"copy": new}

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(b.name, loop_ref(s, sites)) for s in sites for b in kernel.inputs])
