"""Elementwise and shape op lowerings, each checked against onnx.reference on one node."""
import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from nestor.frontend.ops import TensorInfo, UnsupportedOpError, lowering_for, make_context
from tests.op_harness import check_node, run_nestor_node

RNG = np.random.default_rng(0)


def rand(*shape, dtype="float32", lo=-2.0, hi=2.0):
    if np.dtype(dtype) == np.bool_:
        return RNG.random(shape) < 0.5
    if np.issubdtype(np.dtype(dtype), np.integer):
        return RNG.integers(int(lo), int(hi) + 1, shape).astype(dtype)
    return RNG.uniform(lo, hi, shape).astype(dtype)


class C:
    """A constant (initializer) input of a test node."""
    def __init__(self, value, dtype="int64"):
        self.value = np.asarray(value, dtype)


def case(op, args, opset=17, outs=1, id=None, tol=1e-5, **attrs):
    """A pytest param: node `op` over args (arrays, C constants, or None for an omitted input)."""
    names = ["" if a is None else f"a{k}" for k, a in enumerate(args)]
    inputs = {n: a for n, a in zip(names, args) if isinstance(a, np.ndarray)}
    consts = {n: a.value for n, a in zip(names, args) if isinstance(a, C)}
    node = helper.make_node(op, names, [f"y{k}" for k in range(outs)], **attrs)
    label = id or f"{op}-{opset}-" + "-".join(f"{k}={v}" for k, v in attrs.items())
    return pytest.param(node, inputs, consts, opset, tol, id=label)


def check(node, inputs, consts, opset, tol):
    check_node(node, inputs, consts, opset=opset, rtol=tol, atol=tol)


f32, i32, i64 = "float32", "int32", "int64"
NONZERO_I32 = np.array([[3, -3, 2], [-2, 5, 7]], "int32")

# numpy.mod's edge cases (ONNX's test_mod_float_edge_cases): signed zeros, infinite divisors
# (a finite dividend keeps or crosses to the divisor's sign), inf dividends, zero divisors, NaNs
MOD_X = np.array([0, -0.0, 0, -0.0, -3, 3, -1, 1, np.inf, -np.inf, 1, 1, np.nan, 1, 5.5, -5.5], f32)
MOD_Y = np.array([-2, 2, 2, -2, np.inf, np.inf, -np.inf, -np.inf, 2, 2, 0, -0.0, 2, np.nan,
                  -2, 2], f32)

ARITH = [
    case("Add", [rand(2, 3, 4), rand(4)]),
    case("Add", [rand(2, 1, dtype=i64, lo=-9, hi=9), rand(3, dtype=i64, lo=-9, hi=9)],
         id="Add-i64"),
    case("Sub", [rand(3, 1, dtype="float64"), rand(1, 4, dtype="float64")], id="Sub-f64"),
    case("Mul", [rand(2, 3, dtype=i32, lo=-9, hi=9), rand(dtype=i32, lo=-9, hi=9)], id="Mul-i32"),
    case("Div", [rand(2, 3), rand(2, 3, lo=0.5)]),
    case("Div", [rand(2, 3, dtype=i32, lo=-20, hi=20), NONZERO_I32], id="Div-int-trunc"),
    case("Mod", [rand(2, 3, dtype=i32, lo=-20, hi=20), NONZERO_I32], id="Mod-int"),
    case("Mod", [rand(2, 3, dtype=i64, lo=-20, hi=20), NONZERO_I32.astype(i64)], fmod=1,
         id="Mod-int-fmod"),
    case("Mod", [rand(2, 3, lo=-5, hi=5), np.array([1.5, -2.0, 0.7], f32)], fmod=1),
    case("Mod", [MOD_X, MOD_Y], id="Mod-float-edge-cases"),
    case("Mod", [MOD_X.astype("float64"), MOD_Y.astype("float64")], id="Mod-f64-edge-cases"),
    case("Mod", [MOD_X.astype("float16"), MOD_Y.astype("float16")], tol=1e-3,
         id="Mod-f16-edge-cases"),
    case("Mod", [MOD_X, MOD_Y], fmod=1, id="Mod-fmod-edge-cases"),
    case("Pow", [rand(2, 3), C(2.0, f32)], id="Pow-square"),
    case("Pow", [rand(2, 3), C(3.0, f32)], id="Pow-cube"),  # negative bases: x * x * x keeps the sign
    case("Pow", [rand(2, 3), C(4.0, f32)], id="Pow-fourth"),
    case("Pow", [rand(2, 3, lo=0.1), C(0.5, f32)], id="Pow-sqrt"),
    case("Pow", [rand(2, 3, lo=0.1), C(1.7, f32)], id="Pow-const"),
    case("Pow", [rand(2, 3, lo=0.1), rand(3)], id="Pow-tensor"),
    case("Pow", [rand(2, 3, dtype=i32, lo=-5, hi=5), C(3, i64)], opset=15, id="Pow-int"),
    case("PRelu", [rand(2, 3, 4), rand(3, 1)]),
    case("Max", [rand(2, 3), rand(3), rand(1, 1)]),
    case("Min", [rand(2, 3, dtype=i32, lo=-9, hi=9), rand(3, dtype=i32, lo=-9, hi=9)],
         id="Min-i32"),
    case("Sum", [rand(2, 3), rand(2, 1), rand(3)]),
    case("Sum", [rand(4)], id="Sum-single"),
    case("Mean", [rand(2, 3), rand(3), rand(2, 3)]),
    case("Add", [rand(2, 3, dtype="uint8", lo=0, hi=100), rand(3, dtype="uint8", lo=0, hi=100)],
         id="Add-u8"),
    case("Mul", [rand(2, 3, dtype="float16"), rand(3, dtype="float16")], tol=1e-3, id="Mul-f16"),
    case("Where", [rand(2, 3, dtype=bool), rand(3), rand(2, 1)]),
    case("Where", [rand(3, dtype=bool), rand(2, 3, dtype=i64), rand(dtype=i64)], id="Where-i64"),
]

