"""TVM TIR PrimFunc -> Nestor Kernel: the mirror of tir.py, for the kernels TVM hands us
(MetaSchedule's tasks, made by Relax legalization and FuseTIR, or by te.create_prim_func).

A block-structured function becomes a plain loop nest: each block's iteration variables are
replaced by their bindings; a block with an init becomes a Nestor reduction, its init stored
before its outermost reduce loop and its update a `+=` / `max=` ... store; the buffers blocks
allocate become Allocates around them (the kernel's stages). A loop is a reduce loop when it
feeds a block's reduce iteration variable. The params the function writes are the kernel's
outputs, the others its inputs, each in the function's order.

TIR indexes with int64 (`T.int64` extents); Nestor's indices are int32, so every integer that is
not loaded data is read as an index (buffers above 2**31 elements are refused).
"""
from __future__ import annotations

import re

from tvm import ir as tvm_ir
from tvm import s_tir, tirx

from nestor.ir import (INDEX, Allocate, Binary, Buffer, Call, Compare, Const, Expr, For, If, Kernel, Load,
                       Logic, ModelError, Not, Select, Seq, Store, Var, canonical, cast, is_float, is_int, rewrite_stmt,
                       seq, substitute, variables)


class TIRImportError(ModelError):
    """A PrimFunc with a construct Nestor's IR cannot express; the message names the block."""


_BINARY = {tirx.Add: "add", tirx.Sub: "sub", tirx.Mul: "mul", tirx.Min: "min", tirx.Max: "max",
           tirx.FloorDiv: "floordiv", tirx.FloorMod: "mod"}
_COMPARE = {tirx.EQ: "eq", tirx.NE: "ne", tirx.LT: "lt", tirx.LE: "le", tirx.GT: "gt", tirx.GE: "ge"}
_INTRIN = {"tirx.exp": "exp", "tirx.log": "log", "tirx.sqrt": "sqrt", "tirx.rsqrt": "rsqrt",
           "tirx.tanh": "tanh", "tirx.erf": "erf", "tirx.sigmoid": "sigmoid", "tirx.fabs": "abs",
           "tirx.floor": "floor", "prim.ceil": "ceil", "tirx.nearbyint": "round", "tirx.pow": "pow",
           "tirx.sin": "sin", "tirx.cos": "cos"}
# Reductions a block's update may be: `acc = acc + x` (either side) is `acc += x`.
_REDUCE = {tirx.Add: "add", tirx.Mul: "mul", tirx.Max: "max", tirx.Min: "min"}
_LOOP_KIND = {int(tirx.ForKind.SERIAL): "serial", int(tirx.ForKind.PARALLEL): "parallel",
              int(tirx.ForKind.VECTORIZED): "vectorized", int(tirx.ForKind.UNROLLED): "unrolled"}
_INT32_MAX = 2 ** 31 - 1
_AUTO_UNROLL = "pragma_auto_unroll_max_step"   # MetaSchedule's unroll decision on a loop


def kernel_from_primfunc(func: tirx.PrimFunc, name: str | None = None) -> Kernel:
    """The PrimFunc as a Nestor kernel named `name` (default: its global symbol, else 'main');
    raises TIRImportError naming the block of a construct it cannot express."""
    name = name or str((func.attrs or {}).get("global_symbol", "main"))
    return _Importer(func, identifier(name)).kernel()


def identifier(name: str) -> str:
    """A name the IR's text form accepts (a parameter's, such as ONNX's 'gpu_0/data_0', becomes
    the kernel buffer's name this way)."""
    name = re.sub(r"\W", "_", name)
    return name if re.match(r"[A-Za-z_]", name) else "_" + name


def _tvm_vars(e, out: set) -> set:
    """The TVM Vars in expression `e`."""
    if isinstance(e, tvm_ir.Var):
        out.add(e)
    for field in ("a", "b", "value", "condition", "true_value", "false_value"):
        sub = getattr(e, field, None)
        if isinstance(sub, tvm_ir.Expr):
            _tvm_vars(sub, out)
    for sub in list(getattr(e, "args", ())) + list(getattr(e, "indices", ())):
        _tvm_vars(sub, out)
    return out


