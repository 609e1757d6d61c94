"""CNN families that users run on CPUs, built offline with seeded random weights.

Each builder returns an onnx.ModelProto (opset 17, batch 1, a float input "input" of shape
[1, 3, 224, 224], an output "output" of shape [1, 1000]) written the way PyTorch's exporter writes
the torchvision model in eval mode: by default with BatchNormalization folded into the Conv's
bias (what `torch.onnx.export` emits with constant folding); `batchnorm=True` emits Conv without
bias followed by BatchNormalization instead (Nestor folds them again). ReLU6 is Clip(0, 6) with
its bounds as inputs, SiLU is Sigmoid + Mul, hard-swish is HardSwish, hard-sigmoid HardSigmoid
(alpha 1/6), adaptive average pooling GlobalAveragePool, torch.flatten Flatten, Linear Gemm.

Weights are He-scaled (std sqrt(2 / fan_in) before a ReLU-like activation, sqrt(1 / fan_in)
before none), so activations stay of order one through the whole network.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .zoo import _GraphBuilder

OPSET = 17
# Variance gains that keep activations of order one: 1 / E[act(z)^2] for z ~ N(0, 1)
# (2 for ReLU; SiLU and hard-swish pass less of small inputs).
ACT_GAIN = {"relu": 2.0, "relu6": 2.0, "hardswish": 3.0, "silu": 3.0}
# A squeeze-excite gate scales its input by about one half: the conv after it gets twice the gain
# (half of that on a residual branch, where the add doubles the variance).
SE_GAIN = 2.0


class _CNNBuilder(_GraphBuilder):
    """_GraphBuilder plus the layers torchvision's CNNs are made of; names follow PyTorch's."""

    def __init__(self, seed: int, batchnorm: bool):
        super().__init__(seed)
        self.batchnorm = batchnorm
        self._clip_bounds = None

    def conv(self, x, name, cin, cout, k, stride=1, groups=1, gain=2.0, bn=True):
        """Conv with bias (padding k // 2); a conv followed by BatchNorm in PyTorch (`bn`) becomes
        Conv without bias + BatchNormalization when `self.batchnorm`. `gain`: 2 before a ReLU-like
        activation, 1 (or less, on a residual branch) before none."""
        fan_in = cin // groups * k * k
        w = self.weight(f"{name}.weight", (cout, cin // groups, k, k), np.sqrt(gain / fan_in))
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [k // 2] * 4,
                 "dilations": [1, 1], "group": groups}
        if not (self.batchnorm and bn):
            return self.node("Conv", [x, w, self.weight(f"{name}.bias", (cout,), 0.05)],
                             f"{name}.out", **attrs)
        y = self.node("Conv", [x, w], f"{name}.conv", **attrs)
        rng = self.rng  # statistics near an identity transform
        stats = [rng.uniform(0.8, 1.2, cout), rng.normal(0, 0.05, cout), rng.normal(0, 0.05, cout),
                 rng.uniform(0.8, 1.2, cout)]
        names = [self.const(f"{name}.bn.{s}", v) for s, v in
                 zip(("weight", "bias", "running_mean", "running_var"), stats)]
        return self.node("BatchNormalization", [y] + names, f"{name}.out", epsilon=1e-5,
                         momentum=0.9)

    def act(self, x, kind, name):
        if kind == "relu":
            return self.node("Relu", [x], f"{name}.relu")
        if kind == "relu6":
            if self._clip_bounds is None:
                self._clip_bounds = (self.const("clip.min", 0.0), self.const("clip.max", 6.0))
            return self.node("Clip", [x, *self._clip_bounds], f"{name}.relu6")
        if kind == "hardswish":
            return self.node("HardSwish", [x], f"{name}.hardswish")
        if kind == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x], f"{name}.sigmoid")], f"{name}.silu")
        raise ValueError(kind)

    def conv_act(self, x, name, cin, cout, k, stride=1, groups=1, act="relu"):
        gain = ACT_GAIN[act]
        return self.act(self.conv(x, name, cin, cout, k, stride, groups, gain), act, name)

    def squeeze_excite(self, x, name, channels, squeeze, act="relu", gate="sigmoid"):
        """torchvision's SqueezeExcitation: pool, 1x1 conv, act, 1x1 conv, gate, scale x."""
        s = self.node("GlobalAveragePool", [x], f"{name}.avgpool")
        s = self.act(self.conv(s, f"{name}.fc1", channels, squeeze, 1, gain=ACT_GAIN[act], bn=False),
                     act, f"{name}.fc1")
        s = self.conv(s, f"{name}.fc2", squeeze, channels, 1, gain=1.0, bn=False)
        if gate == "hardsigmoid":
            s = self.node("HardSigmoid", [s], f"{name}.hardsigmoid", alpha=1.0 / 6, beta=0.5)
        else:
            s = self.node("Sigmoid", [s], f"{name}.sigmoid")
        return self.node("Mul", [s, x], f"{name}.scale")

    def pool_flatten(self, x):
        """adaptive_avg_pool2d(x, 1) + torch.flatten(x, 1), as exported."""
        return self.node("Flatten", [self.node("GlobalAveragePool", [x], "avgpool")], "flatten", axis=1)

    def linear(self, x, name, cin, cout, gain=1.0, output=None):
        w = self.weight(f"{name}.weight", (cout, cin), np.sqrt(gain / cin))
        return self.node("Gemm", [x, w, self.weight(f"{name}.bias", (cout,), 0.05)],
                         output or f"{name}.out", alpha=1.0, beta=1.0, transB=1)

    def model(self, graph_name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1000])],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(model, full_check=True)
        return model


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def mobilenet_v2(seed: int = 0, batchnorm: bool = False) -> onnx.ModelProto:
    """torchvision's mobilenet_v2 (width 1.0, full depth): inverted residual blocks with a 1x1
    expansion, a 3x3 depthwise conv (stride 1 or 2), ReLU6, a linear 1x1 projection and a residual
    add where shapes allow."""
    b = _CNNBuilder(seed, batchnorm)
    x = b.conv_act("input", "features.0", 3, 32, 3, stride=2, act="relu6")
    cin, index = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride, name, hidden = (s if i == 0 else 1), f"features.{index}", cin * t
            y = x
            if t != 1:
                y = b.conv_act(y, f"{name}.expand", cin, hidden, 1, act="relu6")
            y = b.conv_act(y, f"{name}.dw", hidden, hidden, 3, stride, groups=hidden, act="relu6")
            y = b.conv(y, f"{name}.project", hidden, c, 1, gain=1.0)
            x = b.node("Add", [x, y], f"{name}.add") if stride == 1 and cin == c else y
            cin, index = c, index + 1
    x = b.conv_act(x, f"features.{index}", cin, 1280, 1, act="relu6")
    b.linear(b.pool_flatten(x), "classifier.1", 1280, 1000, output="output")
    return b.model("mobilenet_v2")


