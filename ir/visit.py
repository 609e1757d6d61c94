"""Generic traversal and rewriting of IR trees.

`rewrite_expr(node, fn)` rebuilds a tree bottom-up, calling `fn` on every expression after its
children were rewritten; `fn` returns a replacement or None to keep the node. Unchanged subtrees
are returned as the same objects, so rewrites are cheap when they touch little.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from .expr import Binary, Call, Cast, Compare, Const, Expr, Load, Logic, Not, Select, Var
from .stmt import Allocate, For, If, Kernel, Seq, Stmt, Store

ExprFn = Callable[[Expr], "Expr | None"]


def children(expr: Expr) -> tuple[Expr, ...]:
    t = type(expr)  # not isinstance: no node class is subclassed, and every walk comes through here
    if t is Binary or t is Compare or t is Logic:
        return (expr.a, expr.b)
    if t is Load:
        return expr.indices
    if t is Not:
        return (expr.a,)
    if t is Select:
        return (expr.cond, expr.t, expr.f)
    if t is Cast:
        return (expr.value,)
    if t is Call:
        return expr.args
    return ()


def _rebuild(expr: Expr, kids: tuple[Expr, ...]) -> Expr:
    if isinstance(expr, (Binary, Compare, Logic)):
        return type(expr)(expr.op, kids[0], kids[1])
    if isinstance(expr, Not):
        return Not(kids[0])
    if isinstance(expr, Select):
        return Select(*kids)
    if isinstance(expr, Cast):
        return Cast(expr.dtype, kids[0])
    if isinstance(expr, Call):
        return Call(expr.fn, kids)
    if isinstance(expr, Load):
        return Load(expr.buffer, kids)
    return expr


def rewrite(expr: Expr, fn: ExprFn) -> Expr:
    kids = children(expr)
    if kids:
        new_kids = tuple(rewrite(k, fn) for k in kids)
        if any(n is not o for n, o in zip(new_kids, kids)):
            expr = _rebuild(expr, new_kids)
    out = fn(expr)
    return expr if out is None else out


def walk(expr: Expr) -> Iterator[Expr]:
    """Every sub-expression, parents before children (a stack, not nested generators: each
    level of those costs every item it passes up, and the tuner walks millions of nodes)."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        stack.extend(reversed(children(e)))


def variables(exprs: Iterable[Expr]) -> set[str]:
    """Names of the variables the expressions read (all loop variables: the IR has no others)."""
    return {e.name for x in exprs for e in walk(x) if isinstance(e, Var)}


def rewrite_stmt(stmt: Stmt, expr_fn: ExprFn | None = None,
                 stmt_fn: Callable[[Stmt], "Stmt | None"] | None = None) -> Stmt:
    """Rewrite every expression with `expr_fn` and then every statement (bottom-up) with `stmt_fn`."""
    ex = (lambda e: rewrite(e, expr_fn)) if expr_fn else (lambda e: e)
    if isinstance(stmt, For):
        body = rewrite_stmt(stmt.body, expr_fn, stmt_fn)
        new = stmt if body is stmt.body else For(stmt.var, stmt.extent, body, stmt.kind, stmt.axis)
    elif isinstance(stmt, Store):
        idx = tuple(ex(i) for i in stmt.indices)
        val = ex(stmt.value)
        changed = val is not stmt.value or any(a is not b for a, b in zip(idx, stmt.indices))
        new = Store(stmt.buffer, idx, val, stmt.reduce) if changed else stmt
    elif isinstance(stmt, Seq):
        parts = tuple(rewrite_stmt(s, expr_fn, stmt_fn) for s in stmt.stmts)
        new = stmt if all(a is b for a, b in zip(parts, stmt.stmts)) else Seq(parts)
    elif isinstance(stmt, If):
        cond = ex(stmt.cond)
        then = rewrite_stmt(stmt.then, expr_fn, stmt_fn)
        other = rewrite_stmt(stmt.otherwise, expr_fn, stmt_fn) if stmt.otherwise else None
        changed = cond is not stmt.cond or then is not stmt.then or other is not stmt.otherwise
        new = If(cond, then, other) if changed else stmt
    elif isinstance(stmt, Allocate):
        body = rewrite_stmt(stmt.body, expr_fn, stmt_fn)
        new = stmt if body is stmt.body else Allocate(stmt.buffer, body)
    else:
        raise TypeError(f"not a statement: {stmt!r}")
    if stmt_fn is not None:
        out = stmt_fn(new)
        return new if out is None else out
    return new


def substitute(node, mapping: dict[str, Expr]):
    """Replace loop variables by expressions (in an Expr or a Stmt)."""
    def fn(e):
        return mapping.get(e.name) if isinstance(e, Var) else None
    if isinstance(node, Expr):
        return rewrite(node, fn)
    return rewrite_stmt(node, fn)


def walk_stmts(stmt: Stmt) -> Iterator[Stmt]:
    """Every statement, parents before children (in pre-order; a stack, as in `walk`)."""
    stack = [stmt]
    while stack:
        s = stack.pop()
        yield s
        if isinstance(s, (For, Allocate)):
            stack.append(s.body)
        elif isinstance(s, Seq):
            stack.extend(reversed(s.stmts))
        elif isinstance(s, If):
            if s.otherwise is not None:
                stack.append(s.otherwise)
            stack.append(s.then)


def stmt_exprs(stmt: Stmt) -> Iterator[Expr]:
    """The expressions directly held by one statement (not those of nested statements)."""
    if isinstance(stmt, Store):
        yield from stmt.indices
        yield stmt.value
    elif isinstance(stmt, If):
        yield stmt.cond


def loads(node) -> Iterator[Load]:
    """Every Load in an expression or statement tree."""
    exprs = [node] if isinstance(node, Expr) else [e for s in walk_stmts(node) for e in stmt_exprs(s)]
    for e in exprs:
        for sub in walk(e):
            if isinstance(sub, Load):
                yield sub


def replace_body(kernel: Kernel, body: Stmt) -> Kernel:
    return Kernel(kernel.name, kernel.inputs, kernel.outputs, body)


def is_const(expr: Expr, value=None) -> bool:
    return isinstance(expr, Const) and (value is None or expr.value == value)
