"""Well-formedness checks of a kernel, run after every pass in debug mode.

`verify(kernel)` raises VerifyError on the first problem: scoping (loop variables, buffers),
reductions outside reduce loops, stores into inputs, dtype mismatches, non-positive extents and
out-of-bounds indices. Bounds are checked with interval analysis over the loop ranges (ir/interval.py) and stay
conservative: an access under a guard (an enclosing `if`, a `select` branch, or the right side
of `&&` / `||`) is assumed to be protected by it and is not bounds-checked.
"""
from __future__ import annotations

from .dtypes import SHORT, is_int
from .errors import NestorError
from .expr import (BINARY_OPS, BITWISE_OPS, COMPARE_OPS, INTRINSICS, LOGIC_OPS, Binary, Buffer, Call, Cast,
                   Compare, Const, Expr, Load, Logic, Not, Select, Var)
from .interval import index_bounds
from .printer import print_expr, print_header, print_stmt, print_type
from .stmt import AXES, LOOP_KINDS, REDUCE_OPS, Allocate, For, If, Kernel, Seq, Stmt, Store

_ARITY = {"pow": 2}  # other intrinsics take one argument


class VerifyError(NestorError, ValueError):
    """A kernel that breaks the IR's rules (a user's hand-written one, or a pass's bug)."""


def verify(kernel: Kernel) -> None:
    _Verifier(kernel).kernel()