LOGIC = [
    case("Equal", [rand(2, 3, dtype=i64, lo=0, hi=2), rand(3, dtype=i64, lo=0, hi=2)]),
    case("Equal", [rand(4, dtype=bool), rand(4, dtype=bool)], id="Equal-bool"),
    case("Less", [rand(2, 3), rand(3)]),
    case("LessOrEqual", [rand(2, 3, dtype=i32, lo=0, hi=3), rand(2, 1, dtype=i32, lo=0, hi=3)]),
    case("Greater", [rand(2, 3), rand(1)]),
    case("GreaterOrEqual", [rand(4, dtype=i64, lo=0, hi=2), rand(4, dtype=i64, lo=0, hi=2)]),
    case("Not", [rand(2, 3, dtype=bool)]),
    case("And", [rand(2, 3, dtype=bool), rand(3, dtype=bool)]),
    case("Or", [rand(2, 3, dtype=bool), rand(2, 1, dtype=bool)]),
    case("Xor", [rand(2, 3, dtype=bool), rand(2, 3, dtype=bool)], id="Xor"),
]

SHIFTS = np.array([0, 1, 7, 8, 9, -1], "int8")  # 8 and up, and negatives, shift every bit out
BITWISE = [
    case("BitwiseAnd", [rand(2, 3, dtype=i32, lo=-99, hi=99), rand(3, dtype=i32, lo=-99, hi=99)], opset=18),
    case("BitwiseOr", [rand(2, 3, dtype="uint8", lo=0, hi=255), rand(2, 1, dtype="uint8", lo=0, hi=255)],
         opset=18),
    case("BitwiseXor", [rand(4, dtype=i64, lo=-2**40, hi=2**40), rand(4, dtype=i64, lo=-9, hi=9)], opset=18),
    case("BitwiseNot", [rand(2, 3, dtype="uint16", lo=0, hi=65535)], opset=18, id="BitwiseNot-u16"),
    case("BitwiseNot", [rand(2, 3, dtype="int8", lo=-128, hi=127)], opset=18, id="BitwiseNot-i8"),
    case("BitShift", [rand(2, 3, dtype="uint32", lo=0, hi=2**32 - 1), rand(3, dtype="uint32", lo=0, hi=33)],
         opset=11, direction="RIGHT"),
    case("BitShift", [rand(2, 5, dtype="uint8", lo=0, hi=255), SHIFTS.astype("uint8")[:5]],
         opset=11, direction="LEFT", id="BitShift-u8-left-past-width"),
    case("BitShift", [np.array([-8, 4, -1, 5, -128, 127], "int8"), SHIFTS], opset=28, direction="RIGHT",
         id="BitShift-i8-right-out-of-range"),
    case("BitShift", [np.array([-8, 4, -1, 5, -128, 127], "int8"), SHIFTS], opset=28, direction="LEFT",
         id="BitShift-i8-left-out-of-range"),
]