class _Importer:
    def __init__(self, func: tirx.PrimFunc, name: str):
        self.func, self.name = func, name
        self.block = "root"  # the block being imported, for messages
        self.used: set[str] = set()  # every buffer and loop name given so far
        self.vars: dict = {}  # TVM Var (loop or block iteration variable) -> Nestor Expr
        self.bufs: dict = {}  # TVM buffer -> Nestor Buffer
        self.reduce_axes: dict = {}  # TVM loop Var -> True when it feeds a reduce iteration var
        self.written: set = set()  # TVM buffers some store writes
        self.in_reduce = False  # inside a reduce loop
        self.inits: list = []  # init stores waiting for their outermost reduce loop
        self.inner_spatial: list[For] = []  # spatial loops entered since that reduce loop
        self.reduce_loops: set[str] = set()  # names of the enclosing reduce loops

    def fail(self, reason: str):
        raise TIRImportError(f"cannot import {self.name}, block {self.block!r}: {reason}")

    def fresh(self, base: str) -> str:
        base = identifier(base)
        name, n = base, 0
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name

    def kernel(self) -> Kernel:
        self.scan(self.func.body)
        params = self.func.params
        for p in params:
            if not isinstance(getattr(p, "ty", None), tirx.BufferType):
                self.fail(f"parameter {p.name} is a scalar, not a buffer")
            self.bufs[p] = self.buffer(p)
        body = self.stmt(self.func.body)
        inputs = tuple(self.bufs[p] for p in params if p not in self.written)
        outputs = tuple(self.bufs[p] for p in params if p in self.written)
        if not outputs:
            self.fail("the function writes none of its parameters")
        return Kernel(self.name, inputs, outputs, body)

    def scan(self, s) -> None:
        """Record the buffers stores write and which loop variables feed reduce iterations."""
        if isinstance(s, tirx.BufferStore):
            self.written.add(s.buffer)
        elif isinstance(s, tirx.SeqStmt):
            for x in s.seq:
                self.scan(x)
        elif isinstance(s, (tirx.For, tirx.IfThenElse)):
            for x in (getattr(s, "body", None), getattr(s, "then_case", None), getattr(s, "else_case", None)):
                if x is not None:
                    self.scan(x)
        elif isinstance(s, s_tir.SBlockRealize):
            for iv, value in zip(s.block.iter_vars, s.iter_values):
                for v in _tvm_vars(value, set()):
                    reduce = int(iv.iter_type) == tirx.IterVar.CommReduce
                    self.reduce_axes[v] = self.reduce_axes.get(v, False) or reduce
            for x in (s.block.init, s.block.body):
                if x is not None:
                    self.scan(x)

    def buffer(self, b) -> Buffer:
        shape = []
        for d in b.shape:
            if not isinstance(d, tirx.IntImm):
                self.fail(f"buffer {b.name} has a dynamic shape {list(b.shape)}")
            shape.append(int(d.value))
        if len(b.strides):
            self.fail(f"buffer {b.name} has strides {list(b.strides)}")
        try:
            dtype = canonical(str(b.dtype))
        except ValueError:
            self.fail(f"buffer {b.name} has element type {b.dtype}, which Nestor lacks")
        buf = Buffer(self.fresh(b.name), tuple(shape), dtype, _scope(b))
        if buf.size > _INT32_MAX:
            self.fail(f"buffer {b.name} has {buf.size} elements, beyond Nestor's int32 indices")
        return buf

    # -- statements --------------------------------------------------------------------------
    def stmt(self, s):
        if isinstance(s, tirx.SeqStmt):
            return self.sequence(list(s.seq))
        if isinstance(s, tirx.For):
            return self.loop(s)
        if isinstance(s, s_tir.SBlockRealize):
            return self.realize(s)
        if isinstance(s, tirx.BufferStore):
            return Store(self.bufs_of(s.buffer), self.indices(s.indices), self.value(s.value, s.buffer.dtype))
        if isinstance(s, tirx.IfThenElse):
            otherwise = None if s.else_case is None else self.stmt(s.else_case)
            return If(self.expr(s.condition), self.stmt(s.then_case), otherwise)
        if isinstance(s, tirx.Evaluate) and isinstance(s.value, tirx.IntImm):
            return None  # a no-op
        self.fail(f"statement {type(s).__name__} is not supported")

    def sequence(self, stmts: list):
        """Statements in order; an AllocBuffer scopes the ones after it."""
        for i, s in enumerate(stmts):
            if isinstance(s, tirx.AllocBuffer):
                head = [self.stmt(x) for x in stmts[:i]]
                return seq(*head, self.allocate([s.buffer], lambda: self.sequence(stmts[i + 1:])))
        return seq(*(self.stmt(x) for x in stmts))

    def allocate(self, buffers, body_fn):
        nested = [(b, self.buffer(b)) for b in buffers]
        for b, nb in nested:
            self.bufs[b] = nb
        body = body_fn()
        for _, nb in reversed(nested):
            body = Allocate(nb, body)
        return body

    def loop(self, s: tirx.For):
        kind = int(s.kind)
        if kind == int(tirx.ForKind.THREAD_BINDING):
            kind_name = str(s.thread_binding.thread_tag)
        elif kind in _LOOP_KIND:
            kind_name = _LOOP_KIND[kind]
        else:
            self.fail(f"loop {s.loop_var.name} has kind {kind}")
        if not isinstance(s.extent, tirx.IntImm) or not isinstance(s.min, tirx.IntImm):
            self.fail(f"loop {s.loop_var.name} has a dynamic range")
        if s.step is not None and not (isinstance(s.step, tirx.IntImm) and s.step.value == 1):
            self.fail(f"loop {s.loop_var.name} steps by {s.step}")
        name = self.fresh(s.loop_var.name)
        begin = int(s.min.value)
        self.vars[s.loop_var] = Var(name) + begin if begin else Var(name)
        reduce = self.reduce_axes.get(s.loop_var, False)
        outermost = reduce and not self.in_reduce
        if outermost:
            saved, self.in_reduce, self.inits, self.inner_spatial = (
                (self.in_reduce, self.inits, self.inner_spatial), True, [], [])
        loop = For(name, int(s.extent.value), None, kind_name, "reduce" if reduce else "spatial")
        if reduce:
            self.reduce_loops.add(name)
        elif self.in_reduce:
            self.inner_spatial.append(loop)
        body = self.stmt(s.body)
        if reduce:
            self.reduce_loops.discard(name)
        elif self.in_reduce:
            self.inner_spatial.pop()
        loop = For(name, loop.extent, body, loop.kind, loop.axis)
        max_step = (s.annotations or {}).get(_AUTO_UNROLL)
        if max_step is not None:
            loop = _auto_unrolled(loop, int(max_step))
        if not outermost:
            return loop
        inits = self.inits
        self.in_reduce, self.inits, self.inner_spatial = saved
        return seq(*inits, loop)

    def realize(self, r: s_tir.SBlockRealize):
        block, outer = r.block, self.block
        self.block = str(block.name_hint)
        if block.match_buffers:
            self.fail("match_buffer is not supported")
        for iv, value in zip(block.iter_vars, r.iter_values):
            if int(iv.iter_type) not in (tirx.IterVar.DataPar, tirx.IterVar.CommReduce):
                self.fail(f"iteration variable {iv.var.name} has type {int(iv.iter_type)}")
            self.vars[iv.var] = self.expr(value)
        always = isinstance(r.predicate, tirx.IntImm) and r.predicate.value
        guard = None if always else self.expr(r.predicate)  # a split's tail: init and update skip it
        body = self.allocate(block.alloc_buffers, lambda: self.block_body(block, guard))
        self.block = outer
        return body if guard is None else If(guard, body)

    def block_body(self, block, guard: Expr | None):
        init, update = block.init, block.body
        if init is None:
            reducing = any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in block.iter_vars)
            if reducing and self.in_reduce and isinstance(update, tirx.BufferStore):
                # its init a block of its own (decompose_reduction): still a reduction
                buf = self.bufs_of(update.buffer)
                acc = Load(buf, self.indices(update.indices))
                found = self.reduction(update, acc)
                if found is not None:
                    return Store(buf, acc.indices, found[1], reduce=found[0])
            return self.stmt(update)
        if not (isinstance(init, tirx.BufferStore) and isinstance(update, tirx.BufferStore)
                and init.buffer.same_as(update.buffer)):
            self.fail("a reduction whose init and update are not single stores to one buffer")
        buf, idx = self.bufs_of(update.buffer), self.indices(update.indices)
        if self.indices(init.indices) != idx:
            self.fail("a reduction whose init and update store to different elements")
        found = self.reduction(update, Load(buf, idx))
        if found is None:
            self.fail("a reduction update that is not acc = acc + x, acc * x, max(acc, x) or min(acc, x)")
        op, term = found
        start = self.value(init.value, update.buffer.dtype)
        if not self.in_reduce:  # no reduce loop around it (its reduce axes are bound to constants)
            return Store(buf, idx, Binary(op, start, term))
        first = Store(buf, idx, start) if guard is None else If(guard, Store(buf, idx, start))
        used = variables(idx)  # the init runs once per element: in the spatial loops it indexes by
        if guard is not None:
            used |= variables([guard])
        if used & self.reduce_loops:
            self.fail("a reduction whose init depends on a reduce loop")
        for loop in reversed(self.inner_spatial):
            if loop.var in used:
                name = self.fresh(loop.var)
                first = For(name, loop.extent, substitute(first, {loop.var: Var(name)}), loop.kind)
        self.inits.append(first)
        return Store(buf, idx, term, reduce=op)

    def reduction(self, update: tirx.BufferStore, acc: Load) -> tuple[str, Expr] | None:
        """(op, term) of an update `acc = op(acc, term)`; None for another update."""
        v = update.value
        op = _REDUCE.get(type(v))
        if op is not None:
            a, b = self.expr(v.a), self.expr(v.b)
            if a == acc:
                return op, b
            if b == acc:
                return op, a
        return None

    def bufs_of(self, b) -> Buffer:
        try:
            return self.bufs[b]
        except KeyError:
            self.fail(f"buffer {b.name} is neither a parameter nor allocated by an enclosing block")

    # -- expressions -------------------------------------------------------------------------
    def indices(self, indices) -> tuple[Expr, ...]:
        return tuple(self.expr(i) for i in indices)

    def value(self, e, dtype) -> Expr:
        """e as a value stored into a buffer of `dtype`."""
        return _retyped(self.expr(e), self.dtype(dtype))

    def expr(self, e) -> Expr:
        t = type(e)
        if t is tirx.IntImm:
            dtype = str(e.ty.dtype)
            if dtype == "bool":
                return Const(bool(e.value), "bool")
            # int64 / int32 constants are indices unless an operation with data retypes them
            return Const(int(e.value), INDEX if dtype in ("int64", "int32") else canonical(dtype))
        if t is tirx.FloatImm:
            return Const(float(e.value), self.dtype(e.ty.dtype))
        if t is tvm_ir.Var:
            try:
                return self.vars[e]
            except KeyError:
                self.fail(f"variable {e.name} is defined by no loop or block")
        if t is tvm_ir.TensorLoad:
            return Load(self.bufs_of(e.source), self.indices(e.indices))
        if t in _BINARY:
            a, b = _unified(self.expr(e.a), self.expr(e.b))
            return Binary(_BINARY[t], a, b)
        if t is tirx.Div:  # truncating on integers, which Nestor's div is too
            a, b = _unified(self.expr(e.a), self.expr(e.b))
            return Binary("div", a, b)
        if t is tirx.Mod:  # truncating: a - trunc(a / b) * b
            a, b = _unified(self.expr(e.a), self.expr(e.b))
            return a - Binary("div", a, b) * b
        if t in _COMPARE:
            a, b = _unified(self.expr(e.a), self.expr(e.b))
            return Compare(_COMPARE[t], a, b)
        if t is tirx.And or t is tirx.Or:
            return Logic("and" if t is tirx.And else "or", self.expr(e.a), self.expr(e.b))
        if t is tirx.Not:
            return Not(self.expr(e.a))
        if t is tirx.Select:
            return self.select(e.condition, e.true_value, e.false_value)
        if t is tirx.Cast:
            value = self.expr(e.value)
            if str(e.ty.dtype) == "int64" and value.dtype == INDEX:
                return value  # an index widened, as TIR's are
            return cast(self.dtype(e.ty.dtype), value)
        if t is tvm_ir.Call:
            return self.call(e)
        self.fail(f"expression {type(e).__name__} ({e}) is not supported")

    def select(self, cond, t, f) -> Expr:
        a, b = _unified(self.expr(t), self.expr(f))
        return Select(self.expr(cond), a, b)

    def call(self, e) -> Expr:
        op = str(getattr(e.op, "name", e.op))
        if op in ("prim.if_then_else", "tirx.if_then_else"):
            return self.select(*e.args)
        if op == "tirx.likely":
            return self.expr(e.args[0])
        fn = _INTRIN.get(op)
        if fn is None:
            self.fail(f"call to {op} is not supported")
        args = [self.expr(a) for a in e.args]
        if not is_float(args[0].dtype):
            self.fail(f"{op} of a {args[0].dtype} value is not supported")
        return Call(fn, tuple(args))

    def dtype(self, dtype) -> str:
        try:
            return canonical(str(dtype))
        except ValueError:
            self.fail(f"element type {dtype} is not supported")


