"""The text form of the IR; `parser.parse_kernel` reads it back exactly.

    kernel scale(A: f32[4, 8]) -> (Y: f32[4, 8]) {
      for i in 0..4 parallel {
        for j in 0..8 vectorized { Y[i, j] = A[i, j] * 2.0 }
      }
    }

Constants carry their dtype: f32 floats (`2.0`), i32 ints (`3`) and bools (`true`) are bare, any
other type gets a suffix (`2:i64`, `0.5:f64`). Floats print with repr() so they round-trip.
A braced body holding one statement is that statement; a `{ ... }` block in statement position is
an explicit Seq, which is how singleton and nested Seqs survive the round trip.
"""
from __future__ import annotations

from .dtypes import SHORT, is_float, is_int
from .expr import Binary, Buffer, Call, Cast, Compare, Const, Expr, Load, Logic, Not, Select, Var
from .stmt import Allocate, For, If, Kernel, Seq, Stmt, Store

INDENT = "  "
BINARY_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "mod": "%"}
COMPARE_SYMBOLS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
LOGIC_SYMBOLS = {"or": "||", "and": "&&"}
REDUCE_SYMBOLS = {None: "=", "add": "+=", "mul": "*=", "max": "max=", "min": "min="}
# Binding strength; the parser's grammar has the same levels.
PREC = {"or": 1, "and": 2, "compare": 3, "add": 4, "sub": 4,
        "mul": 5, "div": 5, "floordiv": 5, "mod": 5, "unary": 6, "atom": 7}
BARE_DTYPES = {"float32", "int32", "bool"}  # constants of these types need no suffix


def dtype_name(dtype: str) -> str:
    # An unknown dtype prints as itself, so invalid IR can still be shown (the parser rejects it).
    return SHORT.get(dtype, dtype)


def print_const(c: Const) -> str:
    if c.dtype == "bool":
        return "true" if c.value else "false"
    if is_float(c.dtype):
        text = repr(float(c.value))
    else:
        text = str(int(c.value)) if is_int(c.dtype) else repr(c.value)
    return text if c.dtype in BARE_DTYPES else f"{text}:{dtype_name(c.dtype)}"


def _prec(e: Expr) -> int:
    if isinstance(e, Binary) and e.op in BINARY_SYMBOLS:
        return PREC[e.op]
    if isinstance(e, Compare):
        return PREC["compare"]
    if isinstance(e, Logic):
        return PREC[e.op]
    if isinstance(e, Not) or (isinstance(e, Call) and e.fn == "neg" and len(e.args) == 1):
        return PREC["unary"]
    return PREC["atom"]


def _operand(e: Expr, min_prec: int) -> str:
    text = print_expr(e)
    return text if _prec(e) >= min_prec else f"({text})"


def _args(args) -> str:
    return ", ".join(print_expr(a) for a in args)


def print_expr(e: Expr) -> str:
    if isinstance(e, Const):
        return print_const(e)
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Load):
        return f"{e.buffer.name}[{_args(e.indices)}]"
    if isinstance(e, Binary):
        if e.op not in BINARY_SYMBOLS:  # min, max and the bitwise ops: function calls
            return f"{e.op}({print_expr(e.a)}, {print_expr(e.b)})"
        p = PREC[e.op]  # left-associative: a right operand of equal strength needs parentheses
        return f"{_operand(e.a, p)} {BINARY_SYMBOLS[e.op]} {_operand(e.b, p + 1)}"
    if isinstance(e, Compare):  # non-associative
        p = PREC["compare"] + 1
        return f"{_operand(e.a, p)} {COMPARE_SYMBOLS[e.op]} {_operand(e.b, p)}"
    if isinstance(e, Logic):
        p = PREC[e.op]
        return f"{_operand(e.a, p)} {LOGIC_SYMBOLS[e.op]} {_operand(e.b, p + 1)}"
    if isinstance(e, Not):
        return "!" + _operand(e.a, PREC["unary"])
    if isinstance(e, Call):
        if e.fn == "neg" and len(e.args) == 1:
            # `-3` would read back as a negative constant, so a constant operand gets parentheses
            arg = e.args[0]
            return "-" + (f"({print_expr(arg)})" if isinstance(arg, Const) else _operand(arg, PREC["unary"]))
        return f"{e.fn}({_args(e.args)})"
    if isinstance(e, Select):
        return f"select({_args((e.cond, e.t, e.f))})"
    if isinstance(e, Cast):
        return f"{dtype_name(e.dtype)}({print_expr(e.value)})"
    raise TypeError(f"not an expression: {e!r}")


def print_type(b: Buffer) -> str:
    return f"{dtype_name(b.dtype)}[{', '.join(str(d) for d in b.shape)}]"


def print_param(b: Buffer) -> str:
    scope = "" if b.scope == "global" else f" {b.scope}"
    return f"{b.name}: {print_type(b)}{scope}"


def print_header(s: Stmt) -> str:
    """The first line of a for / if / alloc, without its body."""
    if isinstance(s, For):
        axis = " reduce" if s.axis == "reduce" else ("" if s.axis == "spatial" else f" {s.axis}")
        kind = "" if s.kind == "serial" else f" {s.kind}"
        return f"for {s.var} in 0..{s.extent}{axis}{kind}"
    if isinstance(s, If):
        return f"if {print_expr(s.cond)}"
    if isinstance(s, Allocate):
        return f"alloc {s.buffer.name}: {print_type(s.buffer)} {s.buffer.scope}"
    raise TypeError(f"not a compound statement: {s!r}")


def _body(s: Stmt, depth: int) -> str:
    """`{ ... }` for the body of a for / if / alloc / kernel; a lone Store stays on one line."""
    if isinstance(s, Store):
        return "{ " + print_stmt(s) + " }"
    return _block(s.stmts if isinstance(s, Seq) and len(s.stmts) != 1 else (s,), depth)


def _block(items, depth: int) -> str:
    if not items:
        return "{ }"
    inner = "\n".join(print_stmt(x, depth + 1) for x in items)
    return "{\n" + inner + "\n" + INDENT * depth + "}"


def print_stmt(s: Stmt, depth: int = 0) -> str:
    pad = INDENT * depth
    if isinstance(s, Store):
        return f"{pad}{s.buffer.name}[{_args(s.indices)}] {REDUCE_SYMBOLS[s.reduce]} {print_expr(s.value)}"
    if isinstance(s, Seq):
        return pad + _block(s.stmts, depth)
    text = f"{pad}{print_header(s)} {_body(s.then if isinstance(s, If) else s.body, depth)}"
    while isinstance(s, If) and s.otherwise is not None:
        if isinstance(s.otherwise, If):
            s = s.otherwise
            text += f" else {print_header(s)} {_body(s.then, depth)}"
        else:
            text += f" else {_body(s.otherwise, depth)}"
            break
    return text


def print_kernel(k: Kernel) -> str:
    ins = ", ".join(print_param(b) for b in k.inputs)
    outs = ", ".join(print_param(b) for b in k.outputs)
    return f"kernel {k.name}({ins}) -> ({outs}) {_body(k.body, 0)}\n"
