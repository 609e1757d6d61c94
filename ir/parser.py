"""Parse the text form of printer.py back into IR: `parse_kernel(print_kernel(k)) == k`.

Lark (LALR) builds a syntax tree; `_Builder` then walks it top-down, because resolving a buffer
name to its Buffer needs the scope (parameters, then enclosing `alloc`s, innermost first).
Loop variables are not checked here: that is the verifier's job, and printing then parsing an
invalid kernel must still round-trip.
"""
from __future__ import annotations

import functools
import math
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .dtypes import LONG, is_float
from .errors import NestorError
from .expr import BINARY_OPS, INTRINSICS, Binary, Buffer, Call, Cast, Compare, Const, Expr, Load, Logic, Not, Select, Var
from .printer import BINARY_SYMBOLS, COMPARE_SYMBOLS, REDUCE_SYMBOLS
from .stmt import AXES, LOOP_KINDS, Allocate, For, If, Kernel, Seq, Stmt, Store

SCOPES = ("global", "local", "shared")
_FUNCTION_OPS = tuple(op for op in BINARY_OPS if op not in BINARY_SYMBOLS)  # min(a, b), shl(a, b) ...
_ASSIGN = {symbol: op for op, symbol in REDUCE_SYMBOLS.items()}
# How to name terminals in "expected ..." messages; groups collapse into one word.
_FRIENDLY = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "ASSIGN": "'=' or '+=' etc.",
             "$END": "end of input"}
_EXPR_START = {"a name", "an integer", "a number", "'('", "'-'", "'!'"}
_OPERATORS = {"'+'", "'-'", "'*'", "'/'", "'//'", "'%'", "'=='", "'!='", "'<'", "'<='", "'>'", "'>='",
              "'&&'", "'||'"}
_STMT_START = {"a name", "'for'", "'if'", "'alloc'", "'{'"}


class IRSyntaxError(NestorError, ValueError):
    """A malformed kernel text; `line` and `column` are 1-based."""

    def __init__(self, message: str, line: int, column: int, context: str):
        super().__init__(f"line {line}, column {column}: {message}\n{context}")
        self.line, self.column = line, column


@functools.cache
def _lark() -> Lark:
    grammar = resources.files(__package__).joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual")


def parse_kernel(text: str) -> Kernel:
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, text) from None
    return _Builder(text).kernel(tree)


def _describe(names) -> str:
    parser = _lark()
    words = set()
    for name in names:
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            pattern = None
        is_str = pattern is not None and pattern.type == "str"
        words.add(f"'{pattern.value}'" if is_str else _FRIENDLY.get(name, name))
    for group, word in ((_EXPR_START, "an expression"), (_OPERATORS, "an operator"),
                        (_STMT_START, "a statement")):
        if group <= words:
            words = (words - group - {"'true'", "'false'"}) | {word}
    return ", ".join(sorted(words))


def _error_at(message: str, text: str, line: int, column: int) -> IRSyntaxError:
    """The error with the offending line and a caret under the column."""
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    return IRSyntaxError(message, line, column, f"{source}\n{' ' * (column - 1)}^")


def _syntax_error(err: UnexpectedInput, text: str) -> IRSyntaxError:
    line, column = err.line, err.column
    if isinstance(err, UnexpectedEOF) or isinstance(err, UnexpectedToken) and err.token.type == "$END":
        # lark puts end of input at the last token; point just past the last character instead
        body = text.rstrip()
        line = body.count("\n") + 1
        column = len(body) - (body.rfind("\n") + 1) + 1
        message = f"unexpected end of input; expected {_describe(err.expected)}"
    elif isinstance(err, UnexpectedToken):
        message = f"unexpected {str(err.token)!r}; expected {_describe(err.expected)}"
    elif isinstance(err, UnexpectedCharacters):
        message = f"unexpected character {err.char!r}; expected {_describe(err.allowed)}"
    else:
        message = str(err)
    return _error_at(message, text, line, column)


