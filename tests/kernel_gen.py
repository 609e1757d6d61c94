"""Random small kernels from the frontend, for property tests (hypothesis strategies).

A kernel is described by a `Spec`: a tiny ONNX graph (graph inputs with their shapes, nodes with
their attributes, how many outputs each has) and which node's kernel to take; or, for the hazard
kernels that no frontend op makes (recurrences, overlapping writes), the kernel's IR text. A
spec's repr is Python that rebuilds it, so a failing example reproduces in one line:

    from tests.kernel_gen import Spec
    kernel = Spec(inputs=(...), nodes=(...), pick=0).kernel()
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from onnx import TensorProto, checker, helper, shape_inference

import nestor
from nestor.ir import Kernel, parse_kernel


@dataclass(frozen=True, repr=False)
class Spec:
    inputs: tuple[tuple[str, tuple[int, ...]], ...] = ()  # graph inputs, float32
    # (op, inputs, attrs[, number of outputs]); node n's outputs are t<n>, t<n>_1, ...
    nodes: tuple[tuple, ...] = ()
    pick: int = -1                                        # whose kernel (index into nodes)
    ir: str = ""                                          # or the kernel itself, as IR text

    def model(self):
        nodes, outs = [], []
        for n, (op, ins, attrs, *count) in enumerate(self.nodes):
            names = [f"t{n}"] + [f"t{n}_{k}" for k in range(1, count[0] if count else 1)]
            nodes.append(helper.make_node(op, list(ins), names, **dict(attrs)))
            outs += names[1:]  # extra outputs (MaxPool's Indices) are graph outputs, so they stay
        outs.insert(0, f"t{len(nodes) - 1}")
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in self.inputs],
            [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model = shape_inference.infer_shapes(model, strict_mode=True)  # fills in the output's type
        checker.check_model(model)
        return model

    def kernel(self) -> Kernel:
        return _kernel(self)

    def __repr__(self) -> str:  # the fields that differ from the defaults: a shorter reproduction
        if self.ir:
            return f"Spec(ir={self.ir!r})"
        return f"Spec(inputs={self.inputs!r}, nodes={self.nodes!r}, pick={self.pick!r})"

    @property
    def op(self) -> str:
        return "IR" if self.ir else self.nodes[self.pick][0]

    def describe(self) -> str:
        if self.ir:
            return "a hand-written kernel"
        op, _, attrs, *_ = self.nodes[self.pick]
        shapes = ", ".join(f"{n}{list(s)}" for n, s in self.inputs)
        chain = " -> ".join(node[0] for node in self.nodes)
        return f"{op}{dict(attrs) or ''} of the graph {chain} on {shapes}"


@functools.lru_cache(maxsize=512)
def _kernel(spec: Spec) -> Kernel:
    if spec.ir:
        return parse_kernel(spec.ir)
    graph = nestor.import_onnx(spec.model(), optimize=False)  # one kernel per node, unfused
    by_output = {n.outputs[0]: n for n in graph.nodes}
    node = by_output[f"t{spec.pick % len(spec.nodes)}"]
    assert node.kernel is not None, f"{spec.describe()} lowered to an alias, not a kernel"
    return node.kernel


def random_inputs(kernel: Kernel, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(b.shape).astype(b.dtype) for b in kernel.inputs]


# strategies, one per op family; shapes are small (dims <= 8, channels <= 8) so compiles are fast

dim = st.integers(1, 8)


def _attrs(attrs: dict) -> tuple:
    """Hashable attributes (lists become tuples; onnx.helper takes either)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))


def _single(op, inputs, **attrs) -> Spec:
    return Spec(tuple(inputs), ((op, tuple(n for n, _ in inputs), _attrs(attrs)),), 0)


