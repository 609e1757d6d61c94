"""Hand-written schedules, timed beside NumPy and ONNX Runtime: the passes can express fast code.

    python examples/manual_schedules.py [--repeat 30]

Two kernels, each compiled by `nestor.compile` from an ONNX model with a pipeline schedule:
- a 1024×1024×1024 float32 matmul (both operands are inputs), against NumPy's `a @ b`;
- ResNet-50's 3×3 convolution (56×56, 64→64 channels, pad 1; weights are constants), against
  ONNX Runtime (as many threads as Nestor).
Times are medians of interleaved runs in this process (nestor.bench.interleaved_medians). The last
line reads `matmul1024 <P>% of NumPy, conv3x3 <Q>% of ONNX Runtime` (speed: their time / ours).
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import nestor
from nestor.bench import interleaved_medians, ort_session
from nestor.passes import parse_pipeline

# Loop names are the canonical ones `nestor ir` prints: spatial i0, i1, ..., reductions r0, ...
# Matmul: Out[i0, i1] = 0; Out[i0, i1] += A[i0, r0] * B[r0, i1].
# A 4×64 register tile (4 rows, four 16-lane AVX-512 vectors): sixteen accumulators held across
# the whole r0 loop (cache_write + distribute + reorder puts r0 outside the tile); B's 64-column
# panel is copied to a contiguous local buffer once per column block (cache_read) and reused by
# all rows.
MATMUL = """
    split(i0, 4); split(i1, 64); reorder(i1_o, i0_o, i0_i, i1_i);
    cache_write(Out, i0_o); distribute(i0_i); reorder(r0, i0_i_1, i1_i_1);
    cache_read(B, i1_o);
    parallel(i1_o);
    unroll(i0_i); vectorize(i1_i);
    unroll(i0_i_1); vectorize(i1_i_1);
    unroll(Out_w0); vectorize(Out_w1); vectorize(B_c1)
"""

# Conv: the padding stage writes X_pad[i0..i3]; the convolution is
# Out[i4, i5, i6, i7] += X_pad[i4, r0, i6 + r1, i7 + r2] * W[i5, r0, r1, r2].
# Output channels fill the 16 lanes of an AVX-512 vector (56 columns have no 16-lane split): W is
# packed OIHW → OIHW16o at compile time so a tap's 16 channel weights are one vector load, and
# each of the 2 rows × 7 columns of the tile is one accumulator of 16 channels (14 registers),
# laid out channels last by cache_write's order; every tap then costs one weight load and 14
# broadcast FMAs. The write-back scatters each vector to its 16 channel planes once per tile.
CONV3X3 = """
    split(i5, 16); split(i6, 2); split(i7, 7); reorder(i5_o, i6_o, i7_o, i6_i, i7_i, i5_i);
    cache_write(Out, i7_o, [0, 2, 3, 1]); distribute(i6_i); reorder(r0, r1, r2, i6_i_1, i7_i_1, i5_i_1);
    pack(W, 0, 16, [0, 2, 3, 4, 1]);
    parallel(i5_o);
    unroll(i6_i_1); unroll(i7_i_1); vectorize(i5_i_1);
    unroll(i6_i); unroll(i7_i); vectorize(i5_i);
    unroll(Out_w1); unroll(Out_w2); vectorize(Out_w3);
    parallel(i1)
"""


def matmul_model(n: int) -> onnx.ModelProto:
    t = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
                              [t("A"), t("B")], [t("C")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_model(seed: int = 0) -> onnx.ModelProto:
    w = np.random.default_rng(seed).standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])], "conv3x3",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64, 56, 56])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 64, 56, 56])],
        initializer=[numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bench_matmul(repeat: int) -> float:
    n = 1024
    model = nestor.compile(matmul_model(n), schedule=MATMUL)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    np.testing.assert_allclose(model.run([a, b])[0], a @ b, rtol=1e-3, atol=1e-3)
    t_nestor, t_numpy = interleaved_medians([model.kernels_only([a, b]), lambda: a @ b], repeat)
    gflops = 2 * n ** 3 / 1e9
    print(f"matmul 1024^3: nestor {t_nestor * 1e3:7.2f} ms ({gflops / t_nestor:5.1f} GFLOP/s)   "
          f"numpy {t_numpy * 1e3:7.2f} ms ({gflops / t_numpy:5.1f} GFLOP/s)")
    return t_numpy / t_nestor


def bench_conv(repeat: int) -> float:
    onnx_model = conv_model()
    # the schedule is written for the NCHW loop nest: keep the layout and the direct conv
    model = nestor.compile(onnx_model, schedule=CONV3X3, blocked=False, winograd=False)
    session = ort_session(onnx_model)
    x = np.random.default_rng(1).standard_normal((1, 64, 56, 56), dtype=np.float32)
    want = session.run(None, {"X": x})[0]
    np.testing.assert_allclose(model.run({"X": x})[0], want, rtol=1e-4, atol=1e-4)
    t_nestor, t_ort = interleaved_medians([model.kernels_only({"X": x}),
                                           lambda: session.run(None, {"X": x})], repeat)
    gflops = 2 * 64 * 64 * 9 * 56 * 56 / 1e9
    print(f"conv 3x3 56x56 64->64: nestor {t_nestor * 1e3:6.3f} ms ({gflops / t_nestor:5.1f} GFLOP/s)   "
          f"onnxruntime {t_ort * 1e3:6.3f} ms ({gflops / t_ort:5.1f} GFLOP/s)")
    return t_ort / t_nestor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed runs of each (default 30)")
    args = ap.parse_args()
    for name, text in (("matmul", MATMUL), ("conv3x3", CONV3X3)):
        print(f"{name} schedule: {parse_pipeline(text)}")
    p = bench_matmul(args.repeat)
    q = bench_conv(args.repeat)
    print(f"matmul1024 {p * 100:.0f}% of NumPy, conv3x3 {q * 100:.0f}% of ONNX Runtime")


if __name__ == "__main__":
    main()
