"""LSTM, GRU and RNN over their (static) time steps, as two kernels:

- one input projection of every direction, X [T*B, I] x W^T [D, I, G*H] for all steps at once:
  a MatMul kernel the tuner tunes like any other;
- one `nestor.Recurrence` node (frontend/ops/rnn.py): a kernel whose loop over the directions
  (independent: a thread each) holds a loop over the steps, with the recurrent product
  H_prev x R^T and the gates; it writes Y, Y_h and Y_c as ONNX lays them out.
Constant W and R are transposed here; computed ones get a Transpose node. The new nodes'
tensors are typed here: this runs after shape inference, on the folded graph.
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
    """`nodes` with every LSTM, GRU and RNN node replaced by its projection and recurrence; new
    constants go to `consts`, every new tensor's type to `types`."""
    read = {i for n in nodes for i in n.input if i} | set(outputs)
    out = []
    for node in nodes:
        if node.op_type in DEFAULT_ACTIVATIONS and node.domain in ("", "ai.onnx"):
            out.extend(_Split(node, consts, types, read).nodes)
        else:
            out.append(node)
    return out


class _Split:
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
        directions = 2 if direction == "bidirectional" else 1
        self.lens = self._lengths()
        acts = [a for per_direction in self._activations(attrs, directions) for a in per_direction]
        outs = list(node.output) + [""] * (3 - len(node.output))
        y, y_h, y_c = (o if o and o in read else "" for o in outs)
        rows, gh = self.steps * self.batch, self.gates * self.hidden
        x2d = self._add("Reshape", [self.inputs[0], self._const("x2d", np.array([rows, x.shape[2]], np.int64))],
                        (rows, x.shape[2]))
        xw = self._add("MatMul", [x2d, self._transposed(self.inputs[1])], (directions, rows, gh))
        inputs = [xw, self._transposed(self.inputs[2]), self._state(self.inputs[5]),
                  self._state(self.inputs[6]) if self.op == "LSTM" else "", self.inputs[3],
                  self.inputs[7] if self.op == "LSTM" else "", self.lens]
        while not inputs[-1]:
            inputs.pop()
        outputs = [y_h, y_c, y] if self.op == "LSTM" else [y_h, y]
        while outputs and not outputs[-1]:
            outputs.pop()
        self.nodes.append(helper.make_node(
            "Recurrence", inputs, outputs, name=self._name("Recurrence"), domain=NESTOR_DOMAIN, kind=self.op,
            direction=direction, hidden_size=self.hidden, batch=self.batch, steps=self.steps,
            layout=self.layout, clip=float(attrs.get("clip", 0.0)), input_forget=attrs.get("input_forget", 0),
            linear_before_reset=attrs.get("linear_before_reset", 0), activations=[a[0] for a in acts],
            activation_alpha=[a[1] for a in acts], activation_beta=[a[2] for a in acts]))

    # -- weights and states -------------------------------------------------------------------

    def _transposed(self, name: str) -> str:
        """W (or R) [D, out, in] transposed to [D, in, out]: the matrices a MatMul multiplies by."""
        if name in self.consts:
            return self._const("wt", np.ascontiguousarray(np.asarray(self.consts[name]).transpose(0, 2, 1)))
        d, rows, cols = self.types[name].shape
        return self._add("Transpose", [name], (d, cols, rows), perm=[0, 2, 1])

    def _state(self, name: str) -> str:
        """An initial state; '' where it is zero (not given, or zeros)."""
        if not name or (name in self.consts and not np.any(self.consts[name])):
            return ""
        return name

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
