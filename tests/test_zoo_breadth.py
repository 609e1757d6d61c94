"""The breadth zoo (nestor/zoo_breadth.py): valid ONNX with the ops each kind is known by, spread
outputs, Nestor's default-schedule build against ONNX Runtime (small sizes), and the tuner's
tasks for the recurrent cells and ConvTranspose."""
import numpy as np
import onnx
import pytest
from onnx import helper

import nestor
from nestor.autotune.task_scheduler import extract_tasks
from nestor.bench import MODELS, example_model, ort_session
from nestor.autotune.space import Sketch
from nestor.zoo_breadth import BREADTH_MODELS, SMALL, gru_speech, llama_block, lstm_classifier, unet
from tests.test_models import assert_close_to_ort

SIGNATURE_OPS = {
    "unet": {"ConvTranspose", "Concat", "MaxPool"},
    "fcn_head": {"Conv", "Resize"},
    "fpn_detection_head": {"Resize", "Transpose", "Concat"},
    "lstm_classifier": {"Gather", "LSTM", "Gemm"},
    "gru_speech": {"GRU", "LogSoftmax"},
    "llama_block": {"Cos", "Sin", "Einsum", "Softmax", "ReduceMean", "Sigmoid", "Neg"},
}


def test_every_model_is_benchmarked_and_has_a_signature():
    assert set(SIGNATURE_OPS) == set(BREADTH_MODELS) == set(SMALL) and set(BREADTH_MODELS) <= set(MODELS)


@pytest.mark.parametrize("name", sorted(BREADTH_MODELS))
def test_model_is_valid_onnx_with_its_kind_ops(name):
    model = example_model(name)
    onnx.checker.check_model(model, full_check=True)
    assert SIGNATURE_OPS[name] <= {n.op_type for n in model.graph.node}
    assert model.opset_import[0].version == 17


@pytest.mark.parametrize("name", sorted(BREADTH_MODELS))
def test_small_model_matches_onnxruntime(name):
    model = BREADTH_MODELS[name](**SMALL[name])
    compiled = nestor.compile(model)
    assert_close_to_ort(model, compiled)
    for out in ort_session(model).run(None, compiled.random_inputs(seed=1)):
        assert np.std(out) > 0.05 * np.max(np.abs(out))   # outputs that spread, not constants


def test_llama_attention_spreads_over_the_keys():
    """Attention rows are not one-hot (the error check would then compare near-constants)."""
    model = llama_block(**SMALL["llama_block"])
    model.graph.output.append(helper.make_tensor_value_info("attn.probs", onnx.TensorProto.FLOAT, None))
    feeds = {"hidden_states": np.random.default_rng(1).standard_normal((1, 8, 32)).astype(np.float32),
             "position_ids": np.arange(8, dtype=np.int64)[None]}
    probs = ort_session(model).run(["attn.probs"], feeds)[0]
    assert probs[0, :, 3:].max(-1).mean() < 0.8   # rows with 4 or more keys to attend to


def _tasks_by_op(model):
    """{op type: [(calls, sketch rule names)]} of the model's tuning tasks."""
    graph = nestor.import_onnx(model)
    op = {n.name: n.op_type for n in graph.nodes}
    out = {}
    for task in extract_tasks(graph):
        out.setdefault(op[task.nodes[0]], []).append((task.calls, set(Sketch.of(task.kernel, strict=True).rules)))
    return out


@pytest.mark.parametrize("builder", [lstm_classifier, gru_speech])
def test_each_layer_is_a_tiled_projection_and_one_recurrence(builder):
    """2 bidirectional layers: two input projections (MatMul tasks the sketch tiles) and two
    recurrences, each one kernel over both directions and every step."""
    tasks = _tasks_by_op(builder(**SMALL[builder.__name__]))
    assert [calls for calls, _ in tasks["MatMul"]] == [1, 1]
    assert all("tiling" in rules for _, rules in tasks["MatMul"])
    assert sum(calls for calls, _ in tasks["Recurrence"]) == 2


def test_upsampling_conv_transposes_are_tiled_matmuls():
    """unet's k = s = 2 ConvTransposes are MatMuls (frontend/conv_transpose.py) the sketch tiles."""
    tasks = _tasks_by_op(unet(**SMALL["unet"]))
    assert "ConvTranspose" not in tasks
    assert len(tasks["MatMul"]) >= 2 and all("tiling" in rules for _, rules in tasks["MatMul"])
