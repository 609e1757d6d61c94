"""The recurrences of LSTM, GRU and RNN: frontend/rnn.py turns each direction into one input
projection MatMul over all steps (X [T*B, I] x W^T, the kernel the tuner tunes) and one
`nestor.Recurrence` node, lowered here into one kernel that loops over the time steps. A step
is small (B x H outputs), so one kernel per direction, not a recurrent MatMul and a cell per
step, is what keeps a model's run from being kernel calls.

Each step t of the kernel:
  G[b, j] = sum_k H[b, k] * RT[k, j]            the recurrent product (a GRU without
                                                linear_before_reset: its z and r columns, then
                                                RH = r * H and G[:, 2H:] = RH x Rh^T)
  the gates' activations and the new state, in place in the H (and C) outputs, and Y's step.

A node's inputs, by position ('' where absent):
  0 XW [T*B, G*H]  the input projection of every step (rows t*B + b; b*T + t for layout 1)
  1 RT [H, G*H]    R^T of the direction
  2 H0, 3 C0 [B, H] the initial states (zero where absent); 4 B [2*G*H]; 5 P [3*H] (LSTM
                   peepholes, i o f); 6 sequence_lens [B]
Outputs: H, C (LSTM) the final states [B, H]; then, where Y is read, Y [T, B, H] ([B, T, H] for
layout 1) in step order: time order, except a reverse direction with sequence_lens, which reads
each sequence from its own end (`from_end`); the importer reverses that Y's sequences after.
Past a sequence's end H and C keep their last value and Y is zero.
"""
from __future__ import annotations

from types import SimpleNamespace

from ...ir import (Expr, For, Kernel, Var, as_expr, call, cast, loop_nest, lt, maximum, minimum, select, seq,
                   store)
from .common import input_buffer, output_buffer
from .elementwise import UNARY
from .reduce import allocate, temp
from .registry import NESTOR_DOMAIN, OpContext, Lowered, register_op

XW, RT, H0, C0, BIAS, PEEP, LENS = range(7)
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Activations of the RNN family that UNARY lacks (alpha, beta as ONNX Runtime reads them).
EXTRA = {"Affine": lambda p, x: x * p.attr("alpha") + p.attr("beta"),
         "ScaledTanh": lambda p, x: call("tanh", x * p.attr("beta")) * p.attr("alpha")}
ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "ThresholdedRelu", "HardSigmoid", "Elu",
               "Softsign", "Softplus", *EXTRA)


def activation(name: str, alpha: float, beta: float):
    """The activation `name` (as the RNN ops spell it) as a function of one expression."""
    params = SimpleNamespace(attr=lambda key, default=None: {"alpha": alpha, "beta": beta}.get(key, default))
    fn = EXTRA.get(name) or UNARY[name]
    return lambda x: fn(params, x)


@register_op("LSTM", "GRU", "RNN")
def lower_recurrent(ctx: OpContext):
    raise ctx.unsupported("reached the lowering without being unrolled (its input shapes must be "
                          "static; the importer unrolls it)")


