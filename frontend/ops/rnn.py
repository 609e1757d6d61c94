"""The recurrences of LSTM, GRU and RNN: frontend/rnn.py turns each node into one input
projection MatMul over all steps and directions (X [T*B, I] x W^T [D, I, G*H], the kernel the
tuner tunes) and one `nestor.Recurrence` node, lowered here into one kernel: a loop over the
directions (independent, so the default schedule gives each a thread) around a loop over the
time steps. A step is small (B x H outputs): one kernel, not a recurrent MatMul and a cell per
step, keeps a model's run from being kernel calls.

Each step t of direction d:
  G[d, b, j] = sum_k H[d, b, k] * RT[d, k, j]     the recurrent product (a GRU without
                                                  linear_before_reset: its z and r columns, then
                                                  RH = r * H and G[d, :, 2H:] = RH x Rh^T)
  the gates' activations and the new state, in place in the H (and C) outputs, and Y's step.

A node's inputs, by position ('' where absent):
  0 XW [D, T*B, G*H]  the input projection of every step (rows t*B + b; b*T + t for layout 1)
  1 RT [D, H, G*H]    R^T
  2 initial_h, 3 initial_c (zero where absent), 4 B, 5 P, 6 sequence_lens: as ONNX gives them
Outputs ('' where not read): Y_h, Y_c (LSTM), Y, laid out as ONNX says. A reverse direction
with sequence_lens reads each sequence from its own end; past a sequence's end H and C keep
their last value and Y is zero.
"""
from __future__ import annotations

from types import SimpleNamespace

