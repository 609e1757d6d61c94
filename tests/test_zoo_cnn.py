"""The built CNN zoo (nestor/zoo_cnn.py): valid ONNX, and compiled by Nestor (default schedule)
equal to ONNX Runtime on seeded random input (each compiles in seconds, so all run by default; the
variants are marked slow)."""
import onnx
import pytest

import nestor
from nestor.zoo_cnn import CNN_MODELS, mobilenet_v2

from .test_models import assert_close_to_ort


@pytest.mark.parametrize("name", list(CNN_MODELS))
def test_model_is_valid_onnx_with_full_shapes(name):
    model = CNN_MODELS[name]()
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for node in inferred.graph.node:  # every intermediate has a fully known static shape
        dims = known[node.output[0]].type.tensor_type.shape.dim
        assert dims and all(d.HasField("dim_value") for d in dims), node.name
    assert [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == [1, 1000]
    assert model.opset_import[0].version == 17 and model.graph.input[0].name == "input"


def test_models_are_seeded():
    a, b, c = mobilenet_v2(seed=0), mobilenet_v2(seed=0), mobilenet_v2(seed=1)
    assert a.SerializeToString() == b.SerializeToString() != c.SerializeToString()


def _conv_attr(model, name):
    return {tuple(a.ints) or a.i for n in model.graph.node if n.op_type == "Conv"
            for a in n.attribute if a.name == name}


def test_families_have_their_ops():
    models = {name: fn() for name, fn in CNN_MODELS.items()}
    ops = {name: {n.op_type for n in m.graph.node} for name, m in models.items()}
    assert {"Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"} <= ops["mobilenet_v2"]
    assert {"HardSwish", "HardSigmoid", "Mul", "Relu"} <= ops["mobilenet_v3_small"]
    assert {"Sigmoid", "Mul", "Add"} <= ops["efficientnet_b0"]
    assert {"MaxPool", "Relu", "Add"} <= ops["resnext50_32x4d"]
    assert {"Sigmoid", "Mul", "Relu", "Add"} <= ops["regnet_y_400mf"]
    for name in ("mobilenet_v3_small", "efficientnet_b0"):
        assert {(1, 1), (3, 3), (5, 5)} <= _conv_attr(models[name], "kernel_shape")
    assert _conv_attr(models["resnext50_32x4d"], "group") == {1, 32}
    assert {6, 13, 26, 55} <= _conv_attr(models["regnet_y_400mf"], "group")


@pytest.mark.parametrize("name", list(CNN_MODELS))
def test_model_matches_onnxruntime(name):
    model = CNN_MODELS[name]()
    assert_close_to_ort(model, nestor.compile(model))


@pytest.mark.slow
def test_reduced_depth_matches_onnxruntime():
    from nestor.zoo_cnn import regnet_y_400mf, resnext50_32x4d
    for model in (resnext50_32x4d(blocks=(1, 2, 2, 1)), regnet_y_400mf(depths=(1, 1, 2, 2))):
        assert_close_to_ort(model, nestor.compile(model))


@pytest.mark.slow
def test_batchnorm_form_matches_onnxruntime():
    """Conv + BatchNormalization, as PyTorch exports without constant folding."""
    model = mobilenet_v2(batchnorm=True)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 52
    assert_close_to_ort(model, nestor.compile(model))
