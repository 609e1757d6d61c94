"""NN, linear-algebra and reduction lowerings checked against onnx.reference, one node at a time."""
import numpy as np
import pytest
from onnx import helper

import nestor
from nestor import codegen
from nestor.frontend.ops import UnsupportedOpError
from nestor.ir import parse_kernel, print_kernel, verify
from tests.op_harness import check_node, run_nestor_node, run_reference, single_node_model


@pytest.fixture(autouse=True)
def checked_kernels(monkeypatch):
    """Every kernel these lowerings emit must pass the verifier and print / parse back to itself."""
    run = codegen.run_kernel

    def run_checked(kernel, inputs):
        verify(kernel)
        assert parse_kernel(print_kernel(kernel)) == kernel
        return run(kernel, inputs)
    monkeypatch.setattr(codegen, "run_kernel", run_checked)


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def node(op, inputs, outputs=("Y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


# -- Conv -------------------------------------------------------------------------------------

CONV_CASES = [
    # (X shape, W shape, with bias, attrs)
    ((1, 3, 6, 6), (4, 3, 3, 3), True, {}),
    ((2, 3, 7, 6), (4, 3, 3, 3), False, dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ((1, 2, 9, 8), (3, 2, 3, 2), True, dict(dilations=[2, 1], pads=[0, 1, 2, 0])),
    ((2, 4, 5, 5), (6, 2, 3, 3), True, dict(group=2, pads=[1, 1, 1, 1])),
    ((1, 3, 6, 6), (3, 1, 3, 3), True, dict(group=3, strides=[2, 1], pads=[1, 0, 1, 2])),
    ((1, 2, 7, 7), (3, 2, 3, 3), False, dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 2, 6, 6), (3, 2, 2, 2), True, dict(auto_pad="SAME_LOWER")),
    ((1, 2, 7, 6), (3, 2, 3, 3), True, dict(auto_pad="VALID", strides=[2, 2])),
    ((2, 3, 10), (4, 3, 3), True, dict(pads=[2, 1], dilations=[2])),
    ((1, 2, 4, 5, 4), (2, 2, 2, 3, 2), True, dict(pads=[1, 0, 1, 0, 1, 1])),
]


@pytest.mark.parametrize("xs, ws, bias, attrs", CONV_CASES)
def test_conv(xs, ws, bias, attrs):
    inputs = {"X": rand(*xs), "W": rand(*ws, seed=1)}
    if bias:
        inputs["B"] = rand(ws[0], seed=2)
    check_node(node("Conv", inputs, **attrs), inputs, opset=11, rtol=1e-4, atol=1e-4)


CONV_TRANSPOSE_CASES = [
    # (X shape, W shape (C, M / group, k...), with bias, attrs)
    ((1, 3, 4, 4), (3, 2, 3, 3), True, dict(strides=[2, 2], pads=[1, 0, 1, 1])),
    ((2, 4, 3, 5), (4, 3, 2, 3), False, dict(group=2, dilations=[2, 1], output_padding=[0, 1],
                                             strides=[1, 2])),
    ((1, 2, 5), (2, 2, 3), True, dict(auto_pad="SAME_LOWER", strides=[2])),
    ((1, 2, 3, 3), (2, 1, 3, 3), True, dict(auto_pad="SAME_UPPER", strides=[3, 2],
                                            output_shape=[9, 6])),
    # kernel <= stride: one tap per output point (its phase); a UNet's k = s, grouped, 1x1
    ((1, 4, 3, 3), (4, 2, 2, 2), True, dict(strides=[2, 2])),
    ((2, 4, 3, 2), (4, 3, 2, 3), False, dict(group=2, strides=[2, 3])),
    ((1, 3, 4), (3, 2, 1), True, {}),
    ((1, 4, 3, 3), (4, 2, 2, 2), True, dict(strides=[2, 2], output_padding=[1, 0])),
    ((1, 4, 3, 4), (4, 3, 2, 1), True, dict(group=2, strides=[3, 2], pads=[1, 0, 0, 0],
                                            output_padding=[2, 1])),
]


@pytest.mark.parametrize("xs, ws, bias, attrs", CONV_TRANSPOSE_CASES)
def test_conv_transpose(xs, ws, bias, attrs):
    """Against ONNX Runtime: onnx.reference's ConvTranspose fails on groups."""
    ort = pytest.importorskip("onnxruntime")
    inputs = {"X": rand(*xs), "W": rand(*ws, seed=1)}
    if bias:
        inputs["B"] = rand(ws[1] * attrs.get("group", 1), seed=2)
    model = single_node_model(node("ConvTranspose", inputs, **attrs), inputs, opset=22)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, inputs)[0]
    np.testing.assert_allclose(run_nestor_node(node("ConvTranspose", inputs, **attrs), inputs,
                                               opset=22)[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_painting_blocks_is_a_matmul(bias):
    """Kernel = stride, constant weights, no pads: a MatMul and a block layout (frontend/
    conv_transpose.py), against ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    x = {"X": rand(2, 3, 4, 5)}
    consts = {"W": rand(3, 4, 2, 3, seed=1), **({"B": rand(4, seed=2)} if bias else {})}
    model = single_node_model(node("ConvTranspose", ["X", *consts], strides=[2, 3]), x, consts, opset=17)
    assert {"MatMul", "Transpose"} <= {n.op_type for n in nestor.import_onnx(model).nodes}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(nestor.compile(model).run(x)[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("equation, shapes, dtype", [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], np.float32),
    ("ij,jk", [(3, 4), (4, 2)], np.float32),            # implicit output: ik
    ("...ii->...i", [(2, 3, 4, 4)], np.float32),        # a diagonal under an ellipsis
    ("i,j->ij", [(3,), (4,)], np.float16),
    ("...j,kj->...k", [(2, 3, 4), (5, 4)], np.float64),
    ("ii", [(3, 3)], np.int32),                          # the trace
])
def test_einsum(equation, shapes, dtype):
    inputs = {f"x{i}": (rand(*s, seed=i) * 4).astype(dtype) for i, s in enumerate(shapes)}
    got = run_nestor_node(node("Einsum", list(inputs), equation=equation), inputs, opset=12)[0]
    want = np.einsum(equation, *inputs.values())
    np.testing.assert_allclose(got, want, rtol=1e-3 if dtype == np.float16 else 1e-5)


# Reflection is the costly padding to compile (a long expression for each coordinate of each
# tap; cubic reads 16 taps, a volume 8): the default run reflects with nearest and linear 2-D
# sampling (both align_corners), cubic pads with zeros, the volumetric case clamps to the border.
@pytest.mark.parametrize("mode, padding_mode, align_corners", [
    ("nearest", "zeros", 0), ("linear", "border", 1), ("linear", "reflection", 0),
    ("nearest", "reflection", 1), ("cubic", "zeros", 0),
    pytest.param("cubic", "reflection", 1, marks=pytest.mark.slow)])
def test_grid_sample(mode, padding_mode, align_corners):
    grid = (rand(2, 3, 4, 2, seed=1) - 0.5) * 7  # well past [-1, 1]: every padding rule is hit
    check_node(node("GridSample", ["X", "G"], mode=mode, padding_mode=padding_mode,
                    align_corners=align_corners), {"X": rand(2, 2, 4, 3), "G": grid}, opset=20,
               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_mode", ["border", pytest.param("reflection", marks=pytest.mark.slow)])
def test_grid_sample_volumetric(padding_mode):
    grid = (rand(1, 2, 3, 2, 3, seed=1) - 0.5) * 3
    check_node(node("GridSample", ["X", "G"], padding_mode=padding_mode),
               {"X": rand(1, 2, 3, 4, 2), "G": grid}, opset=20, rtol=1e-4, atol=1e-4)


def test_col2im():
    # image 5x6, blocks 2x3, dilations (2, 1), strides (1, 2), pads (1, 0, 0, 1): 4 x 3 blocks
    consts = {"image": np.array([5, 6], np.int64), "block": np.array([2, 3], np.int64)}
    check_node(node("Col2Im", ["X", "image", "block"], dilations=[2, 1], strides=[1, 2],
                    pads=[1, 0, 0, 1]), {"X": rand(2, 2 * 6, 4 * 3)}, consts, opset=18)


def test_conv_float64():
    inputs = {"X": rand(1, 2, 5, 5, dtype=np.float64), "W": rand(2, 2, 3, 3, dtype=np.float64)}
    check_node(node("Conv", inputs, pads=[1, 1, 1, 1]), inputs, opset=9)


# -- pooling ----------------------------------------------------------------------------------

POOL_CASES = [
    ("MaxPool", 12, dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("MaxPool", 12, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", 12, dict(kernel_shape=[2, 3], dilations=[2, 1], pads=[1, 0, 0, 1])),
    ("MaxPool", 12, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", 12, dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("MaxPool", 10, dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER")),
    ("AveragePool", 11, dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("AveragePool", 11, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", 11, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 2, 1, 0],
                             count_include_pad=1)),
    ("AveragePool", 11, dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", 11, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                             ceil_mode=1, count_include_pad=1)),
    ("AveragePool", 11, dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("AveragePool", 19, dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])),
    ("LpPool", 22, dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])),
    ("LpPool", 22, dict(kernel_shape=[2, 2], p=3, dilations=[2, 1], pads=[1, 0, 0, 1])),
    ("LpPool", 22, dict(kernel_shape=[2, 2], p=3, auto_pad="SAME_UPPER")),
    ("LpPool", 22, dict(kernel_shape=[2, 3], p=1)),
]


@pytest.mark.parametrize("p, axis", [(1, 0), (2, -1), (2, 1)])
def test_lp_normalization(p, axis):
    x = rand(3, 4, 2)
    x[1, :, 0] = 0  # a zero norm along axis 1 gives 0, not NaN
    norm = (np.abs(x) ** p).sum(axis, keepdims=True) ** (1 / p)  # onnx.reference omits abs for p=1
    want = np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm))
    got = run_nestor_node(node("LpNormalization", ["X"], p=p, axis=axis), {"X": x}, opset=22)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, opset, attrs", POOL_CASES)
def test_pool(op, opset, attrs):
    inputs = {"X": rand(2, 3, 8, 7)}
    check_node(node(op, ["X"], **attrs), inputs, opset=opset)


@pytest.mark.parametrize("op, xs, dtype, attrs", [
    ("MaxPool", (1, 2, 9), np.float64, dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    # onnx.reference pads int inputs with NaN (an error) unless strides take its other path
    ("MaxPool", (1, 2, 6, 6), np.int8, dict(kernel_shape=[2, 2], strides=[2, 2],
                                            pads=[1, 1, 0, 0])),
    ("AveragePool", (1, 2, 4, 5, 4), np.float32, dict(kernel_shape=[2, 3, 2], pads=[1] * 6)),
])
def test_pool_other_ranks_and_types(op, xs, dtype, attrs):
    x = rand(*xs, dtype=np.float32) * 40
    check_node(node(op, ["X"], **attrs), {"X": x.astype(dtype)}, opset=12)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op):
    check_node(node(op, ["X"]), {"X": rand(2, 3, 5, 4)})


# onnx.reference computes Indices only on its strided / dilated path (stride 1 everywhere
# takes a path that returns Y alone), so every case here has a stride or dilation != 1.
@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("xs, attrs", [
    ((2, 3, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 7, 6), dict(kernel_shape=[2, 3], dilations=[2, 1], pads=[1, 0, 0, 1])),
    ((2, 3, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ((1, 2, 4, 5, 3), dict(kernel_shape=[2, 2, 2], strides=[1, 2, 1], pads=[1, 0, 1, 0, 1, 1])),
    ((2, 2, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
])
def test_maxpool_indices(xs, attrs, storage_order):
    """Indices: flat positions in X (batch and channel included), column-major over the
    spatial dims when storage_order=1."""
    n = node("MaxPool", ["X"], ["Y", "I"], storage_order=storage_order, **attrs)
    check_node(n, {"X": rand(*xs)}, opset=12)


@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices_ties_take_the_first_tap(storage_order):
    x = np.round(rand(1, 2, 6, 6) * 1.5).astype(np.float32)
    n = node("MaxPool", ["X"], ["Y", "I"], kernel_shape=[3, 3], strides=[1, 2],
             storage_order=storage_order)
    check_node(n, {"X": x}, opset=12)


# -- normalizations ---------------------------------------------------------------------------

@pytest.mark.parametrize("opset, shape", [(9, (2, 3, 4, 5)), (15, (3, 4))])
def test_batchnorm(opset, shape):
    """Inference mode at every opset; onnx.reference's BatchNormalization_9 always blends in
    the batch statistics (momentum defaults to 0.9), so the expected value is opset 15's."""
    c = shape[1]
    inputs = {"X": rand(*shape), "S": rand(c, seed=1), "B": rand(c, seed=2),
              "M": rand(c, seed=3), "V": np.abs(rand(c, seed=4)) + 0.5}
    n = node("BatchNormalization", inputs, epsilon=1e-3)
    got = run_nestor_node(n, inputs, opset=opset)[0]
    np.testing.assert_allclose(got, run_reference(n, inputs, opset=15)[0], rtol=1e-5, atol=1e-5)


def test_batchnorm_training_unsupported():
    inputs = {n: rand(*s) for n, s in
              [("X", (2, 3, 4)), ("S", (3,)), ("B", (3,)), ("M", (3,)), ("V", (3,))]}
    with pytest.raises(UnsupportedOpError, match="BatchNormalization.*training_mode"):
        n = node("BatchNormalization", inputs, ["Y", "RM", "RV"], training_mode=1)
        run_nestor_node(n, inputs, opset=15)


# onnx.reference's LRN loops over range(N) instead of range(C): N == C keeps it right.
@pytest.mark.parametrize("size, attrs", [(3, {}), (4, dict(alpha=0.01, beta=0.5, bias=2.0))])
def test_lrn(size, attrs):
    check_node(node("LRN", ["X"], size=size, **attrs), {"X": rand(5, 5, 3, 4)}, opset=13)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7)])
