"""ONNX → Nestor graph: load and check the model, infer static shapes, fold constants, lower ops.

Shape inference and constant evaluation are ONNX's own (onnx.shape_inference with data
propagation, onnx.reference for folding); Nestor only alternates them until every tensor has a
static type: folding a Shape node can make a Reshape's target known, which inference then uses.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from ..ir import Graph, Node, TensorType, canonical
from ..ir.errors import ModelError
from ..ir.machine import GENERIC_CPU, MachineParams
from .functions import expand_functions, inline_constant_ifs
from .graph_passes import optimize_nodes
from .layout import blocked_layout
from .ops import NESTOR_DOMAIN, Alias, TensorInfo, UnsupportedOpError, lowering_for, make_context
from .resize import expand_resizes
from .conv_transpose import matmul_conv_transposes
from .rnn import expand_recurrences

# Ops never folded even with constant inputs: their result is not a function of the inputs.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}
# Constants smaller than this go to shape inference as values (they may be shapes or axes);
# larger ones only as typed inputs, so big weights are never re-serialized.
SMALL_CONSTANT = 4096


def load_model(source) -> onnx.ModelProto:
    """Read (if a path) and check an ONNX model; every failure is a one-line ModelError."""
    if isinstance(source, onnx.ModelProto):
        model, where = source, "model"
    else:
        where = f"'{os.fspath(source)}'"
        if not os.path.isfile(source):
            raise ModelError(f"cannot read model {where}: no such file")
        try:
            model = onnx.load(os.fspath(source))
        except Exception as err:  # protobuf DecodeError and friends
            raise ModelError(f"{where} is not a valid ONNX model: {_first_line(err)}") from None
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, Exception) as err:
        raise ModelError(f"{where} fails ONNX's checks: {_first_line(err)}") from None
    return model


def import_model(source, input_shapes: dict[str, tuple[int, ...]] | None = None,
                 name: str | None = None, optimize: bool = True, blocked: bool | None = None,
                 winograd: bool | None = None, machine: MachineParams = GENERIC_CPU) -> Graph:
    """Build a Nestor graph from an ONNX model (path or ModelProto).

    `input_shapes` fixes dynamic input dimensions (e.g. the batch size); `optimize` runs the
    inference rewrites of graph_passes (BatchNorm folding, dropped aliases) before lowering,
    and with `blocked`, the blocked layouts of layout.py (convolutions in NCHW<b>c; with
    `winograd`, the 3x3 stride-1 ones that winograd.py takes as Winograd F(2x2, 3x3)), its
    channel blocks those of `machine`. Both None: decided by `machine`, on for CPUs, off for
    GPUs (the channel blocks are SIMD vectors; GPU schedules tile NCHW directly).
    """
    blocked = not machine.is_gpu if blocked is None else blocked
    winograd = not machine.is_gpu if winograd is None else winograd
    model = load_model(source)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    g = model.graph
    consts = {t.name: _initializer(t) for t in g.initializer}
    types: dict[str, TensorType] = {n: TensorType(v.shape, canonical(v.dtype)) for n, v in consts.items()}
    inputs = [vi.name for vi in g.input if vi.name not in consts]
    unknown = sorted(set(input_shapes or {}) - set(inputs))
    if unknown:
        raise ModelError(f"a shape is given for {', '.join(map(repr, unknown))}, which the model does not "
                         f"take; its inputs are {', '.join(map(repr, inputs))}")
    for vi in g.input:
        if vi.name in consts:
            continue
        types[vi.name] = _input_type(vi, (input_shapes or {}).get(vi.name))
    nodes = [_named(n, i) for i, n in enumerate(g.node)]
    for node in nodes:  # Nestor's own domain is for what its graph passes write
        if node.domain not in ("", "ai.onnx"):
            raise _foreign_domain(node, opsets.get(node.domain))

    # Alternate folding and inference until nothing changes.
    while True:
        _infer_types(nodes, inputs, consts, types, opsets)
        nodes, expanded = expand_functions(nodes, opsets.get("ai.onnx", 0), types)
        nodes, resized = expand_resizes(nodes, opsets.get("ai.onnx", 0), consts, types)
        nodes, inlined = inline_constant_ifs(nodes, consts)
        if expanded or resized or inlined:  # the new nodes' tensors need types first
            continue
        remaining = []
        for node in nodes:
            value = _try_fold(node, consts, types, opsets)
            if value is None:
                remaining.append(node)
                continue
            for out, v in zip(node.output, value):
                consts[out] = v
                types[out] = TensorType(tuple(v.shape), canonical(v.dtype))
        if len(remaining) == len(nodes):
            break
        nodes = remaining

    outputs = [vi.name for vi in g.output]
    nodes = expand_recurrences(nodes, consts, types, outputs)
    if optimize:
        nodes = matmul_conv_transposes(nodes, consts, types)
        nodes = optimize_nodes(nodes, consts, types, outputs)
        if blocked:
            nodes = blocked_layout(nodes, consts, types, outputs, winograd, machine)
    read = {i for n in nodes for i in n.input} | set(outputs)
    graph_nodes = [_lower(_drop_unread_outputs(node, read), opsets, consts, types, machine.is_gpu) for node in nodes]
    used = {t for n in graph_nodes for t in n.inputs} | set(outputs)
    return Graph(name=name or _identifier(g.name or "model"), inputs=inputs, outputs=outputs,
                 nodes=graph_nodes, types=types,
                 constants={k: v for k, v in consts.items() if k in used})


def _initializer(t: onnx.TensorProto) -> np.ndarray:
    """An initializer's value; one whose data does not fill its dims (the checker lets that by)
    is the model's error."""
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError) as err:
        raise ModelError(f"initializer '{t.name}' cannot be read: {_first_line(err)}") from None