SPECIAL = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5], [0.0, -0.0, 3.7, -3.7, 1e-3, -8.0]], f32)
UNARY = [case(op, [rand(2, 3, 4)]) for op in (
    "Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Abs", "Neg", "Softplus", "Softsign", "HardSwish",
    "Elu", "Selu", "Celu", "HardSigmoid", "LeakyRelu")] + [
    case("Sqrt", [rand(2, 3, lo=0.0)]),
    case("Log", [rand(2, 3, lo=0.1)]),
    case("Reciprocal", [rand(2, 3, lo=0.5)]),
    case("Floor", [SPECIAL]),
    case("Ceil", [SPECIAL]),
    case("Round", [SPECIAL]),
    case("Sign", [SPECIAL]),
    case("Sign", [rand(2, 3, dtype=i32, lo=-2, hi=2)], id="Sign-i32"),
    case("Relu", [rand(2, 3, dtype=i64, lo=-5, hi=5)], opset=14, id="Relu-i64"),
    case("Abs", [rand(2, 3, dtype=i32, lo=-5, hi=5)], id="Abs-i32"),
    case("Neg", [rand(2, 3, dtype=i64, lo=-5, hi=5)], id="Neg-i64"),
    case("Softplus", [np.array([-100.0, -1.0, 0.0, 1.0, 100.0], f32)], id="Softplus-extreme"),
    case("Mish", [rand(2, 3, 4, lo=-5, hi=5)], opset=18),
    case("Mish", [np.array([-100, -30, -9.98, -1e-3, 0, 4.9, 5.1, 30, 100], "float16")],
         opset=18, tol=1e-3, id="Mish-f16-extreme"),
    case("LeakyRelu", [rand(2, 3)], alpha=0.2),
    case("Elu", [rand(2, 3, dtype="float64")], alpha=0.5),
    case("Selu", [rand(2, 3)], alpha=1.5, gamma=2.0),
    case("Celu", [rand(2, 3)], alpha=0.7),
    case("HardSigmoid", [rand(2, 3, lo=-5, hi=5)], alpha=0.3, beta=0.4),
    case("Gelu", [rand(2, 3, 4)], opset=20),
    case("Sigmoid", [rand(2, 3, dtype="float16")], tol=1e-3, id="Sigmoid-f16"),
    case("Gelu", [rand(2, 3, 4)], opset=20, approximate="tanh"),
    case("IsInf", [np.array([1.0, np.nan, np.inf, -np.inf], f32)], opset=20),
    case("IsInf", [np.array([1.0, np.nan, np.inf, -np.inf], f32)], opset=20, detect_negative=0),
    case("IsNaN", [np.array([1.0, np.nan, np.inf, -np.inf, 0.0], f32)], opset=20),
    case("Shrink", [rand(2, 3, 4)], opset=9),
    case("Shrink", [rand(2, 3, 4)], opset=9, lambd=1.5, bias=0.5),
    case("ThresholdedRelu", [rand(2, 3, 4)], opset=22, alpha=0.5),
    case("Swish", [rand(2, 3, 4, lo=-6, hi=6)], opset=24, alpha=1.5),
]

CLIP = [
    case("Clip", [rand(2, 3)], opset=6, min=-0.5, max=0.5),
    case("Clip", [rand(2, 3)], opset=9, min=-0.5),
    case("Clip", [rand(2, 3), C(-0.5, f32), C(0.5, f32)], opset=11, id="Clip-11-const"),
    case("Clip", [rand(2, 3), None, C(0.5, f32)], opset=13, id="Clip-13-max-only"),
    case("Clip", [rand(2, 3), np.array(-0.5, f32), np.array(1.0, f32)], opset=13,
         id="Clip-13-buffers"),
    case("Clip", [rand(2, 3, dtype=i32, lo=-9, hi=9), C(-3, i32), None], opset=13, id="Clip-i32"),
    case("Clip", [rand(2, 3)], opset=13, id="Clip-none"),
]

