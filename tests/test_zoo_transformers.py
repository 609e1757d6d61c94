"""The transformer zoo (nestor/zoo_transformers.py): valid ONNX, the ops each family is known by,
and Nestor's default-schedule build against ONNX Runtime."""
import time

import numpy as np
import onnx
import pytest

import nestor
from nestor.zoo_transformers import TRANSFORMER_MODELS
from tests.test_models import assert_close_to_ort

# What PyTorch's exporter writes for each family (the point of building them this way).
SIGNATURE_OPS = {
    "vit_small": {"Conv", "Concat", "Gather", "Gemm", "Erf", "LayerNormalization", "Softmax"},
    "distilbert_77": {"Equal", "Expand", "Where", "Erf", "LayerNormalization", "Softmax"},
    "distilbert_384": {"Equal", "Expand", "Where", "Erf", "LayerNormalization", "Softmax"},
    "gpt2_77": {"Split", "Pow", "Tanh", "LayerNormalization", "Softmax"},
    "llama_mlp_77": {"Cast", "Pow", "ReduceMean", "Sqrt", "Div", "Sigmoid"},
}

SLOW: set[str] = set()  # models too slow to compile for the default run (none since Pow(x, 3) is x*x*x)


def test_every_model_has_a_signature():
    assert set(SIGNATURE_OPS) == set(TRANSFORMER_MODELS)


@pytest.mark.parametrize("name", sorted(TRANSFORMER_MODELS))
def test_model_is_valid_onnx_with_its_family_ops(name):
    model = TRANSFORMER_MODELS[name]()
    assert model.opset_import[0].version == 17
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                 data_prop=True)
    out = inferred.graph.output[0].type.tensor_type.shape
    assert out.dim[0].dim_value == 1 and all(d.dim_value > 0 for d in out.dim)   # batch 1, static
    assert SIGNATURE_OPS[name] <= {n.op_type for n in model.graph.node}


def test_models_are_seeded():
    a, b = TRANSFORMER_MODELS["llama_mlp_77"](), TRANSFORMER_MODELS["llama_mlp_77"]()
    assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(TRANSFORMER_MODELS)])
def test_model_matches_onnxruntime(name):
    model = TRANSFORMER_MODELS[name]()
    start = time.perf_counter()
    compiled = nestor.compile(model)
    print(f"{name}: compiled in {time.perf_counter() - start:.1f} s")
    if "attention_mask" in compiled.plan["inputs"]:   # int64 in 0..7: some keys are padding
        mask = compiled.random_inputs(seed=1)["attention_mask"]
        assert 0 < np.count_nonzero(mask == 0) < mask.size
    assert_close_to_ort(model, compiled)
