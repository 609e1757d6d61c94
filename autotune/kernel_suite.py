"""The kernel benchmark suite, each kernel written twice: as a one-node ONNX model (what Nestor
and ONNX Runtime run) and as a TVM tensor expression (what MetaSchedule tunes). Same shapes,
dtypes and inputs in the same order, so outputs can be checked equal."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper


@dataclass(frozen=True)
class SuiteKernel:
    name: str
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    output: tuple[int, ...]
    node: Callable[[], onnx.NodeProto]
    te: Callable[..., object]           # te placeholders (in input order) -> output tensor
    numpy_matmul: bool = False          # NumPy's `a @ b` is a fair third opinion
    opset: int = 17

    def onnx_model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            [self.node()], self.name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in self.inputs],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, self.output)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])

    def prim_func(self):
        from tvm import te
        args = [te.placeholder(s, "float32", n) for n, s in self.inputs]
        return te.create_prim_func(args + [self.te(*args)])

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(s).astype(np.float32) for _, s in self.inputs]


def _matmul(a, b):
    from tvm import te
    k = te.reduce_axis((0, a.shape[-1]), "k")
    if len(a.shape) == 3:
        return te.compute((a.shape[0], a.shape[1], b.shape[2]),
                          lambda n, i, j: te.sum(a[n, i, k] * b[n, k, j], axis=k), "Y")
    return te.compute((a.shape[0], b.shape[1]), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), "Y")


def _conv(stride, pad, groups=1):
    def make(x, w):
        from tvm import topi
        if groups > 1 and groups == x.shape[1]:
            return topi.nn.depthwise_conv2d_nchw(x, w, stride, pad, 1)
        if groups > 1:
            return topi.nn.group_conv2d_nchw(x, w, stride, pad, 1, groups)
        return topi.nn.conv2d_nchw(x, w, stride, pad, 1)
    return make


def _softmax(x):
    from tvm import topi
    return topi.nn.softmax(x, axis=-1)


def _layernorm(x, gamma, beta):
    from tvm import topi
    return topi.nn.layer_norm(x, gamma, beta, axis=[-1], epsilon=1e-5)


def _mm(name, m, k, n):
    return SuiteKernel(name, (("A", (m, k)), ("B", (k, n))), (m, n),
                       lambda: helper.make_node("MatMul", ["A", "B"], ["Y"]), _matmul, numpy_matmul=True)


def _conv_kernel(name, cin, cout, size, kernel, stride, pad, groups=1):
    out = (size + 2 * pad - kernel) // stride + 1
    return SuiteKernel(
        name, (("X", (1, cin, size, size)), ("W", (cout, cin // groups, kernel, kernel))), (1, cout, out, out),
        lambda: helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[kernel, kernel], strides=[stride] * 2,
                                 pads=[pad] * 4, group=groups),
        _conv(stride, pad, groups))


def _bmm(name, batch, m, k, n):
    return SuiteKernel(name, (("A", (batch, m, k)), ("B", (batch, k, n))), (batch, m, n),
                       lambda: helper.make_node("MatMul", ["A", "B"], ["Y"]), _matmul, numpy_matmul=True)


# Named by `bench kernels --kernels`, not in the default run (too large to tune on a 2-core CPU):
# the GPU's reference matmul, measured against cuBLAS.
EXTRA: dict[str, SuiteKernel] = {k.name: k for k in (_mm("matmul2048", 2048, 2048, 2048),)}

# The kernels of the wider zoo's families (nestor/zoo_cnn.py, zoo_transformers.py) that the
# suite's shapes do not cover: extents no vector width divides (197, 77, 688, primes), stride-2,
# 5x5 and grouped convolutions, attention over 197 tokens. `bench kernels --kernels unseen`: no
# rule constant may cite them (issue 20's held-out discipline).
UNSEEN: dict[str, SuiteKernel] = {k.name: k for k in (
    _mm("vit_qkv", 197, 384, 1152),
    _mm("vit_mlp_down", 197, 1536, 384),
    _mm("gpt2_fc", 77, 768, 3072),
    _mm("llama_gate", 77, 256, 688),
    _mm("matmul_primes", 127, 509, 251),
    _mm("classifier", 1, 1280, 1000),
    _bmm("attn_scores_197", 6, 197, 64, 197),
    _bmm("attn_context_197", 6, 197, 197, 64),
    SuiteKernel("attn_softmax_197", (("X", (6, 197, 197)),), (6, 197, 197),
                lambda: helper.make_node("Softmax", ["X"], ["Y"], axis=-1), _softmax),
    _conv_kernel("depthwise3x3_s2", 96, 96, 112, 3, 2, 1, groups=96),
    _conv_kernel("depthwise5x5", 240, 240, 28, 5, 1, 2, groups=240),
    _conv_kernel("depthwise5x5_s2", 144, 144, 56, 5, 2, 2, groups=144),
    _conv_kernel("grouped3x3", 128, 128, 56, 3, 1, 1, groups=32),
    _conv_kernel("conv3x3_s2", 64, 128, 56, 3, 2, 1),
    _conv_kernel("pointwise_expand", 24, 144, 56, 1, 1, 0),
)}

SUITE: dict[str, SuiteKernel] = {k.name: k for k in (
    _mm("matmul512", 512, 512, 512),
    _mm("matmul1024", 1024, 1024, 1024),
    _mm("bert_dense", 128, 768, 3072),
    SuiteKernel("batch_matmul", (("A", (12, 128, 64)), ("B", (12, 64, 128))), (12, 128, 128),
                lambda: helper.make_node("MatMul", ["A", "B"], ["Y"]), _matmul, numpy_matmul=True),
    _conv_kernel("conv3x3", 64, 64, 56, 3, 1, 1),
    _conv_kernel("conv1x1", 256, 64, 56, 1, 1, 0),
    _conv_kernel("conv7x7_stem", 3, 64, 224, 7, 2, 3),
    _conv_kernel("depthwise3x3", 32, 32, 112, 3, 1, 1, groups=32),
    SuiteKernel("softmax", (("X", (128, 3072)),), (128, 3072),
                lambda: helper.make_node("Softmax", ["X"], ["Y"], axis=-1), _softmax),
    SuiteKernel("layernorm", (("X", (128, 768)), ("gamma", (768,)), ("beta", (768,))), (128, 768),
                lambda: helper.make_node("LayerNormalization", ["X", "gamma", "beta"], ["Y"], axis=-1,
                                         epsilon=1e-5), _layernorm),
)}


def kernels_named(names: list[str] | None) -> dict[str, SuiteKernel]:
    """The kernels `bench kernels --kernels` names (default: SUITE; "unseen": all of UNSEEN), in
    order; an unknown name is a NestorError listing the known ones."""
    from ..ir.errors import NestorError
    known = {**SUITE, **EXTRA, **UNSEEN}
    names = [k for n in names for k in (UNSEEN if n == "unseen" else [n])] if names else list(SUITE)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NestorError(f"unknown kernel(s) {unknown}; choose from {', '.join(known)} (or unseen: all of "
                          "the wider zoo's)")
    return {n: known[n] for n in names}