def test_instancenorm(shape):
    inputs = {"X": rand(*shape), "S": rand(shape[1], seed=1), "B": rand(shape[1], seed=2)}
    check_node(node("InstanceNormalization", inputs, epsilon=1e-4), inputs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis, bias, outputs", [
    (-1, True, ("Y",)), (1, False, ("Y", "Mean", "InvStd")), (-2, True, ("Y", "Mean")),
])
def test_layernorm(axis, bias, outputs):
    x = rand(2, 3, 4) * 3 + 1
    inputs = {"X": x, "S": rand(*x.shape[axis:], seed=1)}
    if bias:
        inputs["B"] = rand(x.shape[-1], seed=2)
    n = node("LayerNormalization", inputs, outputs, axis=axis, epsilon=1e-3)
    check_node(n, inputs, rtol=1e-4, atol=1e-4)


# -- softmax family ---------------------------------------------------------------------------

SOFTMAX_OPS = ["Softmax", "LogSoftmax", "Hardmax"]


def _softmax_input(op):
    x = rand(2, 3, 4) * 5
    return np.round(x) if op == "Hardmax" else x  # ties: the first maximum wins


@pytest.mark.parametrize("op", SOFTMAX_OPS)
@pytest.mark.parametrize("opset, axis", [(13, None), (13, 1), (11, 2)])
def test_softmax(op, opset, axis):
    attrs = {} if axis is None else {"axis": axis}
    check_node(node(op, ["X"], **attrs), {"X": _softmax_input(op)}, opset=opset)