def _input_type(vi: onnx.ValueInfoProto, override) -> TensorType:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise ModelError(f"input '{vi.name}' is not a tensor; Nestor compiles tensor models only")
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    if override is not None:
        if len(override) != len(dims):
            raise ModelError(f"input '{vi.name}' has rank {len(dims)}, but the shape given for it "
                             f"is {tuple(override)}")
        changed = [i for i, (d, o) in enumerate(zip(dims, override)) if d is not None and d != o]
        if changed:
            raise ModelError(f"input '{vi.name}' has static shape {_dims_text(t)}; the shape given for it, "
                             f"{tuple(override)}, changes dimension {changed[0]} (only dynamic ones can be set)")
        if min(override, default=1) < 1:
            raise ModelError(f"input '{vi.name}': the shape given for it, {tuple(override)}, has a dimension below 1")
        dims = tuple(override)
    if any(d is None for d in dims):
        names = [d.dim_param or "?" for d in t.shape.dim]
        raise ModelError(f"input '{vi.name}' has dynamic shape {names}; give static dimensions "
                         f"(e.g. --input-shape {vi.name}=1,3,224,224)")
    return TensorType(dims, canonical(helper.tensor_dtype_to_np_dtype(t.elem_type)))


def _dims_text(t) -> str:
    return "(" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?"
                           for d in t.shape.dim) + ")"


def _named(node: onnx.NodeProto, index: int) -> onnx.NodeProto:
    if not node.name:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.name = f"{node.op_type}_{index}"
    return node


def _infer_types(nodes, inputs, consts, types, opsets) -> None:
    """Run ONNX shape inference on the remaining nodes; record every tensor type it finds."""
    needed = {i for n in nodes for i in list(n.input) + sorted(_outer_names(n)) if i} | set(inputs)
    small = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()
             if k in needed and v.size <= SMALL_CONSTANT]
    typed = [k for k in needed if k not in consts or consts[k].size > SMALL_CONSTANT]
    vis = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.dtype(types[k].dtype)),
                                         types[k].shape) for k in typed if k in types]
    produced = [o for n in nodes for o in n.output if o]
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in produced]
    model = helper.make_model(
        helper.make_graph(nodes, "skeleton", vis, outs, initializer=small),
        opset_imports=[helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in opsets.items()])
    model.ir_version = 10
    try:
        # check_type: an input of a type the op does not take (LeakyRelu of a bool) is the model's
        # error, not a TypeError in the op's lowering
        model = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as err:
        raise ModelError(f"shape inference failed: {_first_line(err)}") from None
    for vi in list(model.graph.output) + list(model.graph.value_info):
        t = vi.type.tensor_type
        if not t.elem_type or not t.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        if None not in dims:
            types[vi.name] = TensorType(dims, canonical(helper.tensor_dtype_to_np_dtype(t.elem_type)))


