"""Whole models against ONNX Runtime: the nine light CNNs (random weights) and a BERT layer."""
import numpy as np
import pytest

import nestor
from nestor.bench import ort_session
from nestor.zoo import LIGHT_MODELS, encoder_block, light_model


def assert_close_to_ort(model, compiled, rtol=1e-4):
    """Every output within `rtol` of ONNX Runtime's, relative to that output's largest value."""
    inputs = compiled.random_inputs(seed=1)
    want = ort_session(model).run(None, inputs)
    got = compiled.run(inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.all(np.isfinite(w)) and np.max(np.abs(w)) > 0, "degenerate reference output"
        err = np.max(np.abs(g - w)) / np.max(np.abs(w))
        assert err <= rtol, f"max error {err:.2e} relative to the largest output"


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_onnxruntime(name):
    model = light_model(name, seed=0)
    compiled = nestor.compile(model)
    assert_close_to_ort(model, compiled)


def test_encoder_block_matches_onnxruntime():
    model = encoder_block(seq=32, hidden=64, heads=4, ffn=128)
    assert_close_to_ort(model, nestor.compile(model))


def test_saved_model_reloads_and_gives_same_output(tmp_path):
    model = light_model("squeezenet")
    compiled = nestor.compile(model)
    inputs = compiled.random_inputs(seed=3)
    path = tmp_path / "squeezenet.nestor"
    compiled.save(str(path))
    loaded = nestor.load(str(path))
    for a, b in zip(compiled.run(inputs), loaded.run(inputs)):
        np.testing.assert_array_equal(a, b)


def test_memory_plan_reuses_intermediates():
    compiled = nestor.compile(light_model("resnet50"))
    plan = compiled.plan
    assert plan["arena_bytes"] < plan["naive_bytes"] / 4


def test_identical_kernels_are_compiled_once():
    compiled = nestor.compile(light_model("resnet50"))
    assert compiled.num_kernels <= len(compiled.plan["steps"]) / 2


def test_exported_style_encoder_matches_onnxruntime():
    from nestor.zoo import exported_encoder
    model = exported_encoder()
    compiled = nestor.compile(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "Slice", "Where", "Cast", "Expand", "ReduceMean", "Pow"} <= ops
    assert_close_to_ort(model, compiled)