@register_op(f"{NESTOR_DOMAIN}.Recurrence")
def lower_recurrence(ctx: OpContext) -> Lowered:
    kind = ctx.attr("kind")
    args = [i for i in range(len(ctx.inputs)) if ctx.has_input(i)]
    buf = {i: input_buffer(ctx, i, name) for i, name in
           zip(range(7), ("XW", "RT", "H0", "C0", "B", "P", "Lens")) if i in args}
    hidden, gates = ctx.attr("hidden_size"), GATES[kind]
    batch, steps, layout = ctx.attr("batch"), ctx.attr("steps"), ctx.attr("layout", 0)
    dtype = buf[XW].dtype
    # the outputs read (the graph blanks the others: a final C that is not read is a local)
    names = ("H", "C", "Y") if kind == "LSTM" else ("H", "Y")
    slots = [names[i] for i, name in enumerate(ctx.node.output) if name]
    outs = tuple(output_buffer(ctx, k, name) for k, name in enumerate(slots))
    found = dict(zip(slots, outs))
    h_out, y_out = found["H"], found.get("Y")
    c_out = found.get("C") or (temp("C", (batch, hidden), dtype) if kind == "LSTM" else None)
    acts = [activation(n.decode(), *p) for n, *p in zip(ctx.attr("activations"), ctx.attr("activation_alpha"),
                                                        ctx.attr("activation_beta"))]
    clip, zero = ctx.attr("clip", 0.0), as_expr(0.0, dtype)
    reset = kind == "GRU" and not ctx.attr("linear_before_reset", 0)
    g = temp("G", (batch, gates * hidden), dtype)
    rh = temp("RH", (batch, hidden), dtype)
    t = Var("t")

    def clipped(x: Expr) -> Expr:
        return minimum(maximum(x, as_expr(-clip, dtype)), as_expr(clip, dtype)) if clip else x

    def product(source, first: int, width: int):
        """G[:, first:first + width] = source x RT[:, first:first + width], the reduction outside
        the columns (so the default schedule vectorizes the columns)."""
        init = loop_nest((batch, width), lambda b, j: store(g, (b, first + j), zero), names=("pb", "pj"))
        acc = For("pb", batch, For("pk", hidden, For("pj", width, store(
            g, (Var("pb"), first + Var("pj")), source[Var("pb"), Var("pk")] * buf[RT][Var("pk"), first + Var("pj")],
            reduce="add")), axis="reduce"))
        return seq(init, acc)

    def initial(out, i):
        return loop_nest((batch, hidden), lambda b, h: store(out, (b, h), buf[i][b, h] if i in buf else zero),
                         names=("sb", "sh"))

    def cell(b, h, only_reset=False):
        valid, time = None, t
        if LENS in buf:
            length = cast("int32", buf[LENS][b])
            valid = lt(t, length)
            if ctx.attr("from_end", 0):  # reverse: step t reads time length - 1 - t
                time = maximum(length - 1 - t, 0)
        elif ctx.attr("reverse", 0):
            time = steps - 1 - t
        row = time * batch + b if layout == 0 else b * steps + time

        def opt(i, *index):
            return buf[i][index] if i in buf else zero

        def pre(k, recurrent=True):
            """Gate k's input: x W^T + H_prev R^T + Wb + Rb."""
            v = buf[XW][row, k * hidden + h]
            if recurrent:
                v = v + g[b, k * hidden + h]
            if BIAS in buf:
                v = v + buf[BIAS][k * hidden + h] + (buf[BIAS][(gates + k) * hidden + h] if recurrent else zero)
            return v

        def kept(new, old):
            return new if valid is None else select(valid, new, old)

        h_prev = h_out[b, h]
        f = acts[0]
        stores = []
        if kind == "RNN":
            h_new = acts[0](clipped(pre(0)))
        elif kind == "GRU":
            z, r = f(clipped(pre(0))), f(clipped(pre(1)))
            if only_reset:
                return store(rh, (b, h), r * h_prev)
            rec = g[b, 2 * hidden + h] + opt(BIAS, 5 * hidden + h)
            cand = acts[1](clipped(pre(2, recurrent=False) + (rec if reset else r * rec)))
            h_new = (1 - z) * cand + z * h_prev
        else:  # LSTM, gates i o f c; C is stored first and read back, so it is computed once
            c_prev = c_out[b, h]
            i = f(clipped(pre(0) + opt(PEEP, h) * c_prev))
            forget = 1 - i if ctx.attr("input_forget", 0) else f(clipped(pre(2) + opt(PEEP, 2 * hidden + h) * c_prev))
            stores.append(store(c_out, (b, h), kept(forget * c_prev + i * acts[1](clipped(pre(3))), c_prev)))
            c = c_out[b, h]
            h_new = f(clipped(pre(1) + opt(PEEP, hidden + h) * c)) * acts[2](c)
        stores.append(store(h_out, (b, h), kept(h_new, h_prev)))
        if y_out is not None:  # read back from H; zero past the sequence's end
            y_time = time if valid is None else t  # (from_end: step order)
            stores.append(store(y_out, (y_time, b, h) if layout == 0 else (b, y_time, h),
                                kept(h_out[b, h], zero)))
        return seq(*stores)

    if reset:
        step = seq(product(h_out, 0, 2 * hidden),
                   loop_nest((batch, hidden), lambda b, h: cell(b, h, only_reset=True), names=("rb", "rh")),
                   product(rh, 2 * hidden, hidden))
    else:
        step = product(h_out, 0, gates * hidden)
    step = seq(step, loop_nest((batch, hidden), cell, names=("b", "h")))
    body = seq(initial(h_out, H0), *([initial(c_out, C0)] if c_out is not None else []), For("t", steps, step))
    kernel = Kernel(f"{kind.lower()}_recurrence", tuple(buf[i] for i in args), outs,
                    allocate([g] + ([rh] if reset else []) + ([c_out] if kind == "LSTM" and c_out not in outs else []), body))
    return Lowered(kernel, args)
