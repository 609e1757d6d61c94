"""Layout passes: store an input in a blocked layout before the kernel body reads it.

pack(W, 0, 16, [0, 2, 3, 4, 1]) splits dimension 0 of an OIHW weight into (O/16, 16) and orders
the pieces (O/16, I, H, W, 16): OIHW16o, where the 16 output channels a vectorized loop reads are
adjacent. The kernel then starts with a stage that only reads W and writes `W_packed`; when W is
a constant of the model, the compiler runs that stage once at compile time and stores the packed
weights instead (codegen.model), so the layout costs nothing at run time.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Allocate, Buffer, For, Kernel, Load, Seq, Store, Var, replace_body
from ..ir.visit import rewrite_stmt
from .base import Pass, buffer_names, find_buffer, fresh_name, loop_names
from .region import accesses, inner_extents, simplify_divmod

PACK_FACTORS = (4, 8, 16)  # the block sizes the schedule space offers (vector widths)


@dataclass(frozen=True)
class Pack(Pass):
    """Read input `buffer` through a blocked copy: dimension `dim` split by `factor` (which must
    divide it), then the dimensions of the split shape taken in `order` (default: as they are)."""
    name = "pack"
    buffer: str
    dim: int
    factor: int
    order: tuple[int, ...] = ()

    def apply(self, kernel: Kernel) -> Kernel:
        buffer = find_buffer(kernel, self.buffer, self)
        if buffer not in kernel.inputs:
            raise self.fail(None, f"{buffer.name} is not an input of the kernel")
        stores, loaded = accesses(kernel.body, buffer)
        if stores:
            raise self.fail(None, f"{buffer.name} is written by the kernel")
        if not loaded:
            raise self.fail(None, f"{buffer.name} is never read")
        rank = len(buffer.shape)
        if not 0 <= self.dim < rank:
            raise self.fail(None, f"dimension {self.dim} out of range for {buffer.name}{list(buffer.shape)}")
        size = buffer.shape[self.dim]
        if self.factor < 1 or size % self.factor:
            raise self.fail(None, f"factor {self.factor} does not divide dimension {self.dim} "
                                  f"({size}) of {buffer.name}")
        split = list(buffer.shape[:self.dim]) + [size // self.factor, self.factor] + list(buffer.shape[self.dim + 1:])
        order = self.order or tuple(range(rank + 1))
        if sorted(order) != list(range(rank + 1)):
            raise self.fail(None, f"order {list(order)} is not a permutation of the {rank + 1} "
                                  f"dimensions of the split shape {split}")
        packed = Buffer(fresh_name(f"{buffer.name}_packed", buffer_names(kernel)),
                        tuple(split[d] for d in order), buffer.dtype, "global")

        extents = inner_extents(kernel.body)

        def packed_index(idx):
            e = idx[self.dim]
            parts = list(idx[:self.dim]) + [e // self.factor, e % self.factor] + list(idx[self.dim + 1:])
            return tuple(simplify_divmod(parts[d], extents) for d in order)

        def expr_fn(e):
            if isinstance(e, Load) and e.buffer.name == buffer.name:
                return Load(packed, packed_index(e.indices))
            return None
        body = rewrite_stmt(kernel.body, expr_fn)

        taken = loop_names(kernel)
        names = [fresh_name(f"{buffer.name}_p{k}", taken) for k in range(rank + 1)]
        split_vars = [None] * (rank + 1)
        for k, d in enumerate(order):
            split_vars[d] = Var(names[k])
        original = (split_vars[:self.dim] + [split_vars[self.dim] * self.factor + split_vars[self.dim + 1]]
                    + split_vars[self.dim + 2:])
        stage = Store(packed, tuple(Var(n) for n in names), Load(buffer, tuple(original)))
        for name, extent in reversed(list(zip(names, packed.shape))):
            stage = For(name, extent, stage)
        return replace_body(kernel, Allocate(packed, Seq((stage, body))))

    @classmethod
    def schedule_space(cls, kernel: Kernel) -> list[Pass]:
        out = []
        for b in kernel.inputs:
            for d, n in enumerate(b.shape):
                for f in PACK_FACTORS:
                    if n % f == 0 and n > f:  # block the dimension, block innermost
                        order = tuple(k for k in range(len(b.shape) + 1) if k != d + 1) + (d + 1,)
                        out.append(cls(b.name, d, f, order))
        return cls.legal(kernel, out)