def _auto_unrolled(loop: For, max_step: int) -> For:
    """The serial loops of `loop` that TVM's UnrollLoop unrolls under an auto-unroll pragma of
    `max_step`, marked unrolled: those with no loop left rolled inside whose unrolled body would
    hold at most `max_step` statements (a vector loop is one vector statement)."""
    def unrolled(s):
        if isinstance(s, For) and s.kind == "serial":
            steps = _unrolled_steps(s.body)
            if steps is not None and s.extent * steps <= max_step:
                return For(s.var, s.extent, s.body, "unrolled", s.axis)
        return None
    return rewrite_stmt(loop, stmt_fn=unrolled)


def _unrolled_steps(s) -> int | None:
    """Statements `s` runs once unrolled; None when a rolled loop stays inside."""
    if isinstance(s, Store):
        return 1
    if isinstance(s, For):
        inner = _unrolled_steps(s.body)
        if inner is None or s.kind not in ("unrolled", "vectorized"):
            return None
        return inner * (s.extent if s.kind == "unrolled" else 1)
    parts = (s.stmts if isinstance(s, Seq) else (s.then, s.otherwise) if isinstance(s, If)
             else (s.body,) if isinstance(s, Allocate) else ())
    steps = [_unrolled_steps(p) for p in parts if p is not None]
    return None if None in steps else sum(steps)


def _scope(b) -> str:
    scope = str(b.scope()) if callable(getattr(b, "scope", None)) else "global"
    return scope if scope in ("local", "shared") else "global"


def _retyped(x: Expr, dtype: str) -> Expr:
    """x as `dtype`: an integer constant retyped, an index cast to integer data."""
    if x.dtype == dtype:
        return x
    if isinstance(x, Const) and is_int(x.dtype) and (is_int(dtype) or is_float(dtype)):
        return Const(float(x.value) if is_float(dtype) else int(x.value), dtype)
    return cast(dtype, x)


def _unified(a: Expr, b: Expr) -> tuple[Expr, Expr]:
    """Operands of one dtype: an index (int32) meeting integer data of another width takes the
    data's dtype, as the int64 it was in TIR did."""
    if a.dtype == b.dtype:
        return a, b
    if a.dtype == INDEX or isinstance(a, Const):
        return _retyped(a, b.dtype), b
    return a, _retyped(b, a.dtype)
