"""Nestor Kernel -> TVM TIR PrimFunc.

Built with TVM's IR builder (no TVMScript text, no parsing): a plain loop nest of For /
BufferStore / IfThenElse / AllocBuffer, which tvm.compile lowers without any schedule.
"""
from __future__ import annotations

import contextlib

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as T

from .fast_math import FAST_FLOAT32
from .target import TargetError
from nestor.ir.affine import affine_form
from nestor.ir import (Allocate, Binary, Buffer, Call, Cast, Compare, Const, For, If, Kernel,
                       Load, Logic, Not, Seq, Select, Store, Var, is_float, storage, walk, walk_stmts)
from .narrow_types import loaded, narrowed, stored, value_dtype

_FOR = {"serial": T.serial, "parallel": T.parallel, "vectorized": T.vectorized,
        "unrolled": T.unroll}

_COMPARE = {"eq": tirx.EQ, "ne": tirx.NE, "lt": tirx.LT, "le": tirx.LE, "gt": tirx.GT,
            "ge": tirx.GE}


_BITWISE = {"bitand": tirx.bitwise_and, "bitor": tirx.bitwise_or, "bitxor": tirx.bitwise_xor,
            "shl": tirx.shift_left, "shr": tirx.shift_right}  # shr: arithmetic for signed types

_NEGATED = {"eq": "ne", "ne": "eq", "lt": "ge", "le": "gt", "gt": "le", "ge": "lt"}

_INTRIN = {
    "exp": tirx.exp, "log": tirx.log, "sqrt": tirx.sqrt, "rsqrt": tirx.rsqrt, "tanh": tirx.tanh,
    "erf": tirx.erf, "sigmoid": tirx.sigmoid, "abs": tirx.abs, "floor": tirx.floor,
    "ceil": tirx.ceil,
    "round": tirx.nearbyint,  # ONNX Round: half to even, which nearbyint gives in the default mode
    "pow": tirx.pow, "sin": tirx.sin, "cos": tirx.cos,
}


def _float32_intrinsic(fn: str, args, polynomials: bool):
    """With `polynomials` (LLVM), arithmetic that vectorizes where libm's would be scalar calls
    even in a vector loop; without (CUDA, whose exp, tanh and erf are fast native calls), the
    intrinsic itself."""
    return FAST_FLOAT32[fn](*args) if polynomials and fn in FAST_FLOAT32 else _INTRIN[fn](*args)


@contextlib.contextmanager
def _bound(scope: dict, key, value):
    """Bind key to value while lowering a body (inner loops and allocations shadow outer ones)."""
    old = scope.get(key, _bound)
    scope[key] = value
    try:
        yield
    finally:
        if old is _bound:
            del scope[key]
        else:
            scope[key] = old