CAST = [
    case("Cast", [rand(2, 3, lo=-5, hi=5)], to=TensorProto.INT32),
    case("Cast", [rand(2, 3, lo=-5, hi=5)], to=TensorProto.INT64, opset=9),
    case("Cast", [np.array([0.0, -0.0, 0.5, -2.0, np.nan, np.inf], f32)], to=TensorProto.BOOL),
    case("Cast", [rand(2, 3, dtype=i32, lo=-2, hi=2)], to=TensorProto.BOOL, id="Cast-i32-bool"),
    case("Cast", [rand(2, 3, dtype=bool)], to=TensorProto.FLOAT, id="Cast-bool-f32"),
    case("Cast", [rand(2, 3, dtype=i64, lo=-99, hi=99)], to=TensorProto.FLOAT, opset=21),
    case("Cast", [rand(2, 3, dtype="float64")], to=TensorProto.FLOAT, opset=13),
    case("Cast", [rand(2, 3, dtype=i32, lo=0, hi=255)], to=TensorProto.UINT8, opset=19),
    case("CastLike", [rand(2, 3, lo=-5, hi=5), rand(1, dtype=i64)], opset=15),
    case("Cast", [np.array([0.1, -3.7, 1e5, 1e-8, np.inf, np.nan, 1 + 2**-8, 1 + 3 * 2**-8], f32)],
         to=TensorProto.BFLOAT16, opset=19, id="Cast-f32-bf16-nearest-even"),
    case("Cast", [rand(2, 3, lo=-5, hi=5).astype(ml_dtypes.bfloat16)], to=TensorProto.FLOAT, opset=19,
         id="Cast-bf16-f32"),
    case("Celu", [rand(2, 3, lo=-5, hi=5).astype(ml_dtypes.bfloat16)], opset=12, tol=1e-2, id="Celu-bf16"),
    # to sub-byte integers: floats truncated, 0 out of range (as ml_dtypes); integers wrapped
    *[case("Cast", [np.array([-9, -8.5, -8, -2.5, -0.5, 0, 1.9, 2.5, 3.5, 7.9, 8, 15.5, 16, np.nan], f32)],
           to=to, opset=21, id=f"Cast-f32-{TensorProto.DataType.Name(to)}")
      for to in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2)],
    case("Cast", [np.array([-100, -9, -8, -1, 0, 7, 8, 17, 100], i32)], to=TensorProto.INT4, opset=21,
         id="Cast-i32-int4-wraps"),
    case("Cast", [np.array([0, 1, 2, 3, 5, 6], "uint8")], to=TensorProto.UINT2, opset=21,
         id="Cast-u8-uint2-wraps"),
    case("Cast", [np.arange(-8, 8).astype(ml_dtypes.int4)], to=TensorProto.FLOAT, opset=21,
         id="Cast-int4-f32"),
    case("Cast", [np.arange(-2, 2).astype(ml_dtypes.int2)], to=TensorProto.INT8, opset=21, id="Cast-int2-i8"),
    case("CastLike", [rand(2, 3, lo=-5, hi=5), np.zeros(1, ml_dtypes.uint4)], opset=21, id="CastLike-uint4"),
    # to narrow floats: rounded to nearest even, saturated (or, without, to infinity or NaN)
    *[case("Cast", [np.array([0.3, -1.7, 1000, -1e6, 3e-3, 1e-9, np.inf, -np.inf, np.nan, 464, 465], f32)],
           to=to, opset=19, saturate=saturate,
           id=f"Cast-f32-{TensorProto.DataType.Name(to)}-saturate{saturate}")
      for to in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E4M3FNUZ,
                 TensorProto.FLOAT8E5M2FNUZ) for saturate in (1, 0)],
    case("Cast", [np.arange(256, dtype="uint8").view(ml_dtypes.float8_e5m2)], to=TensorProto.FLOAT16,
         opset=19, id="Cast-f8e5m2-f16"),
    case("Cast", [np.array([0.2, -0.8, 2.6, 5, 7, -100, np.nan], f32)], to=TensorProto.FLOAT4E2M1, opset=23,
         id="Cast-f32-f4e2m1"),
    case("Identity", [rand(2, 3)]),
    case("Dropout", [rand(2, 3)], opset=10, ratio=0.3),
    case("Dropout", [rand(2, 3), C(0.3, f32), C(False, bool)], opset=13, id="Dropout-13"),
]


@pytest.mark.parametrize("node, inputs, consts, opset, tol", ARITH + LOGIC + BITWISE + UNARY + CLIP
                         + CAST)
def test_elementwise(node, inputs, consts, opset, tol):
    check(node, inputs, consts, opset, tol)


def test_mod_zero_takes_the_divisor_sign():
    x, y = np.array([0.0, -0.0, 4.0, -4.0], f32), np.array([-2.0, 2.0, -2.0, 2.0], f32)
    got = run_nestor_node(helper.make_node("Mod", ["x", "y"], ["z"]), {"x": x, "y": y})[0]
    np.testing.assert_array_equal(np.signbit(got), np.signbit(np.mod(x, y)))


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-6), ("float64", 1e-13)])
def test_softplus_and_mish_keep_small_values_accurate(dtype, rtol):
    """log(1 + e^x) for x << 0 and tanh near 0 lose the small term; Softplus goes through a
    log1p series and Mish through a cancellation-free identity."""
    x = -np.logspace(-3, 1.4, 60).astype(dtype)
    x64 = x.astype(np.float64)
    want = {"Softplus": np.logaddexp(0, x64), "Mish": x64 * np.tanh(np.logaddexp(0, x64))}
    for op, w in want.items():
        got = run_nestor_node(helper.make_node(op, ["x"], ["y"]), {"x": x}, opset=18)[0]
        np.testing.assert_allclose(got, w, rtol=rtol)


