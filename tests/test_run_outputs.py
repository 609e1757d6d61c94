"""`run` returns outputs the kernels wrote straight into fresh arrays where nothing else shares
their bytes (codegen.model.written_in_place), and copies the others out of the arena: either
way each run's arrays are its own and match ONNX Runtime."""
import numpy as np
from onnx import TensorProto, helper

import nestor
from nestor.bench import ort_session
from nestor.codegen.model import written_in_place


def _model():
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Relu", ["X"], ["A"]),
        helper.make_node("Add", ["A", "one"], ["B"]),                # B: a kernel's, nothing shares it
        helper.make_node("Reshape", ["A", "flat"], ["C"]),           # C: a view of A (both outputs)
        helper.make_node("Sigmoid", ["X"], ["P"]),
        helper.make_node("Tanh", ["X"], ["Q"]),
        helper.make_node("Concat", ["P", "Q"], ["D"], axis=1),       # D: its inputs written in place
        helper.make_node("Exp", ["D"], ["E"]),                       # E: a kernel's, read D
    ]
    inits = [helper.make_tensor("one", f, [], [1.0]), helper.make_tensor("flat", TensorProto.INT64, [2], [1, -1])]
    shapes = {"A": [1, 4, 8, 8], "B": [1, 4, 8, 8], "C": [1, 256], "D": [1, 8, 8, 8], "E": [1, 8, 8, 8]}
    graph = helper.make_graph(nodes, "outs", [helper.make_tensor_value_info("X", f, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(n, f, s) for n, s in shapes.items()], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_outputs_written_in_place_are_fresh_arrays_and_the_rest_copies():
    model = _model()
    compiled = nestor.compile(model)
    direct = written_in_place(compiled.plan)
    assert "B" in direct and "A" not in direct and "C" not in direct  # A's bytes are C's too
    session = ort_session(model)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(2)]
    first = compiled.run({"X": xs[0]})
    kept = [a.copy() for a in first]
    second = compiled.run({"X": xs[1]})
    for x, got in zip(xs, (first, second)):
        for g, want in zip(got, session.run(None, {"X": x})):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    for a, b, k in zip(first, second, kept):
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, k)  # the second run left the first's arrays alone
    fresh = [first[i] for i, name in enumerate(compiled.output_names) if name in direct]
    assert len(fresh) >= 2   # B and E: allocated together, each its own aligned bytes
    for i, a in enumerate(fresh):
        assert a.ctypes.data % 64 == 0 and a.flags.writeable
        assert not any(np.shares_memory(a, b) for b in fresh[i + 1:])


def test_an_input_in_any_memory_order_gives_the_same_outputs():
    compiled = nestor.compile(_model())
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    want = compiled.run([x])
    for other in (np.asfortranarray(x), np.repeat(x, 2, axis=3)[..., ::2]):   # (not C-contiguous)
        assert not other.flags.c_contiguous
        for g, w in zip(compiled.run({"X": other}), want):
            np.testing.assert_array_equal(g, w)
