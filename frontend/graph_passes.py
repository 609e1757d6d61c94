"""ONNX-level rewrites for inference, run on the folded nodes before they are lowered.

- Identity and inference-mode Dropout are dropped: their readers read the input instead. They
  cost nothing at run time (they lower to aliases), but an alias between two kernels hides the
  pair from kernel fusion.
- Per-channel affine chains are folded. A BatchNormalization with constant statistics, or a
  Mul / Add / Sub / Div by a constant that varies along one axis at most, computes x * s + t.
  A chain of them, each the only reader of the previous one, collapses into one (s, t) that
  - goes into the weights and bias of a Conv heading the chain (W' = W * s per output channel,
    b' = b * s + t): Conv + BatchNormalization (+ Mul + Add) becomes one Conv;
  - otherwise becomes one Mul and one Add: a lone BatchNormalization then costs no sqrt and
    no divide per element.
Everything else constant is already folded by the importer (every node whose inputs are all
constants is evaluated there), so no separate constant-folding pass is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..ir import TensorType, canonical, is_float

ALIASES = ("Identity", "Dropout")
SCALES = ("Mul", "Div")
SHIFTS = ("Add", "Sub")


@dataclass(frozen=True)
class Affine:
    """x * scale + shift, with scale and shift (1-D, float64) varying along data axis `axis`
    (None: scalars, they broadcast everywhere)."""
    axis: int | None
    scale: np.ndarray
    shift: np.ndarray

    def then(self, other: Affine) -> Affine | None:
        """This map followed by `other`, or None if they vary along different axes."""
        if None not in (self.axis, other.axis) and self.axis != other.axis:
            return None
        axis = other.axis if self.axis is None else self.axis
        return Affine(axis, self.scale * other.scale, self.shift * other.scale + other.shift)


def optimize_nodes(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                   types: dict[str, TensorType], outputs: list[str]) -> list[onnx.NodeProto]:
    """The rewritten node list; new constants are added to `consts` and `types`."""
    nodes = _drop_aliases(nodes, outputs)
    return _fold_affine_chains(nodes, consts, types, outputs)


def batchnorm_affine(scale, bias, mean, var, epsilon: float) -> Affine:
    """BatchNormalization (inference) as x * s + t along axis 1."""
    s = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + np.float64(epsilon))
    return Affine(1, s, np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * s)


def fold_into_conv(weight: np.ndarray, bias: np.ndarray | None, affine: Affine):
    """(W', b') of the Conv that computes affine(conv(x; W, b)): output channels are axis 1."""
    m = weight.shape[0]
    s = np.broadcast_to(affine.scale, (m,))
    t = np.broadcast_to(affine.shift, (m,))
    b = np.zeros(m) if bias is None else np.asarray(bias, np.float64)
    w = np.asarray(weight, np.float64) * s.reshape((m,) + (1,) * (weight.ndim - 1))
    return w.astype(weight.dtype), (b * s + t).astype(weight.dtype)


# -- aliases ----------------------------------------------------------------------------------

def _drop_aliases(nodes, outputs):
    read = _readers(nodes, outputs)
    rename: dict[str, str] = {}
    kept = []
    for node in nodes:
        out = node.output[0] if node.output else ""
        if node.op_type in ALIASES and out not in outputs and _is_inference_alias(node, read):
            rename[out] = node.input[0]
        else:
            kept.append(node)
    return _renamed(kept, rename)


def _is_inference_alias(node, read) -> bool:
    """Dropout is an alias when its mask is unread and it is not in training mode (a constant
    training_mode; the lowering rejects a true one, so leave that node to it)."""
    if node.op_type == "Identity":
        return True
    mask_read = len(node.output) > 1 and node.output[1] and node.output[1] in read
    return not mask_read and (len(node.input) < 3 or not node.input[2])


# -- affine chains ----------------------------------------------------------------------------

def _fold_affine_chains(nodes, consts, types, outputs):
    read = _readers(nodes, outputs)
    producer_of = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    names = set(consts) | set(types) | set(producer_of)
    done: set[int] = set()
    replaced: dict[int, list[onnx.NodeProto]] = {}
    rename: dict[str, str] = {}
    for i, head in enumerate(nodes):
        if i in done:
            continue
        conv = _foldable_conv(head, consts)
        data = head.input[0] if conv else _data_input(head, consts)
        first = None if conv or data is None else _affine_of(head, data, consts, types, read)
        if not conv and first is None:
            continue
        chain, total = [i], first
        while True:
            last = nodes[chain[-1]].output[0]
            nxt = _sole_reader(last, read, outputs)
            step = None if nxt is None or nxt in done else _affine_of(nodes[nxt], last, consts, types, read)
            joined = step if total is None else (total.then(step) if step else None)
            if joined is None or (conv and joined.axis not in (None, 1)):
                break
            chain.append(nxt)
            total = joined
        members = [nodes[j] for j in chain]
        if conv and len(chain) > 1:
            new = [_folded_conv(head, members[-1].output[0], total, consts, types, names)]
        elif not conv and _worth_rewriting(members):
            new = _as_mul_add(data, members[-1].output[0], total, consts, types, names, outputs)
            if new is None:  # the chain is the identity: its readers read its input
                rename[members[-1].output[0]] = data
                new = []
        else:
            continue
        done.update(chain)
        replaced[chain[-1]] = new
    out = []
    for i, node in enumerate(nodes):
        if i in replaced:
            out.extend(replaced[i])
        elif i not in done:
            out.append(node)
    return _renamed(out, rename)


def _worth_rewriting(chain) -> bool:
    """A BatchNormalization anywhere, or several ops; a lone Mul, Add, Sub or Div (or Mul then
    Add) is already as cheap as it gets."""
    ops = [n.op_type for n in chain]
    return "BatchNormalization" in ops or (len(ops) > 1 and ops != ["Mul", "Add"])


def _data_input(node, consts) -> str | None:
    """The one input that is not a constant."""
    data = [i for i in node.input if i and i not in consts]
    return data[0] if len(data) == 1 else None


def _foldable_conv(node, consts) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in consts:
        return False
    has_bias = len(node.input) > 2 and node.input[2]
    return (not has_bias or node.input[2] in consts) and is_float(canonical(consts[node.input[1]].dtype))


def _affine_of(node, data: str, consts, types, read) -> Affine | None:
    """The node as x * s + t of its input `data`, when it is one."""
    data_t, out_t = types.get(data), types.get(node.output[0]) if node.output else None
    if data_t is None or out_t is None or data_t.shape != out_t.shape or not is_float(data_t.dtype):
        return None
    op = node.op_type
    if op == "BatchNormalization":
        params = [consts.get(i) for i in node.input[1:5]]
        extra_read = any(o and o in read for o in node.output[1:])
        if (node.input[0] != data or len(params) < 4 or extra_read or _attr(node, "training_mode", 0)
                or len(data_t.shape) < 2
                or any(p is None or p.shape != (data_t.shape[1],) for p in params)):
            return None  # (per-activation statistics of BatchNormalization-7's spatial=0 too)
        return batchnorm_affine(*params, _attr(node, "epsilon", 1e-5))
    if op not in SCALES + SHIFTS or len(node.input) != 2 or node.input[0] == node.input[1]:
        return None
    a, b = node.input
    if a == data and b in consts:
        c = consts[b]
    elif b == data and a in consts and op in ("Mul", "Add"):
        c = consts[a]
    else:
        return None
    per_axis = _along_one_axis(c, data_t.shape)
    if per_axis is None or not is_float(canonical(c.dtype)):
        return None
    axis, v = per_axis
    if op == "Div" and np.any(v == 0):
        return None
    one, zero = np.ones(1), np.zeros(1)
    if op in SCALES:
        return Affine(axis, v if op == "Mul" else 1 / v, zero)
    return Affine(axis, one, v if op == "Add" else -v)


def _along_one_axis(c: np.ndarray, shape) -> tuple[int | None, np.ndarray] | None:
    """(axis, values) when constant c, broadcast against data of `shape`, varies along one axis
    at most (axis None: it is a scalar)."""
    if c.ndim > len(shape):
        return None
    full = (1,) * (len(shape) - c.ndim) + c.shape
    varying = [d for d, n in enumerate(full) if n != 1]
    if len(varying) > 1:
        return None
    return (varying[0] if varying else None), c.astype(np.float64).reshape(-1)


def _folded_conv(conv, output, affine, consts, types, names):
    weight = consts[conv.input[1]]
    bias = consts[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else None
    w, b = fold_into_conv(weight, bias, affine)
    w_name = _new_const(f"{output}_folded_w", w, consts, types, names)
    b_name = _new_const(f"{output}_folded_b", b, consts, types, names)
    new = _copy(conv)
    del new.input[:]
    new.input.extend([conv.input[0], w_name, b_name])
    new.output[0] = output
    return new


def _as_mul_add(data, output, affine, consts, types, names, outputs):
    """Mul and/or Add nodes computing affine(data) into `output`; None if it is the identity
    (and `output` is not a graph output, which must keep being produced)."""
    t = types[data]
    rank = len(t.shape)
    shape = () if affine.axis is None else (-1,) + (1,) * (rank - 1 - affine.axis)
    scale, shift = (np.asarray(v).reshape(shape).astype(t.dtype) for v in (affine.scale, affine.shift))
    ops = [(op, v) for op, v, trivial in (("Mul", scale, np.all(scale == 1)), ("Add", shift, np.all(shift == 0)))
           if not trivial]
    if not ops:
        if output not in outputs:
            return None
        ops = [("Add", shift)]
    nodes, src = [], data
    for k, (op, value) in enumerate(ops):
        dst = output if k == len(ops) - 1 else _fresh(f"{output}_scaled", names)
        types[dst] = t
        const = _new_const(f"{output}_{op.lower()}", value, consts, types, names)
        nodes.append(helper.make_node(op, [src, const], [dst], name=f"{dst}_{op}"))
        src = dst
    return nodes


# -- helpers ----------------------------------------------------------------------------------

def _readers(nodes, outputs) -> dict[str, list[int]]:
    read: dict[str, list[int]] = {o: [-1] for o in outputs}  # -1: the graph's caller
    for i, n in enumerate(nodes):
        for name in n.input:
            if name:
                read.setdefault(name, []).append(i)
    return read


def _sole_reader(name, read, outputs) -> int | None:
    users = read.get(name, [])
    return users[0] if len(users) == 1 and name not in outputs else None


def _renamed(nodes, rename: dict[str, str]):
    """The nodes with inputs renamed (copies of the nodes that change: the caller's protos stay)."""
    if not rename:
        return nodes
    out = []
    for node in nodes:
        if any(i in rename for i in node.input):
            node = _copy(node)
            for k, name in enumerate(node.input):
                while name in rename:
                    name = rename[name]
                node.input[k] = name
        out.append(node)
    return out


def _copy(node):
    new = onnx.NodeProto()
    new.CopyFrom(node)
    return new


def _new_const(base, value, consts, types, names) -> str:
    name = _fresh(base, names)
    consts[name] = value
    types[name] = TensorType(tuple(value.shape), canonical(value.dtype))
    return name


def _fresh(base: str, names: set[str]) -> str:
    name, n = base, 0
    while name in names:
        n += 1
        name = f"{base}_{n}"
    names.add(name)
    return name


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
