"""Affine forms of integer index expressions, the one reading every analysis shares (dependence
tests, regions, the verifier's bounds, the cost model's strides)."""
from __future__ import annotations

from .dtypes import is_int
from .expr import Binary, Const, Expr, Var


def affine_form(e: Expr, variables=None) -> tuple[dict[str, int], int] | None:
    """`e` as ({var: coefficient}, constant) when it is an affine integer expression, else None.
    With `variables`, a variable outside it makes the expression not affine (it is not a loop)."""
    t = type(e)
    if t is Var:
        return ({e.name: 1}, 0) if variables is None or e.name in variables else None
    if t is Const:
        v = e.value
        return ({}, v) if type(v) is int and is_int(e.dtype) else None
    if t is not Binary or e.op not in ("add", "sub", "mul"):
        return None
    a, b = affine_form(e.a, variables), affine_form(e.b, variables)
    if a is None or b is None:
        return None
    if e.op == "mul":
        if a[0] and b[0]:
            return None
        (coefs, c), k = (a, b[1]) if not b[0] else (b, a[1])
        return {v: x * k for v, x in coefs.items()}, c * k
    sign = 1 if e.op == "add" else -1
    coefs = dict(a[0])
    for v, x in b[0].items():
        coefs[v] = coefs.get(v, 0) + sign * x
    return coefs, a[1] + sign * b[1]