@st.composite
def conv(draw) -> Spec:
    rank = draw(st.integers(1, 2), label="spatial rank")
    group = draw(st.sampled_from([1, 1, 2]), label="group")
    c = group * draw(st.integers(1, 4 // group), label="channels per group")
    o = group * draw(st.integers(1, 8 // group), label="filters per group")
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    strides = [draw(st.integers(1, 2)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [draw(st.integers(0, (k - 1) * d)) for k, d in zip(kernel + kernel, dilations + dilations)]
    # the input must cover the dilated kernel once padded
    spatial = [draw(st.integers(max(1, (k - 1) * d + 1 - pads[i] - pads[i + rank]), 8))
               for i, (k, d) in enumerate(zip(kernel, dilations))]
    n = draw(st.integers(1, 2), label="batch")
    inputs = [("X", (n, c, *spatial)), ("W", (o, c // group, *kernel))]
    if draw(st.booleans(), label="bias"):
        inputs.append(("B", (o,)))
    return _single("Conv", inputs, kernel_shape=kernel, strides=strides, dilations=dilations,
                   pads=pads, group=group)


@st.composite
def matmul(draw) -> Spec:
    m, k, n = draw(dim), draw(dim), draw(dim)
    kind = draw(st.sampled_from(["2d", "batched", "batched both", "broadcast batch", "vector"]))
    b = draw(st.integers(1, 3), label="batch")
    a_shape, b_shape = {
        "2d": ((m, k), (k, n)),
        "batched": ((b, m, k), (k, n)),
        "batched both": ((b, m, k), (b, k, n)),
        "broadcast batch": ((1, m, k), (b, k, n)),
        "vector": ((k,), (b, k, n)),
    }[kind]
    return _single("MatMul", [("A", a_shape), ("B", b_shape)])


@st.composite
def gemm(draw) -> Spec:
    m, k, n = draw(dim), draw(dim), draw(dim)
    trans_a, trans_b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    inputs = [("A", (k, m) if trans_a else (m, k)), ("B", (n, k) if trans_b else (k, n))]
    if draw(st.booleans(), label="bias"):
        inputs.append(("C", draw(st.sampled_from([(n,), (m, n), (1, n), (m, 1)]))))
    return _single("Gemm", inputs, transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)


@st.composite
def pool(draw) -> Spec:
    op = draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"]))
    rank = draw(st.integers(1, 2), label="spatial rank")
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 4)), *[draw(dim) for _ in range(rank)])
    if op.startswith("Global"):
        return _single(op, [("X", shape)])
    kernel = [draw(st.integers(1, min(3, s))) for s in shape[2:]]
    strides = [draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [draw(st.integers(0, k - 1)) for k in kernel + kernel]  # ONNX: pads smaller than the kernel
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads)
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    spec = _single(op, [("X", shape)], **attrs)
    if op == "MaxPool" and draw(st.booleans(), label="indices"):
        (node,) = spec.nodes
        spec = Spec(spec.inputs, (node + (2,),), 0)
    return spec


@st.composite
def softmax(draw) -> Spec:
    shape = tuple(draw(st.lists(dim, min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    op = draw(st.sampled_from(["Softmax", "LogSoftmax"]))
    return _single(op, [("X", shape)], axis=axis)


@st.composite
def layernorm(draw) -> Spec:
    if draw(st.integers(0, 3), label="instance norm") == 0:
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 4)),
                 *draw(st.lists(dim, min_size=1, max_size=2)))
        return _single("InstanceNormalization", [("X", shape), ("Scale", shape[1:2]), ("B", shape[1:2])])
    shape = tuple(draw(st.lists(dim, min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    inputs = [("X", shape), ("Scale", shape[axis:])]
    if draw(st.booleans(), label="bias"):
        inputs.append(("B", shape[axis:]))
    return _single("LayerNormalization", inputs, axis=axis, epsilon=1e-5)


@st.composite
def reduce(draw) -> Spec:
    shape = tuple(draw(st.lists(dim, min_size=1, max_size=3)))
    axes = draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape),
                         unique_by=lambda a: a % len(shape)))
    op = draw(st.sampled_from(["ReduceMean", "ReduceMax", "ReduceL2", "ArgMax", "ArgMin", "Hardmax"]))
    if op.startswith("Arg"):
        return _single(op, [("X", shape)], axis=axes[0], keepdims=draw(st.integers(0, 1)),
                       select_last_index=draw(st.integers(0, 1)))
    if op == "Hardmax":
        return _single(op, [("X", shape)], axis=axes[0])
    return _single(op, [("X", shape)], axes=axes, keepdims=draw(st.integers(0, 1)))


UNARY = [("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("Neg", {}), ("Abs", {}),
         ("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Softplus", {}), ("Erf", {})]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


@st.composite
def elementwise_chain(draw) -> Spec:
    """2-4 elementwise nodes, each reading the one before; binary ones read a second input that
    broadcasts (a suffix of the shape, some dimensions 1). The kernel is one node of the chain."""
    shape = tuple(draw(st.lists(dim, min_size=1, max_size=4)))
    inputs, nodes, current = [("X", shape)], [], "X"
    for n in range(draw(st.integers(2, 4), label="length")):
        if draw(st.booleans(), label="binary"):
            op = draw(st.sampled_from(BINARY))
            rank = draw(st.integers(0, len(shape)), label="operand rank")
            other = tuple(d if draw(st.booleans()) else 1 for d in shape[len(shape) - rank:])
            name = f"Y{n}"
            inputs.append((name, other))
            operands = (name, current) if draw(st.booleans(), label="swap") else (current, name)
            nodes.append((op, operands, ()))
        else:
            op, attrs = draw(st.sampled_from(UNARY))
            nodes.append((op, (current,), _attrs(attrs)))
        current = f"t{n}"
    pick = draw(st.integers(0, len(nodes) - 1), label="node")
    return Spec(tuple(inputs), tuple(nodes), pick)


@st.composite
def data_movement(draw) -> Spec:
    shape = tuple(draw(st.lists(dim, min_size=2, max_size=3)))
    if draw(st.booleans()):
        perm = draw(st.permutations(range(len(shape))))
        return _single("Transpose", [("X", shape)], perm=list(perm))
    axis = draw(st.integers(0, len(shape) - 1))
    other = tuple(draw(dim) if d == axis else s for d, s in enumerate(shape))
    return _single("Concat", [("X", shape), ("Y", other)], axis=axis)


# Kernels with the dependences the frontend's ops lack: a recurrence, overlapping writes (the last
# writer wins), a running update that is not a reduction, a stencil read of a buffer written in
# the same nest. Extents are filled in at random.
HAZARDS = {
    "prefix_sum": """
kernel prefix(X: f32[{n}]) -> (Y: f32[{n}]) {{
  Y[0] = X[0]
  for i in 0..{n1} {{ Y[i + 1] = Y[i] + X[i + 1] }}
}}""",
    "overlap": """
kernel overlap(X: f32[{n}, {m}]) -> (Y: f32[{nm}]) {{
  for i in 0..{n} {{ for j in 0..{m} {{ Y[i + j] = X[i, j] * 2.0 + Y[i + j] * 0.5 }} }}
}}""",
    "last_writer": """
kernel last(X: f32[{n}, {m}]) -> (Y: f32[{m}]) {{
  for i in 0..{n} {{ for j in 0..{m} {{ Y[j] = X[i, j] }} }}
}}""",
    "running": """
kernel running(X: f32[{n}, {m}]) -> (S: f32[{m}]) {{
  for a in 0..{n} {{ for b in 0..{m} {{ S[b] = S[b] * 0.5 + X[a, b] }} }}
}}""",
    "rows": """
kernel rows(X: f32[{n}, {m}]) -> (Z: f32[{n1p}, {m}]) {{
  for i in 0..{n} {{ for j in 0..{m} {{ Z[i + 1, j] = Z[i, j] * 0.5 + X[i, j] }} }}
}}""",
    "mislabelled_reduce": """
kernel mislabelled(X: f32[{n}, {m}]) -> (Y: f32[{n}]) {{
  for i in 0..{n} {{
    Y[i] = 1.0
    for k in 0..{m} reduce {{ Y[i] = Y[i] * 0.5 + X[i, k] }}
  }}
}}""",
    "two_stage": """
kernel stages(X: f32[{n}, {m}]) -> (Y: f32[{n}, {m}]) {{
  alloc T: f32[{n}, {m}] global {{
    for i in 0..{n} {{ for j in 0..{m} {{ T[i, j] = X[i, j] + 1.0 }} }}
    for i in 0..{n} {{
      for j in 0..{m} {{
        Y[i, j] = T[{n1} - i, j] * T[i, {m1} - j]
        T[i, j] = 0.0
      }}
    }}
  }}
}}""",
    "in_place_stencil": """
kernel stencil(X: f32[{n}, {m}]) -> (Y: f32[{n}, {m2}]) {{
  for i in 0..{n} {{
    for j in 0..{m} {{ Y[i, j + 1] = X[i, j] }}
    for j in 0..{m} {{ Y[i, j + 1] = Y[i, j] + Y[i, j + 2] }}
  }}
}}""",
}


@st.composite
def hazard(draw) -> Spec:
    name = draw(st.sampled_from(sorted(HAZARDS)))
    n, m = draw(st.integers(2, 8), label="n"), draw(st.integers(1, 8), label="m")
    return Spec(ir=HAZARDS[name].format(n=n, m=m, n1=n - 1, m1=m - 1, nm=n + m - 1, n1p=n + 1,
                                        m2=m + 2).strip())


FAMILIES = {
    "conv": conv(), "matmul": matmul(), "gemm": gemm(), "pool": pool(), "softmax": softmax(),
    "layernorm": layernorm(), "reduce": reduce(), "elementwise": elementwise_chain(),
    "data_movement": data_movement(), "hazard": hazard(),
}


def specs(families=None) -> st.SearchStrategy[Spec]:
    """Specs of the given families (default: all), drawn evenly."""
    chosen = [FAMILIES[f] for f in (families or FAMILIES)]
    return st.one_of(*chosen)