class _Lower:
    def __init__(self, kernel: Kernel, gpu: bool):
        self.gpu = gpu
        self.name = kernel.name
        self.launched = 0  # GPU-bound loops around the statement being lowered
        self.vars: dict[str, tirx.Var] = {}
        self.bufs: dict[Buffer, tirx.Buffer] = {}
        self.thread_extents: dict[str, int] = {}  # of the launch being lowered (_launch_extents)
        self.vector_vars: dict[str, int] = {}  # extents; which guards on them peel: see _peelable
        self.unrolled_vars: set[str] = set()
        for s in walk_stmts(kernel.body):
            if isinstance(s, For) and s.kind == "vectorized":
                self.vector_vars[s.var] = s.extent
            elif isinstance(s, For) and s.kind == "unrolled":
                self.unrolled_vars.add(s.var)

    def _peelable(self, cond) -> bool:
        return not any((isinstance(e, Var) and e.name in self.vector_vars and not self._vector_tail(cond))
                       or (isinstance(e, Binary) and e.op in ("div", "floordiv", "mod"))
                       or (isinstance(e, Compare) and self._unrolled_major(e)) for e in walk(cond))

    def _vector_tail(self, cond) -> bool:
        """A comparison on a vector loop's index that a split's tail makes (`o * 16 + v < 251`,
        v's extent dividing every other loop's step): it cuts the vector loop for one value of the
        other loops only, where partitioning fixes them, so the cut loop has a constant extent
        (a vector of 11 lanes) and every other iteration runs the whole vector unguarded."""
        form = affine_form(Binary("sub", cond.a, cond.b)) if isinstance(cond, Compare) else None
        if form is None:
            return False
        vector = [v for v in form[0] if v in self.vector_vars]
        return len(vector) == 1 and abs(form[0][vector[0]]) == 1 and all(
            c % self.vector_vars[vector[0]] == 0 for v, c in form[0].items() if v != vector[0])

    def _unrolled_major(self, e: Compare) -> bool:
        """An unrolled loop steps the compared index by more than one (a split's outer part
        unrolled, the inner part a serial loop around it): partitioning the loops by the guard
        would leave the unrolled one an extent that depends on the other, which TVM cannot
        unroll. (A tile's unrolled inner part steps by one: its guard is peeled.)"""
        form = affine_form(Binary("sub", e.a, e.b))
        return form is not None and any(v in self.unrolled_vars and abs(c) > 1 for v, c in form[0].items())

    # -- expressions -------------------------------------------------------------------------
    def expr(self, e):
        if isinstance(e, Const):
            return tirx.const(e.value, value_dtype(e.dtype))
        if isinstance(e, Var):
            try:
                return self.vars[e.name]
            except KeyError:
                raise ValueError(f"loop variable {e.name!r} used outside its loop") from None
        if isinstance(e, Load):
            return loaded(tirx.BufferLoad(self.buffer(e.buffer), [self.expr(i) for i in e.indices]), e.dtype)
        if isinstance(e, Binary):
            return self.binary(e.op, self.expr(e.a), self.expr(e.b), e.dtype)
        if isinstance(e, Compare):
            return self.compare(e)
        if isinstance(e, Logic):
            a, b = self.expr(e.a), self.expr(e.b)
            return tirx.And(a, b) if e.op == "and" else tirx.Or(a, b)
        if isinstance(e, Not):
            return self.negate(e.a)
        if isinstance(e, Select):
            branches = (e.t, e.f)
            if all(isinstance(x, (Load, Const)) for x in branches) and any(isinstance(x, Load) for x in branches):
                # a padding guard: both branches evaluated, the load clamped into its buffer.
                # if_then_else, which evaluates only the taken branch, is scalarized lane by
                # lane in a vectorized loop (a padded max pool ran 2-8x slower). (Not for two
                # constants: TVM folds select(c, -0.0, 0.0) to one zero.)
                return tirx.Select(self.expr(e.cond), self.clamped(e.t), self.clamped(e.f))
            # if_then_else, not Select: only the taken branch is evaluated
            return tirx.if_then_else(self.expr(e.cond), self.expr(e.t), self.expr(e.f))
        if isinstance(e, Cast):
            return narrowed(tirx.Cast(value_dtype(e.dtype), self.expr(e.value)), e.dtype)
        if isinstance(e, Call):
            args = [self.expr(a) for a in e.args]
            if e.fn == "neg":
                return tirx.const(0, e.dtype) - args[0] if not is_float(e.dtype) else -args[0]
            if e.dtype == "float16" and e.fn != "abs":
                # LLVM lacks several half intrinsics (erf ...): compute in float32, round back
                wide = [tirx.Cast("float32", a) for a in args]
                return tirx.Cast("float16", _float32_intrinsic(e.fn, wide, not self.gpu))
            if e.dtype == "float32":
                return _float32_intrinsic(e.fn, args, not self.gpu)
            return _INTRIN[e.fn](*args)
        raise TypeError(f"not an expression: {e!r}")

    def clamped(self, e):
        """`e`; a load with each index clamped into its dimension (in bounds whatever it was)."""
        if not isinstance(e, Load):
            return self.expr(e)
        indices = [tirx.max(tirx.min(self.expr(i), tirx.const(n - 1, i.dtype)), tirx.const(0, i.dtype))
                   for i, n in zip(e.indices, e.buffer.shape)]
        return loaded(tirx.BufferLoad(self.buffer(e.buffer), indices), e.dtype)

    def compare(self, e: Compare):
        a, b = self.expr(e.a), self.expr(e.b)
        if e.a.dtype == "bool":  # TVM's LLVM codegen emits fcmp for i1 operands: compare as int8
            return _COMPARE[e.op](tirx.Cast("int8", a), tirx.Cast("int8", b))
        if not is_float(e.a.dtype):
            return _COMPARE[e.op](a, b)
        # IEEE semantics, as in NumPy: NaN compares unequal to everything, itself included.
        # TVM folds x == x to true and emits an ordered fcmp for !=, so spell NaNs out.
        if e.a == e.b:
            nan = tirx.isnan(a)
            return {"ne": nan, "lt": tirx.const(False, "bool"), "gt": tirx.const(False, "bool")
                    }.get(e.op, tirx.Not(nan))
        if e.op == "ne":
            return tirx.Or(tirx.NE(a, b), tirx.Or(tirx.isnan(a), tirx.isnan(b)))
        return _COMPARE[e.op](a, b)

    def negate(self, e):
        """not e, pushed down to the comparisons: TVM rewrites !(a < b) to b <= a, which is wrong
        for NaN, so a float comparison is negated here with the NaN case made explicit."""
        if isinstance(e, Not):
            return self.expr(e.a)
        if isinstance(e, Logic):
            a, b = self.negate(e.a), self.negate(e.b)
            return tirx.Or(a, b) if e.op == "and" else tirx.And(a, b)
        if isinstance(e, Compare) and is_float(e.a.dtype):
            if e.op == "eq":
                return self.compare(Compare("ne", e.a, e.b))
            flipped = self.compare(Compare(_NEGATED[e.op], e.a, e.b))
            if e.op == "ne":
                return flipped
            a, b = self.expr(e.a), self.expr(e.b)
            return tirx.Or(flipped, tirx.Or(tirx.isnan(a), tirx.isnan(b)))
        return tirx.Not(self.expr(e))

    @classmethod
    def binary(cls, op, a, b, dtype):
        if dtype == "bool":  # i1 arithmetic hits the same LLVM codegen gaps as i1 compares
            wide = cls.binary(op, tirx.Cast("int8", a), tirx.Cast("int8", b), "int8")
            return tirx.Cast("bool", wide)
        if op == "add":
            return tirx.Add(a, b)
        if op == "sub":
            return tirx.Sub(a, b)
        if op == "mul":
            return tirx.Mul(a, b)
        if op == "min":
            return tirx.Min(a, b)
        if op == "max":
            return tirx.Max(a, b)
        if op in _BITWISE:
            return _BITWISE[op](a, b)
        if is_float(dtype):
            if op == "div":
                return tirx.Div(a, b)
            if op == "floordiv":
                return tirx.floor(tirx.Div(a, b))
            if op == "mod":  # sign of the divisor, like Python and numpy
                return tirx.Sub(a, tirx.Mul(tirx.floor(tirx.Div(a, b)), b))
        else:
            if op == "div":  # C semantics (truncation), like ONNX integer Div
                return tirx.truncdiv(a, b)
            if op == "floordiv":
                return tirx.floordiv(a, b)
            if op == "mod":
                return tirx.floormod(a, b)
        raise ValueError(f"unknown binary op {op!r}")

    def buffer(self, b: Buffer):
        try:
            return self.bufs[b]
        except KeyError:
            raise ValueError(f"buffer {b.name!r} is not a parameter nor allocated here") from None

    # -- statements --------------------------------------------------------------------------
    def stmt(self, s):
        if isinstance(s, Seq):
            for part in s.stmts:
                self.stmt(part)
        elif isinstance(s, Store):
            if self.gpu and not self.launched:  # TVM would make it host code on device memory
                raise TargetError(f"kernel {self.name}: the store to {s.buffer.name} is in no loop bound "
                                  "to the GPU; a GPU target needs every loop nest bound to blockIdx/"
                                  "threadIdx (a GPU schedule, or bind(loop, blockIdx.x) ...)")
            buf = self.buffer(s.buffer)
            idx = [self.expr(i) for i in s.indices]
            val = self.expr(s.value)
            if s.reduce is not None:
                val = self.binary(s.reduce, loaded(tirx.BufferLoad(buf, idx), s.buffer.dtype), val,
                                  s.buffer.dtype)
            T.buffer_store(buf, stored(val, s.buffer.dtype), idx)
        elif isinstance(s, For):
            if s.kind == "vectorized" and _stores_bfloat16_constant(s):
                # TVM's bfloat16 legalization leaves a vector of a bfloat16 constant in the
                # uint16 buffer it makes of a bfloat16 one, and fails: such a loop stays serial
                s = For(s.var, s.extent, s.body, "serial", s.axis)
            if s.kind in _FOR:
                frame, extent = _FOR[s.kind](0, s.extent), s.extent
            elif not self.gpu:  # a GPU binding on the CPU: its iterations are independent and
                # sibling loops of a block run in order (as TVM's barriers make them on the GPU),
                # so serially they compute the same: how GPU schedules are checked without a GPU,
                # and how constant stages of a GPU schedule run at compile time
                frame, extent = T.serial(0, s.extent), s.extent
            else:  # GPU binding: the loop is the thread axis, launched with the launch's largest
                # extent for that axis (TVM does that too, silently): smaller loops are guarded
                if not self.launched:  # each top-level bound nest is a kernel launch of its own
                    self.thread_extents = _launch_extents(s)
                extent = self.thread_extents[s.kind]
                frame = T.thread_binding(0, extent, thread=s.kind)
            launched = self.gpu and s.kind not in _FOR
            with frame as v, _bound(self.vars, s.var, v):
                IRBuilder.name(s.var, v)
                self.launched += launched
                if extent > s.extent:
                    with T.If(v < s.extent), T.Then():
                        self.stmt(s.body)
                else:
                    self.stmt(s.body)
                self.launched -= launched
        elif isinstance(s, If) and s.otherwise is None and isinstance(s.cond, Logic) and s.cond.op == "and":
            # loop partitioning reads one comparison a likely(): two tiles' tails as nested ifs
            self.stmt(If(s.cond.a, If(s.cond.b, s.then)))
        elif isinstance(s, If):
            # likely(): TVM's loop partitioning only splits loops on likely conditions; so a
            # non-dividing tile's guard is peeled off into its last iteration, and the others
            # run unguarded (ResNet-50's 14x14 1x1 conv in 6-pixel tiles: 1.39 ms peeled, 1.71
            # guarded). Only where the peeled loops keep constant extents: on vector lanes only
            # a split's tail (_vector_tail), not through a fused loop's // and % (TVM cannot
            # vectorize or unroll a min(..) extent).
            cond = self.expr(s.cond)
            if self._peelable(s.cond):
                cond = tirx.likely(cond)
            with T.If(cond):
                with T.Then():
                    self.stmt(s.then)
                if s.otherwise is not None:
                    with T.Else():
                        self.stmt(s.otherwise)
        elif isinstance(s, Allocate):
            b = s.buffer
            # AllocBuffer emitted inside the enclosing loop body: a parallel loop gets its own copy.
            # On a CPU, TVM puts a small buffer on the stack only where its scope is "global"; a
            # "local" one costs a TVMBackendAllocWorkspace call each time its loop body runs.
            scope = "global" if not self.gpu and b.scope == "local" else b.scope
            buf = T.alloc_buffer(b.shape, storage(b.dtype), scope=scope)
            IRBuilder.name(b.name, buf)
            with _bound(self.bufs, b, buf):
                self.stmt(s.body)
        else:
            raise TypeError(f"not a statement: {s!r}")


