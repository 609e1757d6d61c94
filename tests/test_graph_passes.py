"""Graph-level optimization: BatchNorm folding, dropped aliases, kernel fusion (in the ONNX
layouts: test_layout.py checks the blocked ones).

test_models.py checks the nine light models and the BERT layer against ONNX Runtime with all of
this on (the default); here small graphs pin down what is fused and what is not, each checked
against ONNX Runtime too.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor.frontend.graph_passes import batchnorm_affine, fold_into_conv
from nestor.ir import structural_hash
from nestor.zoo import encoder_block, light_model
from tests.test_models import assert_close_to_ort

RNG = np.random.default_rng(0)
C = 8  # channels of the small conv graphs


def make_model(nodes, inputs: dict, outputs: dict, inits: dict, dtypes: dict | None = None):
    dtypes = dtypes or {}

    def info(name, shape):
        return helper.make_tensor_value_info(name, dtypes.get(name, TensorProto.FLOAT), shape)
    graph = helper.make_graph(
        [helper.make_node(op, ins, outs, name=outs[0], **attrs) for op, ins, outs, attrs in nodes], "g",
        [info(n, s) for n, s in inputs.items()], [info(n, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def kernel_ops(model) -> list[str]:
    return [n.op_type for n in nestor.import_onnx(model, blocked=False).nodes if n.kernel is not None]


def check(model, expected_ops):
    """The model fuses into kernels of exactly `expected_ops` and still matches ONNX Runtime."""
    assert kernel_ops(model) == expected_ops
    assert_close_to_ort(model, nestor.compile(model, blocked=False))


def weights(shape, low=None):
    return (RNG.uniform(low, 1.5, shape) if low else RNG.standard_normal(shape) * 0.3).astype(np.float32)


def bn_params(prefix: str) -> dict:
    return {f"{prefix}_{k}": weights((C,), 0.5) for k in ("scale", "bias", "mean", "var")}


def bn(x, out, prefix):
    return ("BatchNormalization", [x] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")],
            [out], {"epsilon": 1e-3})


CONV = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
X = {"x": [1, C, 6, 6]}


# -- folding ----------------------------------------------------------------------------------

def test_batchnorm_folding_matches_numpy():
    w, b = weights((C, 3, 1, 1)), weights((C,))
    scale, bias, mean, var = (weights((C,), 0.5) for _ in range(4))
    x = weights((1, 3, 5, 5))
    conv = lambda w, b: np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[:, None, None]  # noqa: E731
    eps = 1e-3
    want = (scale[:, None, None] * (conv(w, b) - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps)
            + bias[:, None, None])
    w2, b2 = fold_into_conv(w, b, batchnorm_affine(scale, bias, mean, var, eps))
    assert w2.dtype == w.dtype and b2.dtype == w.dtype
    np.testing.assert_allclose(conv(w2, b2), want, rtol=1e-5, atol=1e-5)
    # a Mul and an Add after the BatchNormalization compose into the same fold
    aff = batchnorm_affine(scale, bias, mean, var, eps)
    both = aff.then(type(aff)(1, scale, np.zeros(1))).then(type(aff)(None, np.ones(1), np.array([0.25])))
    w3, b3 = fold_into_conv(w, None, both)
    want = (conv(w, np.zeros(C)) * aff.scale[:, None, None] + aff.shift[:, None, None]) * scale[:, None, None] + 0.25
    np.testing.assert_allclose(conv(w3, b3), want, rtol=1e-5, atol=1e-5)


def test_conv_batchnorm_relu_is_one_kernel():
    model = make_model([("Conv", ["x", "w"], ["c"], CONV), bn("c", "b", "bn"), ("Relu", ["b"], ["y"], {})],
                       X, {"y": [1, C, 6, 6]}, {"w": weights((C, C, 3, 3)), **bn_params("bn")})
    check(model, ["Conv+Relu"])


def test_batchnorm_mul_add_chains_fold():
    """Inception-v2's Conv → BN → Mul → Add → Relu folds into the conv; DenseNet's BN → Mul → Add
    → Relu on a tensor no conv makes becomes one Mul and one Add, fused with the Relu."""
    per_channel = {"s": weights((C, 1, 1), 0.5), "t": weights((C, 1, 1))}
    model = make_model([("Conv", ["x", "w"], ["c"], CONV), bn("c", "b", "bn1"), ("Mul", ["b", "s"], ["m"], {}),
                        ("Add", ["t", "m"], ["a"], {}), ("Relu", ["a"], ["y1"], {}),
                        bn("x", "b2", "bn2"), ("Mul", ["b2", "s"], ["m2"], {}), ("Add", ["m2", "t"], ["a2"], {}),
                        ("Relu", ["a2"], ["y2"], {})],
                       X, {"y1": [1, C, 6, 6], "y2": [1, C, 6, 6]},
                       {"w": weights((C, C, 3, 3)), **per_channel, **bn_params("bn1"), **bn_params("bn2")})
    check(model, ["Conv+Relu", "Mul+Add+Relu"])


def test_identity_and_dropout_are_dropped():
    model = make_model([("Conv", ["x", "w"], ["c"], CONV), ("Identity", ["c"], ["i"], {}),
                        ("Dropout", ["i"], ["d"], {}), ("Relu", ["d"], ["r"], {}), ("Identity", ["r"], ["y"], {})],
                       X, {"y": [1, C, 6, 6]}, {"w": weights((C, C, 3, 3))})
    graph = nestor.import_onnx(model, blocked=False)
    assert [n.op_type for n in graph.nodes] == ["Conv+Relu", "Identity"]  # an output stays itself
    assert_close_to_ort(model, nestor.compile(model, blocked=False))


# -- fusion -----------------------------------------------------------------------------------

def test_residual_add_is_fused():
    model = make_model([("Conv", ["x", "w1"], ["c1"], CONV), ("Relu", ["c1"], ["r1"], {}),
                        ("Conv", ["r1", "w2"], ["c2"], CONV), bn("c2", "b", "bn"), ("Add", ["b", "x"], ["s"], {}),
                        ("Relu", ["s"], ["y"], {})],
                       X, {"y": [1, C, 6, 6]},
                       {"w1": weights((C, C, 3, 3)), "w2": weights((C, C, 3, 3)), **bn_params("bn")})
    first, block = nestor.import_onnx(model, blocked=False).nodes
    assert (first.op_type, block.op_type) == ("Conv+Relu", "Conv+Add+Relu")
    assert block.inputs[0] == "r1" and block.inputs[-1] == "x" and len(block.kernel.inputs) == 4
    assert_close_to_ort(model, nestor.compile(model, blocked=False))


def test_tensor_with_two_readers_is_not_fused():
    """r is read by two consumers that stay apart (two outputs), so neither joins Conv+Relu; when
    both meet again in one consumer (a diamond), the whole diamond is one kernel."""
    nodes = [("Conv", ["x", "w"], ["c"], CONV), ("Relu", ["c"], ["r"], {}),
             ("Sigmoid", ["r"], ["y1"], {}), ("Tanh", ["r"], ["y2"], {})]
    shape, inits = [1, C, 6, 6], {"w": weights((C, C, 3, 3))}
    check(make_model(nodes, X, {"y1": shape, "y2": shape}, inits), ["Conv+Relu", "Sigmoid", "Tanh"])
    diamond = nodes[:2] + [("Sigmoid", ["r"], ["s"], {}), ("Tanh", ["r"], ["t"], {}),
                           ("Mul", ["s", "t"], ["y"], {})]
    check(make_model(diamond, X, {"y": shape}, inits), ["Conv+Relu+Sigmoid+Tanh+Mul"])


def test_producers_of_every_kind():
    """Pooling (with a divisor epilogue that the consumer merges into), Gemm through a Flatten
    alias (not fused across), elementwise chains that change dtype, and a reduction whose
    accumulator cannot change dtype (left apart)."""
    nodes = [("MaxPool", ["x"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
             ("Add", ["p", "bias"], ["pa"], {}),
             ("AveragePool", ["pa"], ["ap"], {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}),
             ("Mul", ["ap", "half"], ["am"], {}),
             ("Flatten", ["am"], ["f"], {}),
             ("Gemm", ["f", "g", "gb"], ["gm"], {"transB": 1}),
             ("Tanh", ["gm"], ["gt"], {}), ("Clip", ["gt", "lo", "hi"], ["y1"], {}),
             ("Add", ["x", "bias"], ["e"], {}), ("Relu", ["e"], ["er"], {}),
             ("Cast", ["er"], ["y2"], {"to": TensorProto.DOUBLE}),
             ("MatMul", ["x", "mm"], ["xm"], {}), ("Cast", ["xm"], ["y3"], {"to": TensorProto.DOUBLE})]
    inits = {"bias": weights((C, 1, 1)), "half": np.float32(0.5), "g": weights((5, C * 16)),
             "gb": weights((5,)), "lo": np.float32(-0.5), "hi": np.float32(0.5), "mm": weights((6, 6))}
    model = make_model(nodes, X, {"y1": [1, 5], "y2": [1, C, 6, 6], "y3": [1, C, 6, 6]}, inits,
                       {"y2": TensorProto.DOUBLE, "y3": TensorProto.DOUBLE})
    check(model, ["MaxPool+Add", "AveragePool+Mul", "Gemm+Tanh+Clip", "Add+Relu+Cast", "MatMul", "Cast"])


def test_bert_gelu_chain_and_residuals_fuse_into_matmuls():
    ops = kernel_ops(encoder_block(seq=16, hidden=64, heads=4, ffn=128))
    assert "MatMul+Add+Div+Erf+Add+Mul+Mul" in ops  # bias and Erf GELU
    assert ops.count("MatMul+Add+Add") == 2       # bias and residual
    assert "MatMul+Div+Add" in ops                # attention scale and mask


def test_resnet50_has_fewer_kernels_than_onnx_nodes():
    model = light_model("resnet50")
    plain = nestor.import_onnx(model, optimize=False)
    graph = nestor.import_onnx(model)
    kernels = [n.kernel for n in graph.nodes if n.kernel is not None]
    distinct = {structural_hash(k) for k in kernels}
    print(f"resnet50: {len(model.graph.node)} ONNX nodes, {len(plain.kernels())} kernels unoptimized, "
          f"{len(kernels)} optimized ({len(distinct)} distinct)")
    assert len(kernels) < len(model.graph.node) / 2
    assert not any("BatchNormalization" in n.op_type for n in graph.nodes)
    assert sum(n.op_type == "ConvNCHWc+Sum+Relu" for n in graph.nodes) == 16  # every residual block
    assert len(distinct) <= len(kernels) / 2  # equal fused kernels still share a hash