def mobilenet_v3_small(seed: int = 0, batchnorm: bool = False) -> onnx.ModelProto:
    """torchvision's mobilenet_v3_small (full depth): hard-swish, squeeze-excite gated by a
    hard-sigmoid, 3x3 and 5x5 depthwise convs, a hard-swish Linear 576 -> 1024 before the
    classifier."""
    b = _CNNBuilder(seed, batchnorm)
    x = b.conv_act("input", "features.0", 3, 16, 3, stride=2, act="hardswish")
    # input, kernel, expanded, output, use_se, activation, stride
    table = [(16, 3, 16, 16, True, "relu", 2), (16, 3, 72, 24, False, "relu", 2),
             (24, 3, 88, 24, False, "relu", 1), (24, 5, 96, 40, True, "hardswish", 2),
             (40, 5, 240, 40, True, "hardswish", 1), (40, 5, 240, 40, True, "hardswish", 1),
             (40, 5, 120, 48, True, "hardswish", 1), (48, 5, 144, 48, True, "hardswish", 1),
             (48, 5, 288, 96, True, "hardswish", 2), (96, 5, 576, 96, True, "hardswish", 1),
             (96, 5, 576, 96, True, "hardswish", 1)]
    for index, (cin, k, exp, cout, se, act, stride) in enumerate(table, 1):
        name, y = f"features.{index}", x
        if exp != cin:
            y = b.conv_act(y, f"{name}.expand", cin, exp, 1, act=act)
        y = b.conv_act(y, f"{name}.dw", exp, exp, k, stride, groups=exp, act=act)
        if se:
            y = b.squeeze_excite(y, f"{name}.se", exp, _make_divisible(exp // 4), gate="hardsigmoid")
        y = b.conv(y, f"{name}.project", exp, cout, 1, gain=SE_GAIN if se else 1.0)
        x = b.node("Add", [x, y], f"{name}.add") if stride == 1 and cin == cout else y
    x = b.conv_act(x, "features.12", 96, 576, 1, act="hardswish")
    x = b.act(b.linear(b.pool_flatten(x), "classifier.0", 576, 1024, gain=3.0), "hardswish",
              "classifier.1")
    b.linear(x, "classifier.3", 1024, 1000, output="output")
    return b.model("mobilenet_v3_small")


def efficientnet_b0(seed: int = 0, batchnorm: bool = False) -> onnx.ModelProto:
    """torchvision's efficientnet_b0 at 224x224 (full depth): MBConv blocks with SiLU (Sigmoid +
    Mul, as exported), squeeze-excite (SiLU inside, Sigmoid gate), 3x3 and 5x5 depthwise convs;
    stochastic depth is the identity at inference."""
    b = _CNNBuilder(seed, batchnorm)
    x = b.conv_act("input", "features.0", 3, 32, 3, stride=2, act="silu")
    # expand ratio, kernel, stride, input, output, layers
    table = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    for stage, (t, k, s, cin, cout, layers) in enumerate(table, 1):
        for i in range(layers):
            name, stride, c_in = f"features.{stage}.{i}", (s if i == 0 else 1), (cin if i == 0 else cout)
            hidden, y = c_in * t, x
            if hidden != c_in:
                y = b.conv_act(y, f"{name}.expand", c_in, hidden, 1, act="silu")
            y = b.conv_act(y, f"{name}.dw", hidden, hidden, k, stride, groups=hidden, act="silu")
            y = b.squeeze_excite(y, f"{name}.se", hidden, max(1, c_in // 4), act="silu")
            residual = stride == 1 and c_in == cout
            y = b.conv(y, f"{name}.project", hidden, cout, 1, gain=SE_GAIN / 2 if residual else SE_GAIN)
            x = b.node("Add", [y, x], f"{name}.add") if residual else y
    x = b.conv_act(x, "features.8", 320, 1280, 1, act="silu")
    b.linear(b.pool_flatten(x), "classifier.1", 1280, 1000, output="output")
    return b.model("efficientnet_b0")


def _stem_resnet(b: _CNNBuilder) -> str:
    x = b.conv_act("input", "conv1", 3, 64, 7, stride=2)
    return b.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


def resnext50_32x4d(seed: int = 0, batchnorm: bool = False,
                    blocks: tuple[int, ...] = (3, 4, 6, 3)) -> onnx.ModelProto:
    """torchvision's resnext50_32x4d: a 7x7 stem and max pool, then bottlenecks of a 1x1, a
    grouped 3x3 (32 groups of 4 x 2**stage channels; stride on the 3x3, as in ResNet v1.5) and a
    1x1 to 4x the planes, a strided 1x1 projection on each stage's first block, residual add,
    ReLU. Full depth by default: repeated blocks repeat the same kernels, so it compiles to 35
    distinct kernels against 31 for `blocks=(1, 2, 2, 1)`, a reduced variant that keeps every
    stage's kernels with fewer repetitions (shorter end-to-end runs)."""
    b = _CNNBuilder(seed, batchnorm)
    x, cin = _stem_resnet(b), 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), 1):
        width, cout = planes * 2, planes * 4  # planes * (4 / 64) * 32 groups
        for i in range(n):
            name, stride = f"layer{stage}.{i}", (2 if i == 0 and stage > 1 else 1)
            y = b.conv_act(x, f"{name}.conv1", cin, width, 1)
            y = b.conv_act(y, f"{name}.conv2", width, width, 3, stride, groups=32)
            y = b.conv(y, f"{name}.conv3", width, cout, 1, gain=0.5)
            if i == 0:
                x = b.conv(x, f"{name}.downsample", cin, cout, 1, stride, gain=0.5)
            x = b.act(b.node("Add", [y, x], f"{name}.add"), "relu", name)
            cin = cout
    b.linear(b.pool_flatten(x), "fc", cin, 1000, output="output")
    return b.model("resnext50_32x4d")


def regnet_y_400mf(seed: int = 0, batchnorm: bool = False,
                   depths: tuple[int, ...] = (1, 3, 6, 6)) -> onnx.ModelProto:
    """torchvision's regnet_y_400mf: stages of widths 48, 104, 208, 440 made of bottlenecks with a
    grouped 3x3 (group width 8: 6, 13, 26, 55 groups; stride 2 on each stage's first block),
    squeeze-excite (squeeze = round(0.25 * block input width), ReLU, Sigmoid), a 1x1 projection
    shortcut where shapes change, residual add, ReLU. Full depth by default; `depths` can reduce
    it (e.g. (1, 1, 2, 2): every kernel is still there)."""
    b = _CNNBuilder(seed, batchnorm)
    x, cin = b.conv_act("input", "stem", 3, 32, 3, stride=2), 32
    for stage, (width, n) in enumerate(zip((48, 104, 208, 440), depths), 1):
        for i in range(n):
            name, stride = f"trunk_output.block{stage}.{i}", (2 if i == 0 else 1)
            y = b.conv_act(x, f"{name}.a", cin, width, 1)
            y = b.conv_act(y, f"{name}.b", width, width, 3, stride, groups=width // 8)
            y = b.squeeze_excite(y, f"{name}.se", width, round(0.25 * cin))
            y = b.conv(y, f"{name}.c", width, width, 1, gain=SE_GAIN / 2)
            if cin != width or stride != 1:
                x = b.conv(x, f"{name}.proj", cin, width, 1, stride, gain=0.5)
            x = b.act(b.node("Add", [x, y], f"{name}.add"), "relu", name)
            cin = width
    b.linear(b.pool_flatten(x), "fc", cin, 1000, output="output")
    return b.model("regnet_y_400mf")


CNN_MODELS = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "efficientnet_b0": efficientnet_b0,
    "resnext50_32x4d": resnext50_32x4d,
    "regnet_y_400mf": regnet_y_400mf,
}
