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


REUSED = ("resnet50", "squeezenet")   # compiled once here, read by several tests
# VGG19's layers (3x3 convs, ReLU, max pools, Gemm, dropout, softmax) are all in AlexNet's, whose
# weights are a third of VGG19's 548 MB: the default run leaves VGG19 to the slow tests.
LIGHT_MODEL_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name == "vgg19" else name
                      for name in LIGHT_MODELS]


@pytest.fixture(scope="module")
def reused() -> dict:
    """name -> (model, its compiled module): a compile takes seconds, so tests share it."""
    return {name: (model, nestor.compile(model)) for name in REUSED for model in [light_model(name, seed=0)]}


@pytest.mark.parametrize("name", LIGHT_MODEL_PARAMS)
def test_light_model_matches_onnxruntime(name, request):
    if name in REUSED:
        model, compiled = request.getfixturevalue("reused")[name]
    else:
        model = light_model(name, seed=0)
        compiled = nestor.compile(model)
    assert_close_to_ort(model, compiled)


def test_encoder_block_matches_onnxruntime():
    model = encoder_block(seq=32, hidden=64, heads=4, ffn=128)
    assert_close_to_ort(model, nestor.compile(model))


def test_saved_model_reloads_and_gives_same_output(tmp_path, reused):
    _, compiled = reused["squeezenet"]
    inputs = compiled.random_inputs(seed=3)
    path = tmp_path / "squeezenet.nestor"
    compiled.save(str(path))
    loaded = nestor.load(str(path))
    for a, b in zip(compiled.run(inputs), loaded.run(inputs)):
        np.testing.assert_array_equal(a, b)


def test_memory_plan_reuses_intermediates(reused):
    _, compiled = reused["resnet50"]
    plan = compiled.plan
    assert plan["arena_bytes"] < plan["naive_bytes"] / 4


def test_identical_kernels_are_compiled_once(reused):
    _, compiled = reused["resnet50"]
    assert compiled.num_kernels <= len(compiled.plan["steps"]) / 2


def test_exported_style_encoder_matches_onnxruntime():
    from nestor.zoo import exported_encoder
    model = exported_encoder()
    compiled = nestor.compile(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "Slice", "Where", "Cast", "Expand", "ReduceMean", "Pow"} <= ops
    assert_close_to_ort(model, compiled)