TINY_TO_LARGE = np.logspace(-6, 1.5, 40)
TRIG = {  # op: (numpy function, inputs over its domain, both signs where it is odd)
    "Sin": (np.sin, np.concatenate([-TINY_TO_LARGE, TINY_TO_LARGE])),
    "Cos": (np.cos, np.linspace(-10, 10, 41)),
    "Tan": (np.tan, np.linspace(-1.5, 1.5, 41)),
    "Atan": (np.arctan, np.concatenate([-TINY_TO_LARGE, [0.0, 0.4, 0.42, 2.4, 2.42, 1e30]])),
    "Asin": (np.arcsin, np.concatenate([-np.logspace(-6, 0, 30), np.logspace(-6, 0, 30)])),
    "Acos": (np.arccos, np.concatenate([-np.logspace(-6, 0, 30), np.logspace(-6, 0, 30)])),
    "Sinh": (np.sinh, np.concatenate([-TINY_TO_LARGE, [0.0, 0.099, 0.101], TINY_TO_LARGE])),
    "Cosh": (np.cosh, np.concatenate([-TINY_TO_LARGE, TINY_TO_LARGE])),
    "Asinh": (np.arcsinh, np.concatenate([-TINY_TO_LARGE, TINY_TO_LARGE, [1e30]])),
    "Acosh": (np.arccosh, np.concatenate([1 + TINY_TO_LARGE, [1e30]])),
    "Atanh": (np.arctanh, np.concatenate([-np.logspace(-6, -1e-6, 30), np.logspace(-6, -1e-6, 30)])),
}


@pytest.mark.parametrize("op", TRIG)
def test_trigonometry_keeps_float32_accuracy(op):
    """Atan (and Asin, Acos) are a polynomial after argument reduction, Sinh a series near 0,
    Asinh and Atanh go through log1p: relative errors stay near float32's epsilon everywhere."""
    fn, x = TRIG[op]
    x = x.astype(f32)
    got = run_nestor_node(helper.make_node(op, ["x"], ["y"]), {"x": x}, opset=22)[0]
    np.testing.assert_allclose(got, fn(x.astype(np.float64)), rtol=2e-6, atol=1e-30)


