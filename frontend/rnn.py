"""LSTM, GRU and RNN unrolled over their (static) time steps, so that their matrix products are
the MatMul kernels Nestor tunes like any other:

- one input projection per direction, X [T*B, I] x W^T [I, G*H], for all steps at once;
- per step, the recurrent product H_prev [B, H] x R^T [H, G*H] (the same kernel at every step,
  one tuning task) and a `nestor.RecurrentCell` (frontend/ops/rnn.py) computing the gates and
  the new state (H, and C for LSTM) from both products, the biases and the peepholes. A GRU
  without linear_before_reset needs r before its candidate's product: its step is the z, r
  product, a `GRUReset` cell (r * H_prev), the candidate's product (r * H_prev) x Rh^T, the cell.
- Y, Y_h and Y_c are the steps' states concatenated (Reshape + Concat).
Constant W and R are transposed here; computed ones get Gather and Transpose nodes. A reverse
direction with sequence_lens reads each sequence from its own end (the cell's `from_end`) and its
Y is put back in time order by ReverseSequence. The new nodes' tensors are typed here: this runs
after shape inference, on the folded graph.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..ir import TensorType, canonical
from ..ir.errors import ModelError
from .ops import NESTOR_DOMAIN, UnsupportedOpError
from .ops.rnn import ACTIVATIONS, GATES

DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
# (alpha, beta) defaults of the activations that take them, as ONNX Runtime reads them: each
# takes the next value of activation_alpha (activation_beta) where that list goes on.
PARAMETERS = {"Affine": (1.0, 0.0), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
              "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, None)}


def expand_recurrences(nodes: list[onnx.NodeProto], consts: dict, types: dict[str, TensorType],
                       outputs: list[str]) -> list[onnx.NodeProto]:
    """`nodes` with every LSTM, GRU and RNN node replaced by its unrolled steps; new constants
    go to `consts`, every new tensor's type to `types`."""
    read = {i for n in nodes for i in n.input if i} | set(outputs)
    out = []
    for node in nodes:
        if node.op_type in DEFAULT_ACTIVATIONS and node.domain in ("", "ai.onnx"):
            out.extend(_Unrolled(node, consts, types, read).nodes)
        else:
            out.append(node)
    return out