from ...ir import (Expr, For, Kernel, Var, as_expr, call, cast, eq, loop_nest, lt, maximum, minimum, select, seq,
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
    raise ctx.unsupported("reached the lowering whole (its input shapes must be static: the importer "
                          "splits it into a projection and a recurrence)")


@register_op(f"{NESTOR_DOMAIN}.Recurrence")
def lower_recurrence(ctx: OpContext) -> Lowered:
    kind, direction = ctx.attr("kind"), ctx.attr("direction")
    args = [i for i in range(len(ctx.inputs)) if ctx.has_input(i)]
    buf = {i: input_buffer(ctx, i, name) for i, name in
           zip(range(7), ("XW", "RT", "H0", "C0", "B", "P", "Lens")) if i in args}
    directions, _, gh = buf[XW].shape
    hidden, gates = ctx.attr("hidden_size"), GATES[kind]
    batch, steps, layout = ctx.attr("batch"), ctx.attr("steps"), ctx.attr("layout", 0)
    dtype = buf[XW].dtype
    state_shape = (batch, directions, hidden) if layout else (directions, batch, hidden)
    # the outputs read (the graph blanks the others: a state that is not read is a local)
    names = ("H", "C", "Y") if kind == "LSTM" else ("H", "Y")
    slots = [names[i] for i, name in enumerate(ctx.node.output) if name]
    outs = tuple(output_buffer(ctx, k, name) for k, name in enumerate(slots))
    found = dict(zip(slots, outs))
    locals_ = [temp(n, state_shape, dtype) for n in ("H", "C")[:2 if kind == "LSTM" else 1] if n not in found]
    found.update((b.name, b) for b in locals_)
    h_out, c_out, y_out = found["H"], found.get("C"), found.get("Y")
    specs = list(zip((n.decode() for n in ctx.attr("activations")), ctx.attr("activation_alpha"),
                     ctx.attr("activation_beta")))
    per, acts = len(specs) // directions, [activation(*spec) for spec in specs]
    clip, zero = ctx.attr("clip", 0.0), as_expr(0.0, dtype)
    reset = kind == "GRU" and not ctx.attr("linear_before_reset", 0)
    g = temp("G", (directions, batch, gates * hidden), dtype)
    rh = temp("RH", (directions, batch, hidden), dtype)
    d, t = Var("d"), Var("t")

    def state(b, h):
        return (b, d, h) if layout else (d, b, h)

    def by_direction(forward, reverse):
        """The value of a forward and of a reverse direction, for direction d."""
        if direction != "bidirectional":
            return reverse if direction == "reverse" else forward
        return select(eq(d, 0), forward, reverse)

    def act(k, x: Expr) -> Expr:
        """Activation k of direction d (both computed only where the directions' differ)."""
        if directions == 1 or specs[k] == specs[per + k]:
            return acts[k](x)
        return select(eq(d, 0), acts[k](x), acts[per + k](x))

    def clipped(x: Expr) -> Expr:
        return minimum(maximum(x, as_expr(-clip, dtype)), as_expr(clip, dtype)) if clip else x

    def product(source, first: int, width: int):
        """G[d, :, first:first + width] = source x RT[d, :, first:first + width], the reduction
        outside the columns (so the default schedule vectorizes the columns)."""
        pb, pk, pj = Var("pb"), Var("pk"), Var("pj")
        init = loop_nest((batch, width), lambda b, j: store(g, (d, b, first + j), zero), names=("pb", "pj"))
        acc = For("pb", batch, For("pk", hidden, For("pj", width, store(
            g, (d, pb, first + pj), source(pb, pk) * buf[RT][d, pk, first + pj], reduce="add")), axis="reduce"))
        return seq(init, acc)

    def initial(out, i):
        return loop_nest((batch, hidden), lambda b, h: store(out, state(b, h), buf[i][state(b, h)] if i in buf else zero),
                         names=("sb", "sh"))

    def cell(b, h, only_reset=False):
        valid, time, y_time = None, by_direction(t, steps - 1 - t), None
        if LENS in buf:
            length = cast("int32", buf[LENS][b])
            valid = lt(t, length)
            # a reverse direction reads each sequence from its own end, and writes Y's rows past
            # the end (zeros) at the steps past it
            time = by_direction(t, maximum(length - 1 - t, 0))
            y_time = by_direction(t, select(valid, length - 1 - t, t))
        row = time * batch + b if layout == 0 else b * steps + time

        def opt(i, k):
            return buf[i][d, k] if i in buf else zero

        def pre(k, recurrent=True):
            """Gate k's input: x W^T + H_prev R^T + Wb + Rb."""
            v = buf[XW][d, row, k * hidden + h]
            if recurrent:
                v = v + g[d, b, k * hidden + h]
            if BIAS in buf:
                v = v + buf[BIAS][d, k * hidden + h] + (buf[BIAS][d, (gates + k) * hidden + h] if recurrent else zero)
            return v

        def kept(new, old):
            return new if valid is None else select(valid, new, old)

        h_prev = h_out[state(b, h)]
        stores = []
        if kind == "RNN":
            h_new = act(0, clipped(pre(0)))
        elif kind == "GRU":
            z, r = act(0, clipped(pre(0))), act(0, clipped(pre(1)))
            if only_reset:
                return store(rh, (d, b, h), r * h_prev)
            rec = g[d, b, 2 * hidden + h] + opt(BIAS, 5 * hidden + h)
            cand = act(1, clipped(pre(2, recurrent=False) + (rec if reset else r * rec)))
            h_new = (1 - z) * cand + z * h_prev
        else:  # LSTM, gates i o f c; C is stored first and read back, so it is computed once
            c_prev = c_out[state(b, h)]
            i = act(0, clipped(pre(0) + opt(PEEP, h) * c_prev))
            forget = 1 - i if ctx.attr("input_forget", 0) else act(0, clipped(pre(2) + opt(PEEP, 2 * hidden + h) * c_prev))
            stores.append(store(c_out, state(b, h), kept(forget * c_prev + i * act(1, clipped(pre(3))), c_prev)))
            c = c_out[state(b, h)]
            h_new = act(0, clipped(pre(1) + opt(PEEP, hidden + h) * c)) * act(2, c)
        stores.append(store(h_out, state(b, h), kept(h_new, h_prev)))
        if y_out is not None:  # read back from H; zero past the sequence's end
            y_time = time if y_time is None else y_time
            stores.append(store(y_out, (y_time, d, b, h) if layout == 0 else (b, y_time, d, h),
                                kept(h_out[state(b, h)], zero)))
        return seq(*stores)

    if reset:
        step = seq(product(lambda b, k: h_out[state(b, k)], 0, 2 * hidden),
                   loop_nest((batch, hidden), lambda b, h: cell(b, h, only_reset=True), names=("rb", "rh")),
                   product(lambda b, k: rh[d, b, k], 2 * hidden, hidden))
    else:
        step = product(lambda b, k: h_out[state(b, k)], 0, gates * hidden)
    step = seq(step, loop_nest((batch, hidden), cell, names=("b", "h")))
    body = For("d", directions, seq(initial(h_out, H0), *([initial(c_out, C0)] if c_out is not None else []),
                                    For("t", steps, step)))
    kernel = Kernel(f"{kind.lower()}_recurrence", tuple(buf[i] for i in args), outs,
                    allocate([g] + ([rh] if reset else []) + locals_, body))
    return Lowered(kernel, args)