def _stores_bfloat16_constant(loop: For) -> bool:
    return any(isinstance(s, Store) and s.buffer.dtype == "bfloat16" and isinstance(s.value, Const)
               for s in walk_stmts(loop.body))


def _launch_extents(launch: For) -> dict[str, int]:
    """The largest extent of each GPU axis among the loops of one launch."""
    extents: dict[str, int] = {}
    for s in walk_stmts(launch):
        if isinstance(s, For) and s.kind not in _FOR:
            extents[s.kind] = max(s.extent, extents.get(s.kind, 0))
    return extents


def to_primfunc(kernel: Kernel, gpu: bool = False) -> tirx.PrimFunc:
    """The kernel as a PrimFunc named kernel.name with params inputs + outputs, in that order.
    `gpu`: for a CUDA target (native math calls, bound loops launched as thread axes); else for
    the CPU (float32 polynomials of fast_math.py, bound loops serial)."""
    low = _Lower(kernel, gpu)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(kernel.name)
            T.func_attr({"tirx.noalias": True})
            for b in kernel.params:
                if b in low.bufs:
                    raise ValueError(f"kernel {kernel.name}: buffer {b.name!r} passed twice")
                # offset_factor=1: elem_offset becomes a parameter, so the kernel accepts views
                # at any byte offset (one memory arena for all intermediates) and data that is
                # not 64-byte aligned. The default instead assumes both (byte_offset == 0 is
                # checked, alignment is not: a misaligned numpy-backed tensor would segfault).
                low.bufs[b] = T.arg(b.name, T.buffer(b.shape, storage(b.dtype), offset_factor=1))
            low.stmt(kernel.body)
    return ib.get()