class _Unrolled:
    """The nodes that compute one recurrent node, built in __init__."""

    def __init__(self, node, consts, types, read):
        self.node, self.consts, self.types, self.nodes, self.n = node, consts, types, [], 0
        self.op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.inputs = list(node.input) + [""] * (8 - len(node.input))
        for name in self.inputs[:3]:  # X, W, R
            if name not in types:
                raise ModelError(f"{self.op} node '{node.name}': the shape of '{name}' could not "
                                 f"be inferred statically")
        x = types[self.inputs[0]]
        self.dtype = x.dtype
        self.layout = attrs.get("layout", 0)
        self.steps, self.batch = x.shape[:2] if self.layout == 0 else x.shape[1::-1]
        self.gates = GATES[self.op]
        self.hidden = types[self.inputs[2]].shape[-1]
        direction = _text(attrs.get("direction", b"forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise UnsupportedOpError(f"{self.op} node '{node.name}': direction '{direction}'")
        self.directions = ["forward", "reverse"] if direction == "bidirectional" else [direction]
        self.lens = self._lengths()
        acts = self._activations(attrs, len(self.directions))
        self.cell_attrs = dict(hidden_size=self.hidden, batch=self.batch, steps=self.steps,
                               layout=self.layout, clip=float(attrs.get("clip", 0.0)),
                               input_forget=attrs.get("input_forget", 0),
                               linear_before_reset=attrs.get("linear_before_reset", 0))
        outs = list(node.output) + [""] * (3 - len(node.output))
        wanted = [o if o and o in read else "" for o in outs]
        self.x2d = self._add("Reshape", [self.inputs[0], self._const("x2d", np.array(
            [self.steps * self.batch, x.shape[2]], np.int64))], (self.steps * self.batch, x.shape[2]))
        runs = [self._direction(d, name, acts[d], bool(wanted[0])) for d, name in enumerate(self.directions)]
        if wanted[0]:
            self._concat([r[0] for r in runs], 2 if self.layout else 1, wanted[0])
        for k, name in ((1, wanted[1]), (2, wanted[2])):
            if name:
                finals = [self._reshape(r[k], self._state_shape(1)) for r in runs]
                self._concat(finals, 1 if self.layout else 0, name)

    # -- one direction ------------------------------------------------------------------------

    def _direction(self, d: int, direction: str, acts, want_y: bool):
        """(Y of this direction [T, 1, B, H] (or [B, T, 1, H]), final H, final C)."""
        gh, hid, B = self.gates * self.hidden, self.hidden, self.batch
        xw = self._add("MatMul", [self.x2d, self._transposed(self.inputs[1], d)], (self.steps * B, gh))
        reset = self.op == "GRU" and not self.cell_attrs["linear_before_reset"]
        r_t = self._transposed(self.inputs[2], d, (0, 2 * hid) if reset else None)
        rh_t = self._transposed(self.inputs[2], d, (2 * hid, 3 * hid)) if reset else None
        h = self._state(self.inputs[5], d)
        c = self._state(self.inputs[6], d) if self.op == "LSTM" else ""
        reverse = direction == "reverse"
        from_end = reverse and bool(self.lens)
        bias, peepholes = self._row(self.inputs[3], d), self._row(self.inputs[7], d)
        attrs = dict(self.cell_attrs, from_end=int(from_end), activations=[a[0] for a in acts],
                     activation_alpha=[a[1] for a in acts], activation_beta=[a[2] for a in acts])
        ys = []
        for k in range(self.steps):
            step = self._const(f"step{k}", np.array([self.steps - 1 - k if reverse and not from_end else k],
                                                    np.int64))
            hr = self._add("MatMul", [h, r_t], (B, 2 * hid if reset else gh)) if h else ""
            rhr = ""
            if reset and h:
                rh = self._cell("GRUReset", [xw, hr, "", h, "", bias, "", self.lens, step], attrs, 1)[0]
                rhr = self._add("MatMul", [rh, rh_t], (B, hid))
            n_out = (2 if self.op == "LSTM" else 1) + (1 if self.lens and want_y else 0)
            outs = self._cell(self.op, [xw, hr, rhr, h, c, bias, peepholes, self.lens, step],
                              attrs, n_out)
            h, c = outs[0], (outs[1] if self.op == "LSTM" else "")
            ys.append(outs[-1] if self.lens and want_y else h)
        if not want_y:
            return None, h, c
        if reverse and not from_end:
            ys.reverse()
        time_axis = 1 if self.layout else 0
        seq_shape = (B, 1, hid) if self.layout else (1, B, hid)
        y = self._concat([self._reshape(v, seq_shape) for v in ys], time_axis)
        if from_end:
            y = self._add("ReverseSequence", [y, self.lens], self.types[y].shape,
                          time_axis=time_axis, batch_axis=1 - time_axis)
        shape = (B, self.steps, 1, hid) if self.layout else (self.steps, 1, B, hid)
        return self._reshape(y, shape), h, c

    def _cell(self, kind, inputs, attrs, n_out) -> list[str]:
        names = [self._name(f"{kind.lower()}_out{i}") for i in range(n_out)]
        for name in names:
            self.types[name] = TensorType((self.batch, self.hidden), self.dtype)
        while inputs and not inputs[-1]:
            inputs = inputs[:-1]
        self.nodes.append(helper.make_node("RecurrentCell", inputs, names, name=names[0], domain=NESTOR_DOMAIN,
                                           **dict(attrs, kind=kind)))
        return names

    # -- weights and states -------------------------------------------------------------------

    def _transposed(self, name: str, d: int, rows: tuple[int, int] | None = None) -> str:
        """W[d] (rows `rows`) transposed to [in, out]: a matrix a MatMul multiplies by."""
        if name in self.consts:
            w = np.asarray(self.consts[name])[d]
            w = w[slice(*rows)] if rows else w
            return self._const("wt", np.ascontiguousarray(w.T))
        shape = self.types[name].shape[1:]
        w = self._add("Gather", [name, self._const("dir", np.array(d, np.int64))], shape, axis=0)
        if rows:
            shape = (rows[1] - rows[0], shape[1])
            w = self._add("Gather", [w, self._const("rows", np.arange(*rows, dtype=np.int64))], shape, axis=0)
        return self._add("Transpose", [w], shape[::-1], perm=[1, 0])

    def _row(self, name: str, d: int) -> str:
        """Direction d of B or P (a cell of either direction is then the same kernel)."""
        if not name:
            return ""
        if name in self.consts:
            return self._const("row", np.ascontiguousarray(self.consts[name][d]))
        return self._add("Gather", [name, self._const("dir", np.array(d, np.int64))],
                         self.types[name].shape[1:], axis=0)

    def _state(self, name: str, d: int) -> str:
        """Direction d of an initial state, [B, H]; '' where it is zero (not given, or zeros)."""
        if not name or (name in self.consts and not np.any(self.consts[name])):
            return ""
        axis = 1 if self.layout else 0
        if name in self.consts:
            return self._const("state", np.ascontiguousarray(np.take(self.consts[name], d, axis=axis)))
        return self._add("Gather", [name, self._const("dir", np.array(d, np.int64))],
                         (self.batch, self.hidden), axis=axis)

    def _lengths(self) -> str:
        """sequence_lens, or '' where absent or a constant equal to the steps everywhere."""
        name = self.inputs[4]
        if name in self.consts and np.all(np.asarray(self.consts[name]) == self.steps):
            return ""
        return name

    def _activations(self, attrs, directions: int):
        """Per direction, the (name, alpha, beta) of each of the op's activations."""
        names = [_text(a) for a in attrs.get("activations", DEFAULT_ACTIVATIONS[self.op] * directions)]
        per = len(DEFAULT_ACTIVATIONS[self.op])
        if len(names) != per * directions:
            raise UnsupportedOpError(f"{self.op} node '{self.node.name}': {len(names)} activations for "
                                     f"{directions} direction(s), expected {per * directions}")
        alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
        out = []
        for name in names:
            known = {a.lower(): a for a in ACTIVATIONS}.get(name.lower())
            if known is None:
                raise UnsupportedOpError(f"{self.op} node '{self.node.name}': activation '{name}'")
            alpha, beta = PARAMETERS.get(known, (None, None))
            alpha = alphas.pop(0) if alpha is not None and alphas else alpha
            beta = betas.pop(0) if beta is not None and betas else beta
            out.append((known, float(alpha or 0.0), float(beta or 0.0)))
        return [out[d * per:(d + 1) * per] for d in range(directions)]

    # -- node building ------------------------------------------------------------------------

    def _state_shape(self, directions: int):
        return (self.batch, directions, self.hidden) if self.layout else (directions, self.batch, self.hidden)

    def _concat(self, parts: list[str], axis: int, output: str | None = None) -> str:
        shape = list(self.types[parts[0]].shape)
        shape[axis] = sum(self.types[p].shape[axis] for p in parts)
        if len(parts) == 1:
            return self._add("Identity", parts, tuple(shape), output=output) if output else parts[0]
        return self._add("Concat", parts, tuple(shape), output=output, axis=axis)

    def _reshape(self, name: str, shape) -> str:
        return self._add("Reshape", [name, self._const("shape", np.array(shape, np.int64))], tuple(shape))

    def _add(self, op: str, inputs: list[str], shape, output: str | None = None, **attrs) -> str:
        output = output or self._name(op.lower())
        self.types[output] = TensorType(tuple(shape), self.dtype)
        self.nodes.append(helper.make_node(op, inputs, [output], name=self._name(op), **attrs))
        return output

    def _const(self, base: str, value: np.ndarray) -> str:
        name = self._name(base)
        self.consts[name] = value
        self.types[name] = TensorType(tuple(value.shape), canonical(value.dtype))
        return name

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{self.node.name}__{base}{self.n}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
