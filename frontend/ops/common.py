"""Helpers shared by the op lowerings: buffers for a node, broadcasting, elementwise kernels."""
from __future__ import annotations

from typing import Callable, Sequence

from ...ir import Buffer, Expr, Kernel, Var, loop_nest, store
from .registry import Lowered, OpContext

INPUT_NAMES = "XYZABCDEFGHIJKLMNOPQRSTUVW"


def input_buffer(ctx: OpContext, i: int, name: str | None = None) -> Buffer:
    info = ctx.inputs[i]
    return Buffer(name or INPUT_NAMES[i % len(INPUT_NAMES)] + ("" if i < 26 else str(i)),
                  tuple(info.shape), info.dtype)


def output_buffer(ctx: OpContext, i: int = 0, name: str | None = None) -> Buffer:
    info = ctx.outputs[i]
    return Buffer(name or ("Out" if i == 0 else f"Out{i}"), tuple(info.shape), info.dtype)


def broadcast_index(shape: Sequence[int], out_vars: Sequence[Expr]) -> tuple[Expr, ...]:
    """Indices into a tensor of `shape` broadcast (numpy rules) against an output indexed by
    `out_vars`: leading dimensions are dropped and size-1 dimensions read index 0."""
    rank = len(shape)
    tail = list(out_vars)[len(out_vars) - rank:] if rank else []
    from ...ir import Const
    return tuple(Const(0) if d == 1 else v for d, v in zip(shape, tail))


def elementwise(ctx: OpContext, fn: Callable[..., Expr], args: Sequence[int] | None = None,
                name: str | None = None) -> Lowered:
    """A kernel computing output 0 = fn(*loaded inputs) with numpy broadcasting.

    `args` are the node inputs passed as buffers (default: all present inputs); `fn` receives
    one loaded value per arg, already indexed for the current output element.
    """
    args = list(args) if args is not None else [i for i in range(len(ctx.inputs)) if ctx.has_input(i)]
    bufs = [input_buffer(ctx, i) for i in args]
    out = output_buffer(ctx)

    def body(*vs: Var):
        vals = [b[broadcast_index(b.shape, vs)] if b.shape else b[()] for b in bufs]
        return store(out, vs, fn(*vals))

    kernel = Kernel(name or ctx.kernel_name(), tuple(bufs), (out,), loop_nest(out.shape, body))
    return Lowered(kernel, args)


def normalize_axis(ctx: OpContext, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ctx.unsupported(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis
