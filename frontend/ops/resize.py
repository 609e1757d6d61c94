"""Resize and Upsample: frontend/resize.py rewrites them into Gathers and weighted Sums before
lowering; what reaches this lowering is a form that rewrite leaves alone."""
from __future__ import annotations

from .registry import OpContext, register_op


@register_op("Resize", "Upsample")
def lower_resize(ctx: OpContext):
    for i in range(1, len(ctx.inputs)):
        ctx.const(i)  # a parameter computed at run time: names it as needing a constant
    raise ctx.unsupported("interpolation (not nearest) of a non-float tensor")
