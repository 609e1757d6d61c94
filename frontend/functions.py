"""Ops Nestor has no lowering for, but that ONNX defines as a function of other ops (Attention,
RMSNormalization, RotaryEmbedding, SoftmaxCrossEntropyLoss, GroupNormalization ...): the node is
replaced by its function body, so that its MatMul, Softmax and reductions become the kernels
Nestor lowers and tunes. Context-dependent functions (most of them) depend on the node's input
types, so expansion runs once shape inference has typed the node's inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import FunctionProto, TypeProto, helper

from ..ir import TensorType
from .ops import lowering_for


def defined_as_function(op_type: str) -> bool:
    """Whether ONNX's newest schema of `op_type` gives a function body Nestor can expand."""
    try:
        schema = onnx.defs.get_schema(op_type)
    except onnx.defs.SchemaError:
        return False
    return bool(schema.function_opset_versions or schema.context_dependent_function_opset_versions)


def function_of(node: onnx.NodeProto, opset: int, types: dict[str, TensorType]) -> FunctionProto | None:
    """The ONNX function body defining `node` at `opset`; None if the op has a lowering of its
    own, ONNX gives no function, or an input's type is not known yet."""
    if lowering_for(node.op_type) is not None or node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return None
    plain, dependent = schema.function_opset_versions, schema.context_dependent_function_opset_versions
    if not plain and not dependent:
        return None
    if any(i and i not in types for i in node.input):
        return None
    node = _with_defaults(node, schema)
    proto = FunctionProto()
    if dependent:
        version = _version(dependent, opset)
        inputs = [_type_proto(types[i]) if i else TypeProto() for i in node.input]
        proto.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            version, node.SerializeToString(), [t.SerializeToString() for t in inputs]))
    else:
        proto.ParseFromString(schema.get_function_with_opset_version(_version(plain, opset)))
    return proto


def expand_functions(nodes: list[onnx.NodeProto], opset: int,
                     types: dict[str, TensorType]) -> tuple[list[onnx.NodeProto], bool]:
    """`nodes` with every node that `function_of` defines replaced by its body; and whether
    any was (a body may hold such ops in turn: the caller infers types and calls again)."""
    out, changed = [], False
    for node in nodes:
        function = function_of(node, opset, types)
        out.extend([node] if function is None else expand(node, function, opset))
        changed |= function is not None
    return out, changed


def expand(node: onnx.NodeProto, function: FunctionProto, opset: int) -> list[onnx.NodeProto]:
    """`node` as the nodes of its function body, internal tensors and nodes named after it."""
    from onnx.backend.test.case.node import function_expand_helper  # ONNX's own renaming
    schema = onnx.defs.get_schema(node.op_type, opset)
    nodes = function_expand_helper(_with_defaults(node, schema), function, f"{node.name}__")
    for i, n in enumerate(nodes):
        n.name = f"{node.name}__{n.op_type}_{i}"
    return nodes


def _with_defaults(node: onnx.NodeProto, schema) -> onnx.NodeProto:
    """The node with every attribute it omits set to its schema default, as the body expects
    (ONNX's test expansion does the same)."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    given = {a.name for a in node.attribute}
    out.attribute.extend(a.default_value for name, a in schema.attributes.items()
                         if name not in given and a.default_value.name)
    return out


def _version(versions, opset: int) -> int:
    """The function's version for `opset`: the newest one not after it."""
    return max((v for v in versions if v <= opset), default=min(versions))


def _type_proto(t: TensorType) -> TypeProto:
    return helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), t.shape)


def inline_constant_ifs(nodes: list[onnx.NodeProto], consts: dict) -> tuple[list[onnx.NodeProto], bool]:
    """Each If whose condition is a constant replaced by the nodes of its taken branch (as
    function bodies can hold them: AffineGrid's); and whether any was."""
    out, changed = [], False
    for node in nodes:
        branch = _taken_branch(node, consts)
        out.extend([node] if branch is None else _inline(node, branch))
        changed |= branch is not None
    return out, changed


def _taken_branch(node, consts):
    if node.op_type != "If" or node.input[0] not in consts:
        return None
    name = "then_branch" if bool(np.asarray(consts[node.input[0]]).reshape(-1)[0]) else "else_branch"
    g = next(a.g for a in node.attribute if a.name == name)
    return None if g.initializer or any(a.HasField("g") or a.graphs for n in g.node for a in n.attribute) else g


def _inline(node, g) -> list[onnx.NodeProto]:
    """The branch's nodes, the names they define prefixed with the If's, its outputs the If's."""
    defined = {o for n in g.node for o in n.output if o}
    rename = {o: f"{node.name}__{o}" for o in defined}
    rename.update({vi.name: out for vi, out in zip(g.output, node.output) if vi.name in defined})
    nodes = []
    for i, n in enumerate(g.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.input[:] = [rename.get(x, x) for x in n.input]
        copy.output[:] = [rename.get(x, x) for x in n.output]
        copy.name = f"{node.name}__{n.op_type}_{i}"
        nodes.append(copy)
    nodes += [helper.make_node("Identity", [vi.name], [out], name=f"{node.name}__out{k}")
              for k, (vi, out) in enumerate(zip(g.output, node.output)) if vi.name not in defined]
    return nodes