@pytest.mark.parametrize("op", SOFTMAX_OPS)
def test_softmax_before_opset13_coerces_to_2d(op):
    """Opset < 13 normalizes over all dims from axis on. onnx.reference applies the opset-13
    rule to every opset, so the expected value comes from the 2-D view at opset 13."""
    x = _softmax_input(op)
    got = run_nestor_node(node(op, ["X"]), {"X": x}, opset=11)[0]
    want = run_reference(node(op, ["X"], axis=1), {"X": x.reshape(2, 12)}, opset=13)[0]
    np.testing.assert_allclose(got, want.reshape(x.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target, exps", [("cpu", 1), ("cuda", 2)])
def test_softmax_computes_exp_once_per_element_on_a_cpu(target, exps):
    """On a CPU the exps are stored once and read by the sum and the division; on a GPU, where
    exp is cheap and memory traffic is not, each is computed again in the division."""
    model = single_node_model(node("Softmax", ["X"], axis=-1), {"X": rand(4, 32)}, opset=17)
    (kernel,) = [n.kernel for n in nestor.import_onnx(model, target=target).nodes if n.kernel is not None]
    assert print_kernel(kernel).count("exp(") == exps


# -- Gemm and MatMul --------------------------------------------------------------------------

@pytest.mark.parametrize("ta, tb, alpha, beta, c_shape", [
    (0, 0, 1.0, 1.0, None),
    (1, 0, 0.5, 1.0, (5,)),
    (0, 1, 1.0, 2.0, (3, 1)),
    (1, 1, 1.5, 0.5, (3, 5)),
    (0, 0, 1.0, 1.0, ()),
])
def test_gemm(ta, tb, alpha, beta, c_shape):
    a, b = rand(*((4, 3) if ta else (3, 4))), rand(*((5, 4) if tb else (4, 5)), seed=1)
    inputs = {"A": a, "B": b}
    if c_shape is not None:
        inputs["C"] = rand(*c_shape, seed=2)
    n = node("Gemm", inputs, transA=ta, transB=tb, alpha=alpha, beta=beta)
    check_node(n, inputs, opset=13)


@pytest.mark.parametrize("a_shape, b_shape, dtype", [
    ((3, 4), (4, 5), np.float32),
    ((4,), (4, 5), np.float32),
    ((3, 4), (4,), np.float32),
    ((4,), (4,), np.float64),
    ((2, 1, 3, 4), (5, 4, 2), np.float32),
    ((2, 3, 4), (4,), np.float32),
    ((2, 3, 4), (2, 4, 3), np.int32),
])
def test_matmul(a_shape, b_shape, dtype):
    inputs = {"A": (rand(*a_shape) * 4).astype(dtype),
              "B": (rand(*b_shape, seed=1) * 4).astype(dtype)}
    check_node(node("MatMul", ["A", "B"]), inputs, opset=13)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_float16_products_accumulate_in_float32(op):
    """numpy (and onnx.reference) multiply and add float16 in float32 and round once; a float16
    accumulator drifts by several ulps over k = 512."""
    a, b = rand(8, 512, dtype=np.float16), rand(512, 6, seed=1, dtype=np.float16)
    got = run_nestor_node(node(op, ["A", "B"]), {"A": a, "B": b}, opset=13)[0]
    want = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float16)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-3,
                               atol=2e-2)
    assert np.mean(got == want) > 0.9  # round-once: nearly all exactly the rounded true sum