X234 = rand(2, 3, 4)
SHAPE = [
    case("Reshape", [X234, C([0, -1])], id="Reshape-0-minus1"),
    case("Reshape", [X234, C([4, 3, 2])], opset=14, allowzero=1),
    case("Reshape", [rand(0, 3), C([0, 3])], opset=14, allowzero=1, id="Reshape-allowzero-empty"),
    case("Flatten", [X234], axis=0),
    case("Flatten", [X234], axis=-1, opset=13),
    case("Squeeze", [rand(2, 1, 3, 1)], opset=11, axes=[1]),
    case("Squeeze", [rand(2, 1, 3, 1), C([-1, 1])], opset=13, id="Squeeze-13"),
    case("Squeeze", [rand(1, 2, 1)], opset=13, id="Squeeze-all"),
    case("Unsqueeze", [rand(2, 3)], opset=11, axes=[0, 3]),
    case("Unsqueeze", [rand(2, 3), C([-1, 1])], opset=13, id="Unsqueeze-13"),
    case("Transpose", [X234]),
    case("Transpose", [X234], perm=[1, 2, 0]),
    case("Concat", [rand(2, 3), rand(2, 1), rand(2, 2)], axis=-1),
    case("Concat", [rand(1, 3, dtype=i64), rand(2, 3, dtype=i64)], axis=0, opset=11),
    case("Concat", [rand(2, 0), rand(2, 3)], axis=1, id="Concat-empty"),
    case("Split", [rand(6, 2)], outs=3, axis=0),
    case("Split", [rand(2, 5)], outs=2, axis=1, split=[2, 3], opset=11),
    case("Split", [rand(2, 5), C([1, 4])], outs=2, axis=-1, opset=13, id="Split-13"),
    case("Split", [rand(7, 2)], outs=3, num_outputs=3, opset=18),
    case("Slice", [X234], opset=9, starts=[1, -3], ends=[100, -1], axes=[1, 2]),
    case("Slice", [X234, C([0, 1]), C([2, 3])], opset=10, id="Slice-10"),
    case("Slice", [X234, C([-1, 10]), C([-100, 0]), C([1, 2]), C([-1, -2])], opset=13,
         id="Slice-negative-steps"),
    case("Slice", [X234, C([1]), C([4]), C([-1]), C([2])], opset=13, id="Slice-step2"),
    case("Gather", [X234, np.array([[1, -1], [0, -2]], i64)], id="Gather-axis0"),
    case("Gather", [X234, np.array([-4, 3, 0], i32)], axis=2, id="Gather-axis2-i32"),
    case("Gather", [X234, np.array(-2, i64)], axis=1, id="Gather-scalar"),
    case("Gather", [X234, C([1, 0], i64)], axis=-2, opset=13, id="Gather-const"),
    case("GatherElements", [X234, np.array([[[1, -1, 0, 2]], [[0, 2, -3, 1]]], i64)], axis=1,
         opset=13, id="GatherElements-axis1"),
    case("GatherElements", [rand(3, 3, dtype=i32), np.array([[2, 0, 1], [-1, 1, 0]], i32)],
         opset=11, id="GatherElements-axis0-i32"),
    case("GatherElements", [X234, np.array([[[3, 0], [-1, 1], [2, 2]]] * 2, i64)], axis=2,
         opset=13, id="GatherElements-last-axis"),
    case("Trilu", [rand(2, 4, 5)], opset=14, id="Trilu-upper"),
    case("Trilu", [rand(2, 4, 5), C(-1)], opset=14, upper=0, id="Trilu-lower-k-1"),
    case("Trilu", [rand(3, 5, dtype=i64, lo=1, hi=9), C(2)], opset=14, id="Trilu-upper-k2-i64"),
    case("Trilu", [rand(4, 3, dtype=bool), C(-7)], opset=14, upper=0, id="Trilu-bool-all-zero"),
    case("Expand", [rand(3, 1), C([2, 1, 4])]),
    case("Tile", [rand(2, 3, dtype=i32), C([2, 1])], id="Tile"),
    case("Pad", [X234], opset=2, pads=[0, 1, 0, 0, 2, 1], value=1.5),
    case("Pad", [X234, C([1, 0, 2, 0, 1, 1])], opset=11, mode="reflect"),
    case("Pad", [X234, C([1, 1, 0, 0, 2, 3]), C(0.0, f32)], opset=13, mode="edge"),
    case("Pad", [rand(2, 3, dtype=i64), C([1, 2]), C(7, i64), C([-1])], opset=18, id="Pad-axes"),
    case("Pad", [X234, C([0, 2, 1, 0, 3, 2])], opset=19, mode="wrap"),
    case("Pad", [X234, C([1, 0, 2, 0, 1, 1]), np.array(-2.5, f32)], opset=13, id="Pad-value-input"),
    case("Pad", [rand(2, 3, dtype=i64), C([1, 2]), np.array([7], i64), C([-1])], opset=18,
         id="Pad-value-input-1elem"),
    case("DepthToSpace", [rand(1, 8, 2, 3)], blocksize=2),
    case("DepthToSpace", [rand(2, 8, 2, 2)], blocksize=2, mode="CRD"),
    case("SpaceToDepth", [rand(1, 2, 4, 6)], blocksize=2),
    case("Shape", [X234]),
    case("Shape", [X234], opset=15, start=-2),
    case("Shape", [X234], opset=19, start=1, end=2),
    case("Size", [X234]),
    case("ConstantOfShape", [C([2, 3])], opset=9, id="ConstantOfShape-default"),
    case("ConstantOfShape", [C([2, 3])], opset=20,
         value=numpy_helper.from_array(np.array([7], "int32"))),
    case("Range", [C(1.0, f32), C(4.0, f32), C(0.5, f32)], opset=11, id="Range-f32"),
    case("Range", [C(10, i64), C(1, i64), C(-3, i64)], opset=11, id="Range-i64"),
    case("ScatterElements", [rand(3, 4, 2), C([[[1, 0], [-1, 2]]]), rand(1, 2, 2)], opset=18,
         axis=1, id="ScatterElements-updates-smaller-negative-index"),
    case("ScatterElements", [rand(3, 4), C([[1, 1, 0], [1, 2, 2]]), rand(2, 3)], opset=18,
         reduction="add", id="ScatterElements-add-duplicates"),
    case("ScatterElements", [rand(3, 4, dtype=i32, lo=-9, hi=9), C([[0], [3]]),
                             rand(2, 1, dtype=i32, lo=-9, hi=9)], opset=18, axis=1,
         reduction="max", id="ScatterElements-max-i32"),
    case("Det", [rand(3, 3)], opset=11, tol=1e-4, id="Det-3x3"),
    case("Det", [rand(2, 3, 4, 4)], opset=22, tol=1e-4, id="Det-batch-4x4"),
    case("Det", [rand(1, 1, dtype="float64")], opset=22, id="Det-1x1-f64"),
    # MaxUnpool's indices as MaxPool writes them: flat over the whole unpooled tensor
    case("MaxUnpool", [rand(1, 2, 2, 2), np.array([[[[5, 2], [8, 15]], [[16, 19], [28, 30]]]], i64)],
         opset=11, kernel_shape=[2, 2], strides=[2, 2], id="MaxUnpool-2d-two-channels"),
    case("MaxUnpool", [rand(2, 1, 3), np.array([[[1, 2, 5]], [[6, 9, 11]]], i64)], opset=22, kernel_shape=[2],
         strides=[2], id="MaxUnpool-1d-batch"),
    case("TensorScatter", [rand(2, 3, 5, 4), rand(2, 3, 2, 4), np.array([1, 3], i64)], opset=24,
         id="TensorScatter-linear"),
    case("TensorScatter", [rand(2, 3, 5, 4), rand(2, 3, 3, 4), np.array([4, 2], i64)], opset=24, mode="circular",
         id="TensorScatter-circular-wraps"),
    case("TensorScatter", [rand(2, 5, 3), rand(2, 2, 3)], opset=24, axis=1, id="TensorScatter-axis1-prefill"),
    case("ScatterND", [rand(4, 3, 2), C([[[1], [-1]], [[1], [0]]]), rand(2, 2, 3, 2)], opset=18,
         reduction="mul", id="ScatterND-mul-duplicates"),
    case("ScatterND", [rand(3, 4), C([[0, 1], [2, 3], [1, -4]]), rand(3)], opset=18,
         id="ScatterND-elements"),
    case("GatherND", [rand(2, 3, 4), C([[[1, -1]], [[0, 2]]])], opset=13, batch_dims=1,
         id="GatherND-batch-negative"),
    case("GatherND", [rand(3, 4), C([[[2], [0]]])], opset=13, id="GatherND-slices"),
    case("EyeLike", [rand(3, 5)], opset=9, k=-1, dtype=TensorProto.INT32),
    case("ReverseSequence", [rand(3, 4, 2), C([3, 1, 0, 2])], opset=10, batch_axis=1, time_axis=0),
    case("Dropout", [rand(3, 4), C(0.0, f32), C(True, "bool")], opset=13, outs=2,
         id="Dropout-training-ratio-0"),
    case("QuantizeLinear", [np.array([[-300, -2.5, -1.5, 0.5], [1.5, 2.5, 3.49, 700]], f32),
                            C([2.0, 0.5], f32), C([3, -4], "int8")], opset=21, axis=0,
         id="QuantizeLinear-axis-half-even-saturate"),
    case("QuantizeLinear", [rand(2, 4, lo=-300, hi=300), C([[2.0, 3.0], [0.5, 1.0]], f32),
                            C([[0, 9], [200, 255]], "uint8")], opset=21, axis=1, block_size=2,
         id="QuantizeLinear-blocked-uint8"),
    case("DequantizeLinear", [rand(2, 3, dtype="int16", lo=-999, hi=999), C([0.5, 2.0, 0.25], f32),
                              C([1, -2, 3], "int16")], opset=21, axis=1, id="DequantizeLinear-axis"),
    case("QLinearMatMul", [rand(2, 3, 4, dtype="uint8", lo=0, hi=255), C(0.02, f32), C(110, "uint8"),
                           rand(4, 5, dtype="uint8", lo=0, hi=255), C(0.03, f32), C(130, "uint8"),
                           C(0.05, f32), C(120, "uint8")], opset=21, id="QLinearMatMul-batch-uint8"),
    case("DequantizeLinear", [rand(4, dtype="uint8", lo=0, hi=255), C(0.1, f32)], opset=21,
         id="DequantizeLinear-no-zero-point"),
    case("QuantizeLinear", [np.array([-30, -2.5, -1.5, 0.5, 4.8, 8.6, 30], f32), C(2.0, f32),
                            C([1], ml_dtypes.int4)], opset=21, id="QuantizeLinear-int4-saturate"),
    case("QuantizeLinear", [np.array([-3, -1, 0.5, 1.5, 2.5, 9], f32), C(1.0, f32), C(1, ml_dtypes.uint2)],
         opset=21, id="QuantizeLinear-uint2-saturate"),
    case("QuantizeLinear", [np.array([0.1, -3.3, 700, -2000, 12.3], f32), C(2.0, f32),
                            C(0, ml_dtypes.float8_e4m3fn)], opset=21, id="QuantizeLinear-f8e4m3fn-saturate"),
    case("DequantizeLinear", [np.array([0.5, -3, 448, -0.25], ml_dtypes.float8_e4m3fn), C(2.0, f32)],
         opset=21, id="DequantizeLinear-f8e4m3fn"),
    case("DequantizeLinear", [np.array([0, 1, 7, -4, -8], ml_dtypes.int4), C([2.0], f32),
                              C([1], ml_dtypes.int4)], opset=21, id="DequantizeLinear-int4"),
    case("OneHot", [np.array([[0, -1, 7], [2, 4, -6]], i64), C(5, i64), C([-1, 3], f32)], opset=11,
         axis=1, id="OneHot-negative-and-out-of-range"),
    case("OneHot", [np.array([1.0, 3.0, -1.0], f32), C(4.0, f32), C([0, 1], i32)], opset=11,
         id="OneHot-float-indices"),
]


