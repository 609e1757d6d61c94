"""Immutable expressions of the Nestor IR.

Every node is a frozen dataclass: `==` is structural equality (names included) and nodes hash,
so expressions can be dictionary keys and rewrites never mutate shared trees.
Arithmetic operators build nodes (`a + 1`, `i * 32 + j`); comparisons are functions (`lt(a, b)`)
because `==` must stay structural equality.
"""
from __future__ import annotations

from dataclasses import dataclass

from .dtypes import INDEX, bits, canonical, is_float

BINARY_OPS = ("add", "sub", "mul", "div", "floordiv", "mod", "min", "max",
              "bitand", "bitor", "bitxor", "shl", "shr")
# Bitwise ops take integers (or bools, for the three logical ones); shr of a signed integer is
# arithmetic. A shift by the operand's bit width or more is undefined, as in C.
BITWISE_OPS = ("bitand", "bitor", "bitxor", "shl", "shr")
COMPARE_OPS = ("eq", "ne", "lt", "le", "gt", "ge")
LOGIC_OPS = ("and", "or")
# Intrinsics a kernel may call; all are elementwise and keep their first argument's dtype.
INTRINSICS = ("exp", "log", "sqrt", "rsqrt", "tanh", "erf", "sigmoid", "abs", "floor", "ceil",
              "round", "pow", "sin", "cos", "neg")


class Expr:
    """Base class; subclasses define `dtype`."""

    __slots__ = ()

    def __add__(self, other): return Binary("add", self, as_expr(other, self.dtype))
    def __radd__(self, other): return Binary("add", as_expr(other, self.dtype), self)
    def __sub__(self, other): return Binary("sub", self, as_expr(other, self.dtype))
    def __rsub__(self, other): return Binary("sub", as_expr(other, self.dtype), self)
    def __mul__(self, other): return Binary("mul", self, as_expr(other, self.dtype))
    def __rmul__(self, other): return Binary("mul", as_expr(other, self.dtype), self)
    def __truediv__(self, other): return Binary("div", self, as_expr(other, self.dtype))
    def __rtruediv__(self, other): return Binary("div", as_expr(other, self.dtype), self)
    def __floordiv__(self, other): return Binary("floordiv", self, as_expr(other, self.dtype))
    def __mod__(self, other): return Binary("mod", self, as_expr(other, self.dtype))
    def __neg__(self): return Call("neg", (self,))


@dataclass(frozen=True, slots=True)
class Const(Expr):
    value: int | float | bool
    dtype: str = INDEX


@dataclass(frozen=True, slots=True)
class Var(Expr):
    """A loop variable (always an index, int32)."""
    name: str

    @property
    def dtype(self) -> str:
        return INDEX


@dataclass(frozen=True, slots=True)
class Buffer:
    """A named n-d array: a kernel parameter or a local allocation.

    scope: 'global' for parameters, 'local' / 'shared' for allocations.
    """
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    scope: str = "global"

    def __getitem__(self, indices) -> Load:
        if not isinstance(indices, tuple):
            indices = (indices,)
        return Load(self, tuple(as_expr(i) for i in indices))

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True, slots=True)
class Load(Expr):
    buffer: Buffer
    indices: tuple[Expr, ...]

    @property
    def dtype(self) -> str:
        return self.buffer.dtype


@dataclass(frozen=True, slots=True)
class Binary(Expr):
    op: str
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:
        return self.a.dtype


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    op: str
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class Logic(Expr):
    """'and' / 'or' of two bools; 'not' is Not."""
    op: str
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class Not(Expr):
    a: Expr

    @property
    def dtype(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class Select(Expr):
    """`cond ? t : f`, lazily: only the chosen branch is evaluated, so a branch may load out of
    bounds when the condition excludes it (padding relies on this)."""
    cond: Expr
    t: Expr
    f: Expr

    @property
    def dtype(self) -> str:
        return self.t.dtype


@dataclass(frozen=True, slots=True)
class Cast(Expr):
    dtype: str
    value: Expr


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """An elementwise intrinsic from INTRINSICS."""
    fn: str
    args: tuple[Expr, ...]

    @property
    def dtype(self) -> str:
        return self.args[0].dtype


def as_expr(value, dtype: str = INDEX) -> Expr:
    """Wrap a Python number as a Const of `dtype` (bools stay bool); pass expressions through."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        return Const(value, "bool")
    if isinstance(value, (int, float)):
        dtype = canonical(dtype)
        if is_float(dtype):
            return Const(float(value), dtype)
        if isinstance(value, float) and not float(value).is_integer():
            raise TypeError(f"cannot use {value!r} in an expression of type {dtype}")
        return Const(int(value), dtype)
    if hasattr(value, "dtype") and hasattr(value, "item"):  # numpy scalar
        return as_expr(value.item(), dtype)
    raise TypeError(f"cannot make an expression from {value!r}")


def const(value, dtype: str) -> Const:
    return as_expr(value, canonical(dtype)) if not isinstance(value, bool) else Const(value, "bool")


def _cmp(op):
    def make(a, b):
        a_expr = as_expr(a, b.dtype if isinstance(b, Expr) else INDEX)
        return Compare(op, a_expr, as_expr(b, a_expr.dtype))
    make.__name__ = op
    return make


eq, ne, lt, le, gt, ge = (_cmp(op) for op in COMPARE_OPS)


def logical_and(*conds: Expr) -> Expr:
    """And of any number of conditions; True when there are none."""
    conds = [c for c in conds if not (isinstance(c, Const) and c.value is True)]
    if not conds:
        return Const(True, "bool")
    out = conds[0]
    for c in conds[1:]:
        out = Logic("and", out, c)
    return out


def logical_or(a: Expr, b: Expr) -> Expr:
    return Logic("or", a, b)


def select(cond: Expr, t, f) -> Expr:
    t_expr = as_expr(t, f.dtype if isinstance(f, Expr) else "float32")
    return Select(cond, t_expr, as_expr(f, t_expr.dtype))


def minimum(a, b) -> Expr:
    a_expr = as_expr(a, b.dtype if isinstance(b, Expr) else INDEX)
    return Binary("min", a_expr, as_expr(b, a_expr.dtype))


def maximum(a, b) -> Expr:
    a_expr = as_expr(a, b.dtype if isinstance(b, Expr) else INDEX)
    return Binary("max", a_expr, as_expr(b, a_expr.dtype))


def call(fn: str, *args) -> Call:
    if fn not in INTRINSICS:
        raise ValueError(f"unknown intrinsic {fn!r}")
    first = as_expr(args[0], "float32")
    return Call(fn, (first,) + tuple(as_expr(a, first.dtype) for a in args[1:]))


def bitwise(op: str, a, b) -> Expr:
    """A bitwise op from BITWISE_OPS; a Python int operand takes the other's dtype."""
    if op not in BITWISE_OPS:
        raise ValueError(f"unknown bitwise op {op!r}")
    a_expr = as_expr(a, b.dtype if isinstance(b, Expr) else INDEX)
    return Binary(op, a_expr, as_expr(b, a_expr.dtype))


def bitwise_not(x: Expr) -> Expr:
    """~x: x xor all ones (-1 in a signed type, the largest value in an unsigned one)."""
    if x.dtype == "bool":
        ones = Const(True, "bool")
    elif x.dtype.startswith("u"):
        ones = Const((1 << bits(x.dtype)) - 1, x.dtype)
    else:
        ones = Const(-1, x.dtype)
    return Binary("bitxor", x, ones)


def cast(dtype: str, value: Expr) -> Expr:
    dtype = canonical(dtype)
    return value if value.dtype == dtype else Cast(dtype, value)
