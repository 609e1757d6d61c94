"""Loop-structure passes: split, tile, reorder, fuse.

They restructure serial loops only: annotations (parallel, vectorize, ...) come last in a
schedule, so a pass never has to decide what an annotation means on a loop it rewrites.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..ir import For, If, Kernel, Seq, Stmt, Var, logical_and, lt, substitute
from .analysis import determined_vars, loop_extents, reorder_problem, written_uses
from .base import Pass, Site, find_loop, fresh_name, loop_names, loop_ref, loop_sites, replace_loop

TILE_FACTORS = (2, 4, 8, 16, 32)  # the tile sizes schedule spaces offer


def powers_of_two_below(extent: int) -> list[int]:
    return [f for f in (2 ** k for k in range(1, extent.bit_length())) if f < extent]


def _serial(step: Pass, loops) -> None:
    for loop in loops:
        if loop.kind != "serial":
            raise step.fail(loop.var, f"is already {loop.kind}; restructure loops before annotating them")


def _band(step: Pass, kernel: Kernel, refs) -> list[Site]:
    """The loops named by `refs`, in the order given; sorted by depth they must form a perfect
    nest, each loop the whole body of the one before."""
    if not refs:
        raise step.fail(None, "names no loop")
    sites = [find_loop(kernel, r, step) for r in refs]
    if len({s.index for s in sites}) != len(sites):
        raise step.fail(None, "a loop is named twice")
    chain = _outer_to_inner(sites)
    for a, b in zip(chain, chain[1:]):
        if not (isinstance(_unguarded(a.loop.body)[0], For) and b.index == a.index + 1):
            raise step.fail(b.loop.var, f"is not directly and alone inside loop {a.loop.var} "
                                        f"(the loops must be perfectly nested)")
    _serial(step, [s.loop for s in chain])
    return sites


def _unguarded(stmt: Stmt) -> tuple[Stmt, list]:
    """`stmt` without the guards (ifs with no else) around it, and their conditions."""
    conds = []
    while isinstance(stmt, If) and stmt.otherwise is None:
        conds.append(stmt.cond)
        stmt = stmt.then
    return stmt, conds


def _band_body(chain: list[Site]) -> Stmt:
    """The body inside a band, with the guards found between its loops moved down into it (they
    only restrict which iterations run, so they may be tested innermost)."""
    conds = [c for site in chain[:-1] for c in _unguarded(site.loop.body)[1]]
    body = chain[-1].loop.body
    return _guarded(body, logical_and(*conds)) if conds else body


def _outer_to_inner(sites: list[Site]) -> list[Site]:
    return sorted(sites, key=lambda s: s.index)


def _nest(loops, body: Stmt) -> Stmt:
    """Loops given as (var, extent, axis), outermost first, around `body`."""
    for var, extent, axis in reversed(loops):
        body = For(var, extent, body, axis=axis)
    return body


def _split_band(step: Pass, kernel: Kernel, chain: list[Site], factors) -> tuple[list, Stmt]:
    """Split every loop of the perfect band `chain` by its factors (innermost level last).

    Returns, per loop, its new levels (var, extent, axis) from outer to inner, and the body with
    the old variables rewritten; when the factors' product does not divide a loop's extent, the
    body is guarded by `index < extent` (the outer level rounds up).
    """
    taken = loop_names(kernel)
    mapping, guards, levels = {}, [], []
    for site, fs in zip(chain, factors):
        loop, inner = site.loop, math.prod(fs)
        if not fs or any(f < 1 for f in fs) or inner > loop.extent:
            raise step.fail(loop.var, f"factors {list(fs)} must be positive with a product of at most "
                                      f"the extent {loop.extent}")
        suffixes = ["o", "i"] if len(fs) == 1 else ["o"] + [f"i{k}" for k in range(len(fs))]
        names = [fresh_name(f"{loop.var}_{s}", taken) for s in suffixes]
        index = Var(names[0])
        for name, f in zip(names[1:], fs):
            index = index * f + Var(name)
        mapping[loop.var] = index
        if loop.extent % inner:
            guards.append(lt(index, loop.extent))
        extents = [-(-loop.extent // inner), *fs]
        levels.append([(n, e, loop.axis) for n, e in zip(names, extents)])
    body = substitute(_band_body(chain), mapping)
    return levels, _guarded(body, logical_and(*guards)) if guards else body


def _guarded(body: Stmt, cond) -> Stmt:
    """`if cond { body }`, with the test sunk through the perfect nest at the top of `body` (it
    depends only on loops outside): the nest stays perfect, so it can still be reordered."""
    if isinstance(body, For):
        return For(body.var, body.extent, _guarded(body.body, cond), body.kind, body.axis)
    if isinstance(body, If) and body.otherwise is None:  # one guard per nest: easier to move
        return If(logical_and(cond, body.cond), body.then)
    return If(cond, body)


@dataclass(frozen=True)
class Split(Pass):
    """Split a loop into outer × inner (`i` → `i_o`, `i_i`, i = i_o*factor + i_i); a factor that
    does not divide the extent adds a guard. Always legal: iterations keep their order."""
    name = "split"
    loop: str
    factor: int

    def apply(self, kernel: Kernel) -> Kernel:
        chain = _band(self, kernel, [self.loop])
        levels, body = _split_band(self, kernel, chain, [(self.factor,)])
        return replace_loop(kernel, chain[0], _nest(levels[0], body))

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        return {"outer": new[:1], "inner": new[1:2]}

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(s, sites), f) for s in sites
                                  for f in powers_of_two_below(s.loop.extent)])


@dataclass(frozen=True)
class Tile(Pass):
    """Split each loop of a perfect band by its factors (one or more levels each) and order the
    pieces level by level, loops in the order given: tile([i, j], [32, 8]) → i_o, j_o, i_i, j_i
    (with several factors a loop's levels are `_o`, `_i0`, `_i1`, ...). Legal where the
    reordering is (see Reorder)."""
    name = "tile"
    loops: tuple[str, ...]
    factors: tuple[tuple[int, ...], ...]

    def apply(self, kernel: Kernel) -> Kernel:
        if len(self.loops) != len(self.factors):
            raise self.fail(None, f"{len(self.loops)} loops but {len(self.factors)} factor lists")
        sites = _band(self, kernel, self.loops)
        chain = _outer_to_inner(sites)
        factors = dict(zip((s.index for s in sites), self.factors))
        levels, body = _split_band(self, kernel, chain, [factors[s.index] for s in chain])
        old = [lv for loop in levels for lv in loop]
        given = [levels[chain.index(s)] for s in sites]  # the new order follows the order given
        new = [loop[k] for k in range(max(map(len, given))) for loop in given if k < len(loop)]
        problem = reorder_problem({v: e for v, e, _ in old}, [v for v, _, _ in new], body, chain[0].outer)
        if problem:
            raise self.fail(chain[0].loop.var, problem)
        return replace_loop(kernel, chain[0], _nest(new, body))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        out = []
        for a in sites:
            if isinstance(a.loop.body, For):
                b = sites[a.index + 1]
                for fa, fb in itertools.product(*(
                        [f for f in TILE_FACTORS if f < s.loop.extent] for s in (a, b))):
                    out.append(cls((loop_ref(a, sites), loop_ref(b, sites)), ((fa,), (fb,))))
        return cls.legal(kernel, out)


@dataclass(frozen=True)
class Reorder(Pass):
    """Permute the loops of a perfect band into the order given (outermost first).

    Legality comes from the dependences of the body (analysis.reorder_problem), not from the
    loops' spatial/reduce labels. Floating point: updates by reduction stores (`+=`, `*=`,
    `max=`, `min=`) are taken as commutative, so reordering reduction loops among themselves is
    accepted although it changes the order in which terms are summed (results may differ in the
    last bits). Moving a spatial loop across a reduction loop keeps each element's order.
    """
    name = "reorder"
    creates = False
    order: tuple[str, ...]

    def apply(self, kernel: Kernel) -> Kernel:
        sites = _band(self, kernel, self.order)
        chain = _outer_to_inner(sites)
        new = [s.loop for s in sites]
        body = _band_body(chain)
        problem = reorder_problem({s.loop.var: s.loop.extent for s in chain}, [l.var for l in new], body,
                                  chain[0].outer)
        if problem:
            raise self.fail(chain[0].loop.var, problem)
        return replace_loop(kernel, chain[0], _nest([(l.var, l.extent, l.axis) for l in new], body))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        """Every permutation of every perfect band of two or three loops."""
        sites = loop_sites(kernel.body)
        out = []
        for first in sites:
            band = [first]
            while len(band) < 3 and isinstance(band[-1].loop.body, For):
                band.append(sites[band[-1].index + 1])
                refs = [loop_ref(s, sites) for s in band]
                out += [cls(p) for p in itertools.permutations(refs) if list(p) != refs]
        return cls.legal(kernel, out)


@dataclass(frozen=True)
class Fuse(Pass):
    """Merge a loop and the loop directly inside it into one loop over the product
    (`i`, `j` → `i_j`, i = i_j // extent_j, j = i_j % extent_j). Iterations keep their order, so it
    is legal whenever both loops walk the same kind of axis."""
    name = "fuse"
    outer: str
    inner: str

    def apply(self, kernel: Kernel) -> Kernel:
        chain = _band(self, kernel, [self.outer, self.inner])
        if chain != _outer_to_inner(chain):
            raise self.fail(self.outer, f"is inside loop {self.inner}; name the outer loop first")
        a, b = chain[0].loop, chain[1].loop
        if a.axis != b.axis:
            raise self.fail(a.var, f"is a {a.axis} loop and {b.var} a {b.axis} loop; "
                                   f"only loops of one axis kind fuse")
        var = fresh_name(f"{a.var}_{b.var}", loop_names(kernel))
        body = substitute(_band_body(chain), {a.var: Var(var) // b.extent, b.var: Var(var) % b.extent})
        return replace_loop(kernel, chain[0], For(var, a.extent * b.extent, body, axis=a.axis))

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        return {"fused": new}

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(s, sites), loop_ref(sites[s.index + 1], sites))
                                  for s in sites if isinstance(s.loop.body, For)])


@dataclass(frozen=True)
class Distribute(Pass):
    """Loop fission: the perfect nest that starts at `loop` and ends at a sequence of statements
    becomes one nest per statement, in order (the copies' loops are renamed `i_1`, `i_2`, ...).
    Legal when each iteration of the nest touches its own elements of every buffer written in
    it, so no statement depends on another iteration of a later one."""
    name = "distribute"
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        chain = self._chain(site.loop)
        body, guard = chain[-1].body, None
        if isinstance(body, If) and body.otherwise is None:  # a split's guard: each piece keeps it
            body, guard = body.then, body.cond
        if not isinstance(body, Seq) or len(body.stmts) < 2:
            raise self.fail(self.loop, "the nest it starts holds no sequence of statements to split")
        extents = loop_extents(site.outer + tuple(chain), body)
        for buffer, uses in written_uses(body).items():
            idx = uses.index()
            if idx is None:
                raise self.fail(self.loop, f"{buffer.name} is accessed at different indices in it")
            missing = [l.var for l in chain if l.var not in determined_vars(idx, extents)]
            if missing:
                raise self.fail(self.loop, f"{buffer.name}[...] may be the same element in different "
                                           f"iterations of {', '.join(missing)}")
        taken = loop_names(kernel)
        nests = []
        for n, stmt in enumerate(body.stmts):
            names = {l.var: (l.var if n == 0 else fresh_name(l.var, taken)) for l in chain}
            stmt = stmt if guard is None else If(guard, stmt)
            stmt = substitute(stmt, {old: Var(new) for old, new in names.items() if old != new})
            for l in reversed(chain):
                stmt = For(names[l.var], l.extent, stmt, l.kind, l.axis)
            nests.append(stmt)
        return replace_loop(kernel, site, Seq(tuple(nests)))

    @staticmethod
    def _chain(loop: For) -> list[For]:
        chain = [loop]
        while isinstance(chain[-1].body, For):
            chain.append(chain[-1].body)
        return chain

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """Each loop of the distributed chain -> its copies in the second, third ... nest."""
        chain = [l.var for l in self._chain(find_loop(before, self.loop, self).loop)]
        return {var: new[k::len(chain)] for k, var in enumerate(chain)}

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(s, sites)) for s in sites
                                  if not (s.outer and isinstance(s.outer[-1].body, For))])