class _Builder:
    def __init__(self, text: str):
        self.text = text

    def error(self, message: str, token: Token) -> IRSyntaxError:
        return _error_at(message, self.text, token.line, token.column)

    # declarations

    def kernel(self, tree: Tree) -> Kernel:
        name, ins, outs, body = tree.children
        inputs, outputs = self.params(ins), self.params(outs)
        scope = {}
        for b in inputs + outputs:
            scope[b.name] = b
        return Kernel(str(name), inputs, outputs, self.body(body, scope))

    def params(self, tree: Tree | None) -> tuple[Buffer, ...]:
        if tree is None:
            return ()
        return tuple(self.buffer(*p.children, default_scope="global") for p in tree.children)

    def buffer(self, name: Token, type_: Tree, scope: Token | None, default_scope: str) -> Buffer:
        dtype_tok, ints = type_.children
        if str(dtype_tok) not in LONG:
            raise self.error(f"unknown element type {str(dtype_tok)!r} (expected one of "
                             f"{', '.join(LONG)})", dtype_tok)
        if scope is not None and scope not in SCOPES:
            raise self.error(f"unknown buffer scope {str(scope)!r} (expected one of "
                             f"{', '.join(SCOPES)})", scope)
        shape = tuple(int(t) for t in ints.children) if ints is not None else ()
        return Buffer(str(name), shape, LONG[str(dtype_tok)], str(scope or default_scope))

    # statements

    def body(self, block: Tree, scope: dict) -> Stmt:
        """A body holding one statement is that statement; otherwise a Seq."""
        stmts = [self.stmt(s, scope) for s in block.children]
        return stmts[0] if len(stmts) == 1 else Seq(tuple(stmts))

    def stmt(self, tree: Tree, scope: dict) -> Stmt:
        kind = tree.data
        if kind == "block":
            return Seq(tuple(self.stmt(s, scope) for s in tree.children))
        if kind == "store":
            name, idx, op, value = tree.children
            return Store(self.lookup(name, scope), self.exprs(idx, scope), self.expr(value, scope),
                         _ASSIGN[str(op)])
        if kind == "for":
            var, start, extent, *attrs, body = tree.children
            if int(start) != 0:
                raise self.error("loops start at 0", start)
            kind_, axis = self.attrs(attrs)
            return For(str(var), int(extent), self.body(body, scope), kind_, axis)
        if kind == "if":
            cond, then, other = tree.children
            if other is not None:
                other = self.stmt(other, scope) if other.data == "if" else self.body(other, scope)
            return If(self.expr(cond, scope), self.body(then, scope), other)
        if kind == "alloc":
            name, type_, mem, body = tree.children
            buf = self.buffer(name, type_, mem, default_scope="local")
            return Allocate(buf, self.body(body, {**scope, buf.name: buf}))
        raise AssertionError(kind)

    def attrs(self, attrs: list[Tree]) -> tuple[str, str]:
        kind, axis = None, None
        for attr in attrs:
            word = ".".join(str(t) for t in attr.children)
            token = attr.children[0]
            if word in AXES and axis is None:
                axis = word
            elif word in LOOP_KINDS and kind is None:
                kind = word
            elif word in AXES or word in LOOP_KINDS:
                raise self.error(f"conflicting loop annotation {word!r}", token)
            else:
                raise self.error(f"unknown loop annotation {word!r} (expected one of "
                                 f"{', '.join(AXES + LOOP_KINDS)})", token)
        return kind or "serial", axis or "spatial"

    def lookup(self, name: Token, scope: dict) -> Buffer:
        if str(name) not in scope:
            raise self.error(f"undefined buffer {str(name)!r}", name)
        return scope[str(name)]

    # expressions

    def exprs(self, tree: Tree | None, scope: dict) -> tuple[Expr, ...]:
        return () if tree is None else tuple(self.expr(e, scope) for e in tree.children)

    def expr(self, tree: Tree, scope: dict) -> Expr:
        kind = tree.data
        kids = tree.children
        if kind in BINARY_SYMBOLS:
            return Binary(kind, self.expr(kids[0], scope), self.expr(kids[1], scope))
        if kind in COMPARE_SYMBOLS:
            return Compare(kind, self.expr(kids[0], scope), self.expr(kids[1], scope))
        if kind in ("logic_and", "logic_or"):
            return Logic(kind[6:], self.expr(kids[0], scope), self.expr(kids[1], scope))
        if kind == "not":
            return Not(self.expr(kids[0], scope))
        if kind == "neg":
            return Call("neg", (self.expr(kids[0], scope),))
        if kind == "number":
            return self.number(*kids)
        if kind in ("true", "false"):
            return Const(kind == "true", "bool")
        if kind == "var":
            return Var(str(kids[0]))
        if kind == "load":
            return Load(self.lookup(kids[0], scope), self.exprs(kids[1], scope))
        if kind == "call":
            return self.call(kids[0], self.exprs(kids[1], scope))
        raise AssertionError(kind)

    def number(self, tok: Token, suffix: Token | None) -> Const:
        is_int_literal = tok.type == "INT"
        if suffix is None:
            dtype = "int32" if is_int_literal else "float32"
        elif str(suffix) in LONG and LONG[str(suffix)] != "bool":
            dtype = LONG[str(suffix)]
        else:
            raise self.error(f"bad constant type {str(suffix)!r} (expected a numeric type such as "
                             f"i64 or f64)", suffix)
        if is_float(dtype):
            # math.nan, not float("nan"): Const equality compares values, and nan != nan unless
            # it is the same object.
            value = float(tok)
            return Const(math.nan if math.isnan(value) else value, dtype)
        if not is_int_literal:
            raise self.error(f"{str(tok)} is not an integer, but its type {str(suffix)} is", tok)
        return Const(int(tok), dtype)

    def call(self, name: Token, args: tuple[Expr, ...]) -> Expr:
        fn = str(name)
        arity = 3 if fn == "select" else 2 if fn in _FUNCTION_OPS else 1 if fn in LONG else None
        if arity is not None and len(args) != arity:
            raise self.error(f"{fn}() takes {arity} argument{'s' * (arity > 1)}, got {len(args)}", name)
        if fn == "select":
            return Select(*args)
        if fn in _FUNCTION_OPS:
            return Binary(fn, *args)
        if fn in LONG:
            return Cast(LONG[fn], args[0])
        if fn in INTRINSICS:
            return Call(fn, args)
        raise self.error(f"unknown function {fn!r} (expected select, {', '.join(_FUNCTION_OPS)}, a type "
                         f"cast such as f32(x), or one of {', '.join(INTRINSICS)})", name)
