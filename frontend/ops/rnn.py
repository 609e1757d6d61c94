"""The time steps of LSTM, GRU and RNN: frontend/rnn.py unrolls each node into one input-projection
MatMul over all steps, then per step a recurrent MatMul (H_prev x R^T, the kernel the tuner
tunes) and one `nestor.RecurrentCell` node, lowered here: the gates' activations and the new
state, one loop nest over (batch, hidden).

A cell's inputs, by position ('' where absent):
  0 XW [T*B, G*H]  the input projection of every step (rows t*B + b; b*T + t for layout 1)
  1 HR [B, G*H]    H_prev x R^T (absent while the state is zero); a GRU without
                   linear_before_reset gets only its z and r columns here and
  2 RHR [B, H]     (r * H_prev) x Rh^T in this slot (its `GRUReset` cell computes r * H_prev)
  3 H_prev, 4 C_prev [B, H]; 5 B [2*G*H]; 6 P [3*H] (LSTM peepholes, i o f), the direction's;
  7 sequence_lens [B]; 8 step [1] (int64; the time step read, a tensor so that every step's cell
                   is one and the same kernel)
Outputs: H, then C (LSTM), then with sequence_lens the output Y of the step (zero past a
sequence's end, where H and C keep their last value).
"""
from __future__ import annotations

from types import SimpleNamespace

from ...ir import Expr, Kernel, as_expr, call, cast, loop_nest, lt, maximum, minimum, select, seq, store
from .common import input_buffer, output_buffer
from .elementwise import UNARY
from .registry import NESTOR_DOMAIN, OpContext, Lowered, register_op

XW, HR, RHR, H_PREV, C_PREV, BIAS, PEEP, LENS, STEP = range(9)
GATES = {"LSTM": 4, "GRU": 3, "GRUReset": 3, "RNN": 1}
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


@register_op(f"{NESTOR_DOMAIN}.RecurrentCell")
def lower_cell(ctx: OpContext) -> Lowered:
    kind = ctx.attr("kind")
    args = [i for i in range(len(ctx.inputs)) if ctx.has_input(i)]
    buf = {i: input_buffer(ctx, i, name) for i, name in
           zip(range(9), ("XW", "HR", "RHR", "Hprev", "Cprev", "B", "P", "Lens", "Step")) if i in args}
    # the outputs read (the importer blanks the others: the last step's C when Y_c is not wanted)
    slots = [i for i, name in enumerate(ctx.node.output) if name]
    outs = tuple(output_buffer(ctx, k, ("H", "C" if kind == "LSTM" else "Y", "Y")[i]) for k, i in enumerate(slots))
    hidden, gates = ctx.attr("hidden_size"), GATES[kind]
    batch, steps, layout = ctx.attr("batch"), ctx.attr("steps"), ctx.attr("layout", 0)
    dtype = buf[XW].dtype
    acts = [activation(n.decode(), *p) for n, *p in zip(ctx.attr("activations"), ctx.attr("activation_alpha"),
                                        ctx.attr("activation_beta"))]
    clip = ctx.attr("clip", 0.0)

    def clipped(x: Expr) -> Expr:
        return minimum(maximum(x, as_expr(-clip, dtype)), as_expr(clip, dtype)) if clip else x

    def body(b, h):
        k = cast("int32", buf[STEP][0])
        valid, t = None, k
        if LENS in buf:
            length = cast("int32", buf[LENS][b])
            valid = lt(k, length)
            if ctx.attr("from_end", 0):  # reverse: step k reads time length - 1 - k
                t = maximum(length - 1 - k, 0)
        row = t * batch + b if layout == 0 else b * steps + t
        zero = as_expr(0.0, dtype)

        def opt(i, *index):
            return buf[i][index] if i in buf else zero

        def pre(g, recurrent=True):
            """Gate g's input: x W^T + H_prev R^T + Wb + Rb."""
            v = buf[XW][row, g * hidden + h]
            if recurrent and HR in buf:  # (g = 0 reads HR at plain (b, h): an RNN cell fuses into its MatMul)
                v = v + buf[HR][b, g * hidden + h if g else h]
            if BIAS in buf:
                v = v + buf[BIAS][g * hidden + h] + (buf[BIAS][(gates + g) * hidden + h] if recurrent else zero)
            return v

        h_prev, c_prev = opt(H_PREV, b, h), opt(C_PREV, b, h)
        f = acts[0]
        if kind == "RNN":
            new = [acts[0](clipped(pre(0)))]
        elif kind in ("GRU", "GRUReset"):
            z, r = f(clipped(pre(0))), f(clipped(pre(1)))
            if kind == "GRUReset":
                return store(outs[0], (b, h), r * h_prev)
            if ctx.attr("linear_before_reset", 0):
                rec = opt(HR, b, 2 * hidden + h) + opt(BIAS, 5 * hidden + h)
                cand = acts[1](clipped(pre(2, recurrent=False) + r * rec))
            else:
                cand = acts[1](clipped(pre(2, recurrent=False) + opt(RHR, b, h) + opt(BIAS, 5 * hidden + h)))
            new = [(1 - z) * cand + z * h_prev]
        else:  # LSTM, gates i o f c
            i = f(clipped(pre(0) + opt(PEEP, h) * c_prev))
            forget = 1 - i if ctx.attr("input_forget", 0) else f(clipped(pre(2) + opt(PEEP, 2 * hidden + h) * c_prev))
            c = forget * c_prev + i * acts[1](clipped(pre(3)))
            o = f(clipped(pre(1) + opt(PEEP, hidden + h) * c))
            new = [o * acts[2](c), c]
        kept = [h_prev, c_prev]
        values = [v if valid is None else select(valid, v, old) for v, old in zip(new, kept)]
        if valid is not None:  # Y: zero past the sequence's end
            values.append(select(valid, new[0], zero))
        return seq(*(store(o, (b, h), values[i]) for o, i in zip(outs, slots)))

    kernel = Kernel(f"{kind.lower()}_cell", tuple(buf[i] for i in args), outs,
                    loop_nest((batch, hidden), body))
    return Lowered(kernel, args)
