"""rfactor: split one reduction into independent partial reductions, combined at the end.

    for r in 0..N reduce { S[i] max= f(r) }
becomes, with factor F,
    alloc S_rf: [F] local {
      for r_z in 0..F { S_rf[r_z] = -inf }
      for r_o in 0..N/F reduce { for r_i in 0..F { S_rf[r_i] max= f(r_o * F + r_i) } }
      for r_c in 0..F reduce { S[i] max= S_rf[r_c] }
    }
`r_i` is a spatial loop (each lane owns its partial), so it vectorizes: a row sum, maximum or
variance over a contiguous axis runs F lanes wide instead of one scalar chain. The partials
reassociate the reduction, as any reordering of a float reduction does.
With `tail`, F need not divide N: `r_o` rounds up and the update is guarded by
`r_o * F + r_i < N` (a lane past the end adds nothing to its partial, which started at the
identity): rows of prime length (a ViT's 197 tokens), on GPU threads one partial each, on a
CPU vector lanes whose last, guarded chunk codegen peels off as a shorter vector.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Allocate, Binary, Buffer, Const, For, If, Kernel, Load, Seq, Store, Var, is_float, lt, seq, substitute, walk
from ..ir.visit import stmt_exprs, walk_stmts
from .analysis import variables
from .base import Pass, buffer_names, find_loop, fresh_name, loop_names, loop_ref, loop_sites, replace_loop

_INT_LIMITS = {"int8": 7, "int16": 15, "int32": 31, "int64": 63}


def identity(op: str, dtype: str) -> Const:
    """The value `x op= identity` leaves unchanged."""
    if op == "add":
        return Const(0.0 if is_float(dtype) else 0, dtype)
    if op == "mul":
        return Const(1.0 if is_float(dtype) else 1, dtype)
    if is_float(dtype):
        return Const(float("-inf") if op == "max" else float("inf"), dtype)
    if dtype not in _INT_LIMITS:
        raise ValueError(f"no {op} identity for {dtype}")
    bits = _INT_LIMITS[dtype]
    return Const(-(1 << bits) if op == "max" else (1 << bits) - 1, dtype)


@dataclass(frozen=True)
class Rfactor(Pass):
    """Reduce `loop` in `factor` partial results (loop `<loop>_i`, to vectorize), combined after it;
    the partial results in a `scope` buffer (shared: one per GPU thread, combined by all);
    `tail`: a factor that does not divide the extent, the last chunk guarded."""
    name = "rfactor"
    loop: str
    factor: int
    scope: str = "local"
    tail: bool = False

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        loop = site.loop
        if loop.axis != "reduce" or loop.kind != "serial":
            raise self.fail(self.loop, f"is a {loop.kind} {loop.axis} loop; rfactor splits a serial reduction loop")
        if self.factor < 2 or self.factor > loop.extent or (loop.extent % self.factor and not self.tail):
            raise self.fail(self.loop, f"factor {self.factor} does not divide its extent {loop.extent} "
                                       f"(or is below 2{', or above the extent' if self.tail else ''})")
        update = loop.body
        if not isinstance(update, Store) or update.reduce is None:
            raise self.fail(self.loop, "its body must be one reduction store (`S[...] op= value`)")
        if loop.var in variables(update.indices):
            raise self.fail(self.loop, f"{update.buffer.name} is updated at an index that moves with the "
                                       f"loop; that is not one reduction")
        if any(isinstance(x, Load) and x.buffer.name == update.buffer.name
               for e in stmt_exprs(update) for x in walk(e)):
            raise self.fail(self.loop, f"the update reads {update.buffer.name} besides accumulating it")
        if self.scope not in ("local", "shared"):
            raise self.fail(self.loop, f"scope {self.scope!r} is not one of local, shared")
        try:
            init = identity(update.reduce, update.buffer.dtype)
        except ValueError as err:
            raise self.fail(self.loop, str(err)) from None
        partial = Buffer(fresh_name(f"{update.buffer.name}_rf", buffer_names(kernel)), (self.factor,),
                         update.buffer.dtype, self.scope)
        taken = loop_names(kernel)
        zero, outer, lane, combine = (fresh_name(f"{loop.var}_{tag}", taken) for tag in "zoic")
        index = Var(outer) * self.factor + Var(lane)
        accumulate = Store(partial, (Var(lane),), substitute(update.value, {loop.var: index}), update.reduce)
        if loop.extent % self.factor:
            accumulate = If(lt(index, loop.extent), accumulate)
        new = Allocate(partial, seq(
            For(zero, self.factor, Store(partial, (Var(zero),), init)),
            For(outer, -(-loop.extent // self.factor), For(lane, self.factor, accumulate), axis="reduce"),
            For(combine, self.factor, Store(update.buffer, update.indices, Load(partial, (Var(combine),)),
                                            update.reduce), axis="reduce")))
        return replace_loop(kernel, site, new)

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """`zero`: initializes the partial results; `outer`, `lane`: the split reduction (`lane`
        to vectorize); `combine`: folds the partial results into the output."""
        return dict(zip(("zero", "outer", "lane", "combine"), ((n,) for n in new)))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(s, sites), f) for s in sites if s.loop.axis == "reduce"
                                  for f in (8, 16, 32, 64)])


@dataclass(frozen=True)
class TreeCombine(Pass):
    """Fold rfactor's partial results in halves instead of one chain:

        for c in 0..F reduce { S[i] op= P[c] }
    becomes (F a power of two)
        for h in 0..F/2 { P[h] = P[h] op P[h + F/2] }   ...   for h_k in 0..1 { P[h_k] = ... }
        for c in 0..1 reduce { S[i] op= P[c] }

    Each halving loop is spatial, its lanes independent (to vectorize): log2(F) dependent steps
    instead of F. That chain is what a short row waits on before its next stage (a softmax's
    exp waits for the row's max). `loop` must end the allocation of P, as rfactor leaves it,
    since the halvings overwrite P."""
    name = "tree_combine"
    loop: str

    def apply(self, kernel: Kernel) -> Kernel:
        site = find_loop(kernel, self.loop, self)
        loop = site.loop
        update = loop.body
        partial = update.value.buffer if isinstance(update, Store) and isinstance(update.value, Load) else None
        if (loop.axis != "reduce" or loop.kind != "serial" or partial is None or update.reduce is None
                or update.value.indices != (Var(loop.var),) or partial.shape != (loop.extent,)):
            raise self.fail(self.loop, "is not a combine of partial results (`for c reduce { S op= P[c] }` "
                                       "over all of a 1-D P)")
        if loop.extent < 2 or loop.extent & (loop.extent - 1):
            raise self.fail(self.loop, f"has {loop.extent} partial results; halving needs a power of two")
        if not any(isinstance(s, Allocate) and s.buffer.name == partial.name and isinstance(s.body, Seq)
                   and s.body.stmts[-1] is loop for s in walk_stmts(kernel.body)):
            raise self.fail(self.loop, f"is not the last statement in the allocation of {partial.name}")
        taken = loop_names(kernel)
        steps, width = [], loop.extent
        while width > 1:
            width //= 2
            h = fresh_name(f"{loop.var}_h", taken)
            pair = Binary(update.reduce, Load(partial, (Var(h),)), Load(partial, (Var(h) + width,)))
            steps.append(For(h, width, Store(partial, (Var(h),), pair)))
        last = For(loop.var, 1, update, axis="reduce")  # P[c] at c = 0: the one partial left
        return replace_loop(kernel, site, seq(*steps, last))

    def loop_roles(self, before: Kernel, new: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """`halves`: the halving loops, widest first."""
        return {"halves": new}

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        sites = loop_sites(kernel.body)
        return cls.legal(kernel, [cls(loop_ref(s, sites)) for s in sites if s.loop.axis == "reduce"])