@pytest.mark.parametrize("node, inputs, consts, opset, tol", SHAPE)
def test_shape(node, inputs, consts, opset, tol):
    check(node, inputs, consts, opset, tol)


UNSUPPORTED = [
    (case("Dropout", [rand(2, 3), C(0.5, f32), C(True, bool)], opset=13), "training_mode"),
    (case("Reshape", [X234, np.array([4, 6], i64)]), "must be a constant"),
    (case("Pad", [X234, C([0, 3, 0, 0, 0, 0])], mode="reflect"), "reflect"),
    (case("Gelu", [X234], opset=20, approximate="erf"), "approximate"),
    (case("Det", [rand(5, 5)], opset=22), "5 x 5 matrix"),
]


@pytest.mark.parametrize("param, match", UNSUPPORTED, ids=lambda p: getattr(p, "id", None))
def test_unsupported(param, match):
    node, inputs, consts, opset, _ = param.values
    with pytest.raises(UnsupportedOpError, match=match) as err:
        run_nestor_node(node, inputs, consts, opset)
    assert f"{node.op_type} node" in str(err.value) and f"opset {opset}" in str(err.value)


def test_dropout_mask_keeps_everything_at_inference():
    x = rand(2, 3)
    out, mask = run_nestor_node(helper.make_node("Dropout", ["x"], ["y", "m"]), {"x": x}, opset=13)
    np.testing.assert_array_equal(out, x)
    assert mask.dtype == bool and mask.all()