def _drop_unread_outputs(node: onnx.NodeProto, read: set[str]) -> onnx.NodeProto:
    """Blank optional outputs nobody reads (Dropout's mask, BatchNorm's statistics), as ONNX
    allows, so lowerings compute only what is used."""
    if all(o in read or i == 0 or not o for i, o in enumerate(node.output)):
        return node
    node = onnx.NodeProto.FromString(node.SerializeToString())
    for i, o in enumerate(node.output):
        if i > 0 and o not in read:
            node.output[i] = ""
    return node


def _try_fold(node, consts, types, opsets):
    """The node's output values if they are known at compile time, else None."""
    if node.op_type in NONDETERMINISTIC or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Shape", "Size") and node.input[0] in types and node.input[0] not in consts:
        shape = np.array(types[node.input[0]].shape, dtype=np.int64)
        if node.op_type == "Size":
            return [np.array(np.prod(shape), dtype=np.int64)]
        start = _attr(node, "start", 0)
        end = _attr(node, "end", None)
        return [shape[start:end]]
    outer = _outer_names(node)  # what an If's or Loop's branches read from the enclosing graph
    if not all(i in consts for i in list(node.input) + sorted(outer) if i):
        return None
    opset = opsets.get("ai.onnx", 0)
    feeds = {i: consts[i] for i in list(node.input) + sorted(outer) if i}
    vis = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in feeds.items()]
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    model = helper.make_model(helper.make_graph([node], "fold", vis, outs),
                              opset_imports=[helper.make_opsetid("", opset)])
    try:
        values = ReferenceEvaluator(model).run(None, feeds)
    except Exception as err:
        raise ModelError(f"{node.op_type} node '{node.name}': cannot evaluate its constant inputs: "
                         f"{_first_line(err)}") from None
    return [np.asarray(v) for v in values]


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs read but do not define (outer-scope references)."""
    names = set()
    for attr in node.attribute:
        for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            defined = ({i.name for i in g.input} | {t.name for t in g.initializer}
                       | {o for n in g.node for o in n.output})
            used = {i for n in g.node for i in n.input if i} | set().union(*map(_outer_names, g.node))
            names |= used - defined
    return names


def _lower(node, opsets, consts, types, gpu: bool = False) -> Node:
    opset = opsets.get(node.domain or "ai.onnx")
    if node.domain not in ("", "ai.onnx", NESTOR_DOMAIN):
        raise _foreign_domain(node, opset)
    lower = lowering_for(node.op_type, node.domain)
    if lower is None:
        raise UnsupportedOpError(f"unsupported op {node.op_type} (node '{node.name}', opset {opset})")

    def info(name):
        if not name:
            return None  # an omitted optional input or output
        if name not in types:
            raise ModelError(f"{node.op_type} node '{node.name}': the shape of tensor '{name}' "
                             f"could not be inferred statically")
        t = types[name]
        return TensorInfo(t.shape, t.dtype, consts.get(name))

    ctx = make_context(node, node.name, opset, [info(i) for i in node.input],
                       [info(o) for o in node.output if o], gpu)
    lowered = lower(ctx)
    outputs = [o for o in node.output if o]
    if isinstance(lowered, Alias):
        src = node.input[lowered.input_index]
        if types[src].size != types[outputs[0]].size:
            raise ModelError(f"{node.op_type} node '{node.name}': cannot view {types[src].shape} "
                             f"as {types[outputs[0]].shape}")
        return Node(node.name, node.op_type, [src], outputs[:1])
    return Node(node.name, node.op_type, [node.input[i] for i in lowered.args], outputs,
                lowered.kernel)


def _foreign_domain(node, opset) -> UnsupportedOpError:
    return UnsupportedOpError(f"{node.op_type} node '{node.name}' (domain '{node.domain}', "
                              f"opset {opset}): only the default ONNX domain is supported")


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text) or "model"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
