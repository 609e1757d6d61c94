"""LSTM, GRU and RNN over their (static) time steps, per direction:

- one input projection, X [T*B, I] x W^T [I, G*H] for all steps at once: a MatMul kernel the
  tuner tunes like any other;
- one `nestor.Recurrence` node (frontend/ops/rnn.py): a kernel whose loop over the steps holds
  the recurrent product H_prev x R^T and the gates, the states updated in place.
- Y, Y_h and Y_c are the directions' outputs concatenated (Reshape + Concat).
Constant W and R are transposed here; computed ones get Gather and Transpose nodes. A reverse
direction with sequence_lens reads each sequence from its own end (the kernel's `from_end`) and
its Y is put back in time order by ReverseSequence. The new nodes' tensors are typed here: this
runs after shape inference, on the folded graph.
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
        reverse = direction == "reverse"
        from_end = reverse and bool(self.lens)
        attrs = dict(self.cell_attrs, kind=self.op, reverse=int(reverse), from_end=int(from_end),
                     activations=[a[0] for a in acts], activation_alpha=[a[1] for a in acts],
                     activation_beta=[a[2] for a in acts])
        inputs = [xw, self._transposed(self.inputs[2], d), self._state(self.inputs[5], d),
                  self._state(self.inputs[6], d) if self.op == "LSTM" else "",
                  self._row(self.inputs[3], d), self._row(self.inputs[7], d), self.lens]
        while not inputs[-1]:
            inputs.pop()
        states = [self._name(s) for s in (("h", "c") if self.op == "LSTM" else ("h",))]
        for name in states:
            self.types[name] = TensorType((B, hid), self.dtype)
        y_shape = (B, self.steps, hid) if self.layout else (self.steps, B, hid)
        y = self._name("y") if want_y else None
        if y:
            self.types[y] = TensorType(y_shape, self.dtype)
        self.nodes.append(helper.make_node("Recurrence", inputs, states + ([y] if y else []),
                                           name=self._name("Recurrence"), domain=NESTOR_DOMAIN, **attrs))
        h, c = states[0], (states[1] if self.op == "LSTM" else "")
        if not want_y:
            return None, h, c
        time_axis = 1 if self.layout else 0
        if from_end:
            y = self._add("ReverseSequence", [y, self.lens], y_shape, time_axis=time_axis, batch_axis=1 - time_axis)
        shape = (B, self.steps, 1, hid) if self.layout else (self.steps, 1, B, hid)
        return self._reshape(y, shape), h, c

    # -- weights and states -------------------------------------------------------------------

    def _transposed(self, name: str, d: int) -> str:
        """W[d] (or R[d]) transposed to [in, out]: a matrix a MatMul multiplies by."""
        if name in self.consts:
            return self._const("wt", np.ascontiguousarray(np.asarray(self.consts[name])[d].T))
        shape = self.types[name].shape[1:]
        w = self._add("Gather", [name, self._const("dir", np.array(d, np.int64))], shape, axis=0)
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