class _Verifier:
    def __init__(self, kernel: Kernel):
        self.k = kernel
        self.current: Stmt | None = None  # the statement being checked, for messages

    def fail(self, message: str):
        s = self.current
        where = "" if s is None else f" in `{print_stmt(s) if isinstance(s, Store) else print_header(s)}`"
        raise VerifyError(f"kernel {self.k.name}: {message}{where}")

    def kernel(self) -> None:
        names = [b.name for b in self.k.params]
        for b in self.k.params:
            self.check_buffer(b)
            if names.count(b.name) > 1:
                self.fail(f"parameter {b.name} is declared twice")
        scope = {b.name: b for b in self.k.params}
        self.stmt(self.k.body, scope, {}, reduce=False, guarded=False)

    def check_buffer(self, b: Buffer) -> None:
        if b.dtype not in SHORT:
            self.fail(f"buffer {b.name} has unknown dtype {b.dtype!r}")
        if any(not isinstance(d, int) or d < 0 for d in b.shape):
            self.fail(f"buffer {b.name} has a bad shape {b.shape}")

    # statements

    def stmt(self, s: Stmt, scope: dict, loops: dict, reduce: bool, guarded: bool) -> None:
        """`scope`: visible buffers by name; `loops`: enclosing loop variables -> extent."""
        if isinstance(s, Seq):
            for x in s.stmts:
                self.stmt(x, scope, loops, reduce, guarded)
            return
        self.current = s
        if isinstance(s, For):
            if s.var in loops:
                self.fail(f"loop variable {s.var} shadows an enclosing loop of the same name")
            if not isinstance(s.extent, int) or s.extent <= 0:
                self.fail(f"loop {s.var} has non-positive extent {s.extent}")
            if s.kind not in LOOP_KINDS or s.axis not in AXES:
                self.fail(f"loop {s.var} has unknown kind {s.kind!r} or axis {s.axis!r}")
            self.stmt(s.body, scope, {**loops, s.var: s.extent}, reduce or s.axis == "reduce", guarded)
        elif isinstance(s, Store):
            self.store(s, scope, loops, reduce, guarded)
        elif isinstance(s, If):
            self.expect_bool(self.expr(s.cond, scope, loops, guarded), "if condition")
            self.stmt(s.then, scope, loops, reduce, True)
            if s.otherwise is not None:
                self.stmt(s.otherwise, scope, loops, reduce, True)
        elif isinstance(s, Allocate):
            self.check_buffer(s.buffer)
            self.stmt(s.body, {**scope, s.buffer.name: s.buffer}, loops, reduce, guarded)
        else:
            self.current = None
            self.fail(f"not a statement: {s!r}")

    def store(self, s: Store, scope: dict, loops: dict, reduce: bool, guarded: bool) -> None:
        self.access(s.buffer, s.indices, scope, loops, guarded)
        if s.buffer in self.k.inputs:
            self.fail(f"store into input buffer {s.buffer.name}")
        if s.reduce is not None:
            if s.reduce not in REDUCE_OPS:
                self.fail(f"unknown reduction {s.reduce!r}")
            if not reduce:
                self.fail("reduction store outside any reduce loop")
        dtype = self.expr(s.value, scope, loops, guarded)
        if dtype != s.buffer.dtype:
            self.fail(f"stores a {dtype} value into {s.buffer.name} of dtype {s.buffer.dtype}")

    def access(self, b: Buffer, indices, scope: dict, loops: dict, guarded: bool) -> None:
        """Checks shared by loads and stores: the buffer is visible, indices are ints in bounds."""
        declared = scope.get(b.name)
        if declared is None:
            self.fail(f"buffer {b.name} is neither a parameter nor an enclosing allocation")
        if declared != b:
            self.fail(f"buffer {b.name} is used as {print_type(b)} {b.scope} but declared as "
                      f"{print_type(declared)} {declared.scope}")
        if len(indices) != len(b.shape):
            self.fail(f"{b.name} has {len(b.shape)} dimensions but is indexed with {len(indices)}")
        for dim, (idx, size) in enumerate(zip(indices, b.shape)):
            dtype = self.expr(idx, scope, loops, guarded)
            if not is_int(dtype):
                self.fail(f"index {print_expr(idx)} of {b.name} has dtype {dtype}, not an integer")
            bounds = index_bounds(idx, loops)
            if bounds is None or guarded:
                continue
            lo, hi = bounds
            if lo < 0 or hi >= size:
                always = hi < 0 or lo >= size
                self.fail(f"index {print_expr(idx)} of {b.name} (dimension {dim}, size {size}) ranges "
                          f"over [{lo}, {hi}] and is {'always' if always else 'sometimes'} out of bounds")

    # expressions: each check returns the expression's dtype

    def expr(self, e: Expr, scope: dict, loops: dict, guarded: bool) -> str:
        def sub(x, guard=guarded):
            return self.expr(x, scope, loops, guard)

        if isinstance(e, Const):
            if e.dtype not in SHORT:
                self.fail(f"constant {e.value!r} has unknown dtype {e.dtype!r}")
        elif isinstance(e, Var):
            if e.name not in loops:
                self.fail(f"undefined loop variable {e.name}")
        elif isinstance(e, Load):
            self.access(e.buffer, e.indices, scope, loops, guarded)
        elif isinstance(e, (Binary, Compare)):
            ops = BINARY_OPS if isinstance(e, Binary) else COMPARE_OPS
            if e.op not in ops:
                self.fail(f"unknown operator {e.op!r}")
            a, b = sub(e.a), sub(e.b)
            if a != b:
                self.fail(f"operands of {e.op} have different dtypes {a} and {b}: {print_expr(e)}")
            if e.op in BITWISE_OPS and not (is_int(a) or (a == "bool" and e.op.startswith("bit"))):
                self.fail(f"{e.op} of {a} operands (bitwise ops take integers): {print_expr(e)}")
        elif isinstance(e, Logic):
            if e.op not in LOGIC_OPS:
                self.fail(f"unknown operator {e.op!r}")
            self.expect_bool(sub(e.a), f"operand of {e.op}")
            self.expect_bool(sub(e.b, True), f"operand of {e.op}")
        elif isinstance(e, Not):
            self.expect_bool(sub(e.a), "operand of not")
        elif isinstance(e, Select):
            self.expect_bool(sub(e.cond), "select condition")
            t, f = sub(e.t, True), sub(e.f, True)
            if t != f:
                self.fail(f"select branches have different dtypes {t} and {f}: {print_expr(e)}")
        elif isinstance(e, Cast):
            if e.dtype not in SHORT:
                self.fail(f"cast to unknown dtype {e.dtype!r}")
            sub(e.value)
        elif isinstance(e, Call):
            if e.fn not in INTRINSICS:
                self.fail(f"unknown intrinsic {e.fn!r}")
            if len(e.args) != _ARITY.get(e.fn, 1):
                self.fail(f"{e.fn} takes {_ARITY.get(e.fn, 1)} argument(s), got {len(e.args)}")
            dtypes = {sub(a) for a in e.args}
            if len(dtypes) > 1:
                self.fail(f"arguments of {e.fn} have different dtypes: {print_expr(e)}")
        else:
            self.fail(f"not an expression: {e!r}")
        return e.dtype

    def expect_bool(self, dtype: str, what: str) -> None:
        if dtype != "bool":
            self.fail(f"{what} has dtype {dtype}, not bool")