def test_float16_conv_and_reduce_sum_accumulate_in_float32():
    x, w = rand(1, 64, 5, 5, dtype=np.float16), rand(2, 64, 3, 3, seed=1, dtype=np.float16)
    got = run_nestor_node(node("Conv", ["X", "W"]), {"X": x, "W": w}, opset=11)[0]
    want = run_reference(node("Conv", ["X", "W"]), {"X": x, "W": w}, opset=11)[0]
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3,
                               atol=1e-2)
    s = rand(4, 2000, dtype=np.float16)
    got = run_nestor_node(node("ReduceSum", ["X"], keepdims=0, axes=[1]), {"X": s}, opset=11)[0]
    np.testing.assert_array_equal(got, s.astype(np.float32).sum(axis=1).astype(np.float16))


# -- reductions -------------------------------------------------------------------------------

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _reduce(op, x, opset, axes, **attrs):
    """Axes as attribute before the opset that made them an input, as a constant after."""
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    consts = {"axes": np.array(axes, np.int64)} if as_input and axes is not None else {}
    if axes is not None and not as_input:
        attrs["axes"] = axes
    n = node(op, ["X"] + (["axes"] if consts else []), **attrs)
    # positive inputs keep the logs defined; long products stay small
    check_node(n, {"X": x}, consts, opset=opset, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("opset, axes, keepdims", [(11, [1], 1), (18, [0, -1], 0), (13, None, 1)])
def test_reduce(op, opset, axes, keepdims):
    x = np.abs(rand(3, 4, 5)) + 0.5
    _reduce(op, x, opset, axes, keepdims=keepdims)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceProd", "ReduceSumSquare"])
def test_reduce_int(op):
    x = (rand(3, 4) * 3).astype(np.int64)
    _reduce(op, x, 18, [1], keepdims=0)


@pytest.mark.parametrize("op, dtype", [("CumSum", np.float32), ("CumSum", np.int32),
                                       ("CumProd", np.float64)])
@pytest.mark.parametrize("exclusive, reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumulative(op, dtype, exclusive, reverse):
    x = (rand(2, 5, 3) * 3).astype(dtype)
    check_node(node(op, ["X", "axis"], exclusive=exclusive, reverse=reverse), {"X": x},
               {"axis": np.array(-2, np.int64)}, opset=26)


@pytest.mark.parametrize("largest, axis", [(1, -1), (0, 0), (1, 1)])
def test_top_k(largest, axis):
    x = np.round(rand(4, 6, 3) * 3)  # ties: the lower index comes first
    check_node(node("TopK", ["X", "K"], ["V", "I"], largest=largest, axis=axis),
               {"X": x}, {"K": np.array([3], np.int64)}, opset=11)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_bool(op, keepdims):
    """Opset 20 allows bool: ReduceMax is any, ReduceMin all."""
    x = rand(3, 4, 5) > 0.8
    x[0] = True
    x[1] = False
    _reduce(op, x, 20, [1, 2], keepdims=keepdims)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceL2"])
def test_reduce_noop_with_empty_axes(op):
    _reduce(op, rand(2, 3), 18, None, noop_with_empty_axes=1)


def test_reduce_all_to_scalar():
    _reduce("ReduceMean", rand(4, 6), 11, None, keepdims=0)


def test_reduce_axes_must_be_constant():
    n = node("ReduceSum", ["X", "axes"])
    inputs = {"X": rand(2, 3), "axes": np.array([1], np.int64)}
    with pytest.raises(UnsupportedOpError, match="ReduceSum.*opset 13.*constant"):
        run_nestor_node(n, inputs, opset=13)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis, keepdims, last", [(1, 1, 0), (-1, 0, 1), (0, 1, 1)])
def test_arg(op, axis, keepdims, last):
    x = np.round(rand(3, 4, 5) * 2).astype(np.float32)  # many ties
    n = node(op, ["X"], axis=axis, keepdims=keepdims, select_last_index=last)
    check_node(n, {"X": x}, opset=13)
