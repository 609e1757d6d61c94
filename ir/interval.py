"""Bounds of integer index expressions: the one interval analysis that the verifier (are indices
in bounds?) and the cost model (how far does an access reach while some loops run?) share.

Each variable ranges over [0, extent - 1] for the extent given; a variable without one counts
as 0, since the cost model asks about the loops swept so far with the others held still.
Affine expressions get exact bounds (each variable ranging independently); others are bounded
node by node with the IR's semantics: `floordiv` and `mod` round toward minus infinity (as
Python's, so a `mod` by c > 0 lies in [0, c - 1]) and `div` truncates toward zero.
"""
from __future__ import annotations

from typing import Mapping

from .affine import affine_form
from .dtypes import is_int
from .expr import Binary, Cast, Const, Expr, Select, Var

Bounds = tuple[int, int]
_AFFINE_OPS = ("add", "sub", "mul")  # the only operators affine_form reads


def index_bounds(e: Expr, extents: Mapping[str, int]) -> Bounds | None:
    """(lo, hi) of the integer expression `e`, or None when unknown (loads, float arithmetic,
    division by a range)."""
    t = type(e)
    if t is Var:
        return 0, extents.get(e.name, 1) - 1
    if t is Const:
        return (e.value, e.value) if type(e.value) is int and is_int(e.dtype) else None
    form = affine_form(e) if t is Binary and e.op in _AFFINE_OPS else None
    if form is not None:
        return _affine_bounds(*form, extents)
    if t is Binary:
        a = index_bounds(e.a, extents)
        b = None if a is None else index_bounds(e.b, extents)
        return None if b is None else _binary_bounds(e.op, a, b)
    if t is Select:
        yes, no = index_bounds(e.t, extents), index_bounds(e.f, extents)
        return None if yes is None or no is None else (min(yes[0], no[0]), max(yes[1], no[1]))
    if t is Cast and is_int(e.dtype) and is_int(e.value.dtype):
        return index_bounds(e.value, extents)
    return None


def _affine_bounds(coefs: dict[str, int], const: int, extents: Mapping[str, int]) -> Bounds:
    lo = hi = const
    for var, c in coefs.items():
        reach = c * (extents.get(var, 1) - 1)
        lo, hi = lo + min(0, reach), hi + max(0, reach)
    return lo, hi


def _binary_bounds(op: str, a: Bounds, b: Bounds) -> Bounds | None:
    (alo, ahi), (blo, bhi) = a, b
    if op == "add":
        return alo + blo, ahi + bhi
    if op == "sub":
        return alo - bhi, ahi - blo
    if op == "mul":
        products = (alo * blo, alo * bhi, ahi * blo, ahi * bhi)
        return min(products), max(products)
    if op == "min":
        return min(alo, blo), min(ahi, bhi)
    if op == "max":
        return max(alo, blo), max(ahi, bhi)
    if blo != bhi or blo <= 0:
        return None  # dividing by a range or by a non-positive constant: not worth bounding
    c = blo
    if op == "floordiv":
        return alo // c, ahi // c
    if op == "div":
        return _truncating_div(alo, c), _truncating_div(ahi, c)
    if op == "mod":  # exact while the dividend stays between two multiples of c
        return (alo % c, ahi % c) if alo // c == ahi // c else (0, c - 1)
    return None


def _truncating_div(x: int, c: int) -> int:
    return x // c if x >= 0 else -(-x // c)