def test_sub_byte_model_inputs_constants_and_outputs():
    """A compiled model takes and returns ml_dtypes' sub-byte arrays, and holds such constants."""
    import nestor.backend
    x = np.array([-7, -1, 0, 3, 7], ml_dtypes.int4)
    zp = np.array([2], ml_dtypes.int4)
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "zp"], ["d"], axis=0),
             helper.make_node("Cast", ["d"], ["y"], to=TensorProto.UINT4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT4, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT4, [5])],
                              [numpy_helper.from_array(np.array([0.5], f32), "s"),
                               numpy_helper.from_array(zp, "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    (y,) = nestor.backend.run_model(model, [x])
    assert y.dtype == ml_dtypes.uint4
    np.testing.assert_array_equal(y.astype("int32"), [0, 0, 0, 0, 2])  # (x - 2) / 2, truncated, >= 0


@pytest.mark.parametrize("x, to", [
    (np.array([[1.0, -2.5], [np.inf, np.nan]], f32), TensorProto.INT32),
    (np.array([True, False, True]), TensorProto.UINT8),
    (np.array([-1, 2, -300], "int16"), TensorProto.FLOAT16),
    (np.array(3.5, "float64"), TensorProto.UINT64)], ids=lambda v: getattr(v, "dtype", v))
def test_bit_cast_reads_the_same_bytes(x, to):
    import nestor.backend
    node = helper.make_node("BitCast", ["x"], ["y"], to=to)
    (y,) = nestor.backend.run_node(node, [x], opset_version=26)
    want = x.view(helper.tensor_dtype_to_np_dtype(to))
    assert y.dtype == want.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y.reshape(-1).view("uint8"), want.reshape(-1).view("uint8"))


def test_bit_cast_of_another_width_is_refused():
    node = helper.make_node("BitCast", ["x"], ["y"], to=TensorProto.INT64)
    ctx = make_context(node, "bc0", 26, [TensorInfo((3,), "float32")], [TensorInfo((3,), "int64")])
    with pytest.raises(UnsupportedOpError, match="BitCast node 'bc0' \\(opset 26\\): float32 and int64 differ"):
        lowering_for("BitCast")(ctx)


def test_unsupported_cast_type():
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)
    ctx = make_context(node, "cast0", 17, [TensorInfo((2,), "float32")], [TensorInfo((2,), "int8")])
    with pytest.raises(UnsupportedOpError, match="Cast node 'cast0' \\(opset 17\\): cast to"):
        lowering_for("Cast")(ctx)
