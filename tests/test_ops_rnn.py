"""LSTM, GRU and RNN (frontend/rnn.py splits them into projections and recurrences,
frontend/ops/rnn.py lowers the recurrences) compiled and compared with ONNX Runtime."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor.bench import ort_session
from nestor.frontend import UnsupportedOpError

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def rnn_model(op, steps=3, batch=2, inputs=3, hidden=4, direction="forward", initial=False,
              lens=None, peepholes=False, constant=True, layout=0, opset=17, outputs=3, **attrs):
    """One `op` node with seeded weights (initializers, or graph inputs unless `constant`);
    returns the model and its feeds."""
    rng = np.random.default_rng(0)
    gh, dirs = GATES[op] * hidden, 2 if direction == "bidirectional" else 1
    x_shape = (batch, steps, inputs) if layout else (steps, batch, inputs)
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    values = {"W": rng.normal(0, 0.6, (dirs, gh, inputs)), "R": rng.normal(0, 0.6, (dirs, gh, hidden)),
              "B": rng.normal(0, 0.3, (dirs, 2 * gh)), "lens": lens,
              "h0": rng.normal(0, 1, state) if initial else None,
              "c0": rng.normal(0, 1, state) if initial and op == "LSTM" else None,
              "P": rng.normal(0, 0.5, (dirs, 3 * hidden)) if peepholes else None}
    values = {k: (np.array(v, np.int32) if k == "lens" else np.asarray(v, np.float32))
              for k, v in values.items() if v is not None}
    names = ["X", "W", "R", "B", "lens", "h0", "c0", "P"][:8 if op == "LSTM" else 6]
    names = [n if n == "X" or n in values else "" for n in names]
    while not names[-1]:
        names.pop()
    outs = (["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else []))[:outputs]
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(op, names, outs, name="rnn", direction=direction, hidden_size=hidden, **attrs)
    feeds = {"X": rng.normal(0, 1, x_shape).astype(np.float32)}
    graph_inputs, inits = [("X", feeds["X"])], []
    for k, v in values.items():
        if constant:
            inits.append(numpy_helper.from_array(v, k))
        else:
            feeds[k] = v
            graph_inputs.append((k, v))
    graph = helper.make_graph(
        [node], "rnn", [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                        for k, v in graph_inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True), feeds


def assert_matches_reference(model, feeds, want=None):
    want = ort_session(model).run(None, feeds) if want is None else want
    got = nestor.compile(model).run(feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.max(np.abs(w)) > 0.1
        assert np.max(np.abs(g - w)) / np.max(np.abs(w)) <= 1e-4


VARIANTS = {
    "forward": {},
    "reverse": dict(direction="reverse"),
    "bidirectional_initial": dict(direction="bidirectional", initial=True),
    "lens": dict(lens=[3, 1]),
    "reverse_lens": dict(direction="reverse", lens=[2, 3]),
    "bidirectional_lens_initial": dict(direction="bidirectional", lens=[1, 3], initial=True),
    "weights_as_inputs": dict(direction="bidirectional", initial=True, constant=False, lens=[3, 2]),
    "opset7_one_step": dict(opset=7, steps=1),
    # large enough for the default schedule to give each direction a thread
    "bidirectional_threads": dict(direction="bidirectional", steps=16, hidden=16, lens=[16, 9], initial=True),
}
OP_VARIANTS = {
    "LSTM": {"peepholes": dict(peepholes=True, initial=True),
             "peepholes_as_inputs": dict(peepholes=True, constant=False, direction="reverse"),
             "input_forget": dict(input_forget=1),
             "lens_without_Y_c": dict(lens=[3, 1], outputs=2, direction="bidirectional"),
             "clip": dict(clip=0.6, initial=True),
             "activations": dict(direction="bidirectional",
                                 activations=["Sigmoid", "Relu", "Tanh", "HardSigmoid", "Tanh", "Relu"],
                                 activation_alpha=[0.3], activation_beta=[0.4])},
    "GRU": {"linear_before_reset": dict(linear_before_reset=1, initial=True, direction="bidirectional"),
            "linear_before_reset_lens": dict(linear_before_reset=1, direction="reverse", lens=[3, 1]),
            "activations": dict(activations=["HardSigmoid", "LeakyRelu"], activation_alpha=[0.3, 0.05],
                                activation_beta=[0.4])},
    "RNN": {"relu": dict(activations=["Relu"], initial=True),
            "affine_scaled_tanh": dict(direction="bidirectional", activations=["Affine", "ScaledTanh"],
                                       activation_alpha=[0.5, 1.5], activation_beta=[0.1, 0.7])},
}
CASES = [(op, name, kw) for op in GATES for name, kw in {**VARIANTS, **OP_VARIANTS[op]}.items()]


@pytest.mark.parametrize("op,name,kw", CASES, ids=[f"{op}-{name}" for op, name, _ in CASES])
def test_matches_onnxruntime(op, name, kw):
    assert_matches_reference(*rnn_model(op, **kw))


@pytest.mark.parametrize("op", list(GATES))
def test_batchwise_layout_matches_its_time_major_twin(op):
    """layout 1 (ONNX Runtime lacks it) against ONNX Runtime on layout 0, batch and time swapped."""
    kw = dict(direction="bidirectional", initial=True, lens=[2, 3], constant=False)
    model = rnn_model(op, layout=1, **kw)[0]
    twin, twin_feeds = rnn_model(op, **kw)
    feeds = {k: (np.swapaxes(v, 0, 1) if k in ("X", "h0", "c0") else v) for k, v in twin_feeds.items()}
    want = ort_session(twin).run(None, twin_feeds)
    assert_matches_reference(model, feeds, [np.moveaxis(want[0], 2, 0)] + [np.swapaxes(w, 0, 1) for w in want[1:]])


@pytest.mark.parametrize("op", list(GATES))
def test_a_recurrence_is_one_projection_and_one_recurrence_kernel(op):
    """One MatMul projects the inputs of every step and direction, and one kernel loops over
    the directions and steps, writing Y and Y_h: as many kernels for 30 steps as for 3."""
    def kernel_ops(steps):
        graph = nestor.import_onnx(rnn_model(op, steps=steps, direction="bidirectional", outputs=2)[0])
        return sorted(n.op_type for n in graph.nodes if n.kernel is not None)
    assert kernel_ops(3) == kernel_ops(30) == ["MatMul", "Recurrence"]


def test_unknown_activation_is_named():
    model, _ = rnn_model("RNN", activations=["Gelu"])
    with pytest.raises(UnsupportedOpError, match="RNN node 'rnn': activation 'Gelu'"):
        nestor.import_onnx(model)


@pytest.mark.slow
@pytest.mark.parametrize("op", list(GATES))
def test_onnx_node_cases_pass(op):
    """ONNX's own LSTM / GRU / RNN node test cases (18 in all) through nestor.backend."""
    from nestor.conformance import case_op, node_cases, run_case
    results = [run_case(c) for c in node_cases() if case_op(c) == op]
    assert results and all(r.status == "pass" for r in results), [(r.name, r.detail) for r in results]
