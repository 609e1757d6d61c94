"""The kinds of model users bring beyond classifiers and encoders (issue 22), built offline with
seeded weights (batch 1, opset 17), each written the way PyTorch's exporter writes the module:

- `unet`: a small UNet: two Conv-ReLU pairs per level, MaxPool down, ConvTranspose (k=2, s=2)
  up, the skip connection joined by Concat, a 1x1 Conv to the classes.
- `fcn_head`: a torchvision FCN-style segmentation model: a strided Conv backbone, FCNHead
  (3x3 Conv, ReLU, 1x1 Conv), and the logits resized to the image (bilinear, align_corners=False:
  Resize linear / pytorch_half_pixel with sizes).
- `fpn_detection_head`: a torchvision-style detection head: backbone levels C3-C5, an FPN (1x1
  laterals, nearest Resize top-down by scale and by sizes, 3x3 outputs) and RetinaNet's
  classification and box heads shared across levels, their outputs permuted to
  [1, anchors, K] and concatenated.
- `lstm_classifier`: token embedding (Gather), a 2-layer bidirectional LSTM (batch_first: the
  exporter's Transposes), the last hidden states through a Gemm.
- `gru_speech`: acoustic frames through a 2-layer bidirectional GRU (linear_before_reset, as
  PyTorch's GRU exports), a per-frame linear and LogSoftmax.
- `llama_block`: a LLaMA decoder layer as HF's exporter writes it: RMSNorm decomposed, rotary
  embeddings from position_ids (MatMul with inv_freq, Cos, Sin, rotate_half by Slice / Neg /
  Concat), attention as Einsum contractions with a causal mask, SiLU-gated MLP, residuals.

Weights are scaled so that activations stay of order one and the attention's softmax spreads
(scores of order one): the error checks against ONNX Runtime then compare real numbers.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .zoo_transformers import _Transformer


class _Builder(_Transformer):
    """_Transformer plus convolutions and recurrent layers."""

    def conv(self, x, name, cin, cout, k=3, stride=1, act=True):
        w = self.weight(f"{name}.weight", (cout, cin, k, k), np.sqrt((2.0 if act else 1.0) / (cin * k * k)))
        y = self.node("Conv", [x, w, self.weight(f"{name}.bias", (cout,), 0.05)], f"{name}.out",
                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        return self.node("Relu", [y], f"{name}.relu") if act else y

    def conv_transpose(self, x, name, cin, cout):
        """nn.ConvTranspose2d(cin, cout, 2, stride=2): each input pixel paints a 2x2 block."""
        w = self.weight(f"{name}.weight", (cin, cout, 2, 2), np.sqrt(1.0 / cin))
        return self.node("ConvTranspose", [x, w, self.weight(f"{name}.bias", (cout,), 0.05)],
                         f"{name}.out", kernel_shape=[2, 2], strides=[2, 2])

    def recurrent(self, op, x, name, inputs, hidden, batch=1, output="Y"):
        """A bidirectional nn.LSTM / nn.GRU layer over x [T, batch, inputs], weights uniform in
        +-1/sqrt(hidden) as PyTorch initializes them, zero initial states; returns Y reshaped to
        [T, batch, 2 * hidden] (the next layer's input) or, with output="Y_h", Y_h [2, batch, hidden]."""
        gates = {"LSTM": 4, "GRU": 3}[op]
        bound = 1 / np.sqrt(hidden)

        def uniform(suffix, shape):
            value = self.rng.uniform(-bound, bound, shape).astype(np.float32)
            return self.const(f"{name}.{suffix}", value)
        zeros = self.const(f"{name}.h0", np.zeros((2, batch, hidden), np.float32))
        ins = [x, uniform("W", (2, gates * hidden, inputs)), uniform("R", (2, gates * hidden, hidden)),
               uniform("B", (2, 2 * gates * hidden)), "", zeros]
        attrs = dict(hidden_size=hidden, direction="bidirectional")
        if op == "LSTM":
            ins.append(zeros)
        else:
            attrs["linear_before_reset"] = 1
        outs = [f"{name}.Y", f"{name}.Y_h"]
        self.nodes.append(onnx.helper.make_node(op, ins, outs, name=name, **attrs))
        if output == "Y_h":
            return outs[1]
        y = self.node("Transpose", [outs[0]], f"{name}.Y.t", perm=[0, 2, 1, 3])  # [T, batch, 2, H]
        return self.reshape(y, [0, batch, 2 * hidden], f"{name}.Y.r")


def unet(image: int = 128, base: int = 16, classes: int = 2, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    pair = lambda x, name, cin, cout: b.conv(b.conv(x, f"{name}.0", cin, cout), f"{name}.1", cout, cout)  # noqa: E731
    pool = lambda x, name: b.node("MaxPool", [x], name, kernel_shape=[2, 2], strides=[2, 2])  # noqa: E731
    s1 = pair("input", "down1", 3, base)
    s2 = pair(pool(s1, "pool1"), "down2", base, 2 * base)
    x = pair(pool(s2, "pool2"), "bottleneck", 2 * base, 4 * base)
    for level, skip, ch in ((2, s2, 2 * base), (1, s1, base)):
        up = b.conv_transpose(x, f"up{level}.up", 2 * ch, ch)
        x = pair(b.node("Concat", [skip, up], f"up{level}.cat", axis=1), f"up{level}.conv", 2 * ch, ch)
    b.node("Conv", [x, b.weight("outc.weight", (classes, base, 1, 1), np.sqrt(1.0 / base)),
                    b.weight("outc.bias", (classes,), 0.05)], "output", kernel_shape=[1, 1])
    return b.model("unet", [("input", TensorProto.FLOAT, [1, 3, image, image])],
                   [("output", TensorProto.FLOAT, [1, classes, image, image])])


def fcn_head(image: int = 128, width: int = 32, classes: int = 5, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.conv("input", "backbone.0", 3, width // 2, stride=2)
    x = b.conv(x, "backbone.1", width // 2, width, stride=2)
    x = b.conv(x, "backbone.2", width, 2 * width, stride=2)
    x = b.conv(x, "classifier.0", 2 * width, width // 2)     # FCNHead: 3x3 Conv (+BN folded), ReLU
    x = b.conv(x, "classifier.4", width // 2, classes, k=1, act=False)
    none = b.const("resize.none", np.zeros(0, np.float32))
    b.node("Resize", [x, none, none, b.const("resize.sizes", [1, classes, image, image], np.int64)],
           "output", mode="linear", coordinate_transformation_mode="pytorch_half_pixel",
           cubic_coeff_a=-0.75, nearest_mode="floor")
    return b.model("fcn_head", [("input", TensorProto.FLOAT, [1, 3, image, image])],
                   [("output", TensorProto.FLOAT, [1, classes, image, image])])


def fpn_detection_head(image: int = 128, channels: int = 32, anchors: int = 3, classes: int = 8,
                       seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    n = b.node
    x = b.conv("input", "body.stem", 3, 16, stride=2)
    x = b.conv(x, "body.layer1", 16, 24, stride=2)
    c3 = b.conv(x, "body.layer2", 24, 32, stride=2)                      # stride 8
    c4 = b.conv(c3, "body.layer3", 32, 64, stride=2)                     # stride 16
    c5 = b.conv(c4, "body.layer4", 64, 128, stride=2)                    # stride 32
    inner = [b.conv(c, f"fpn.inner_blocks.{i}", cin, channels, k=1, act=False)
             for i, (c, cin) in enumerate(((c3, 32), (c4, 64), (c5, 128)))]
    none = b.const("fpn.none", np.zeros(0, np.float32))
    p5 = inner[2]
    # top-down: F.interpolate(scale_factor=2) for one level, size= for the other (both exported)
    up4 = n("Resize", [p5, none, b.const("fpn.scales", [1.0, 1.0, 2.0, 2.0])], "fpn.up4",
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    p4 = n("Add", [inner[1], up4], "fpn.p4")
    size3 = [1, channels, image // 8, image // 8]
    up3 = n("Resize", [p4, none, none, b.const("fpn.size3", size3, np.int64)], "fpn.up3",
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    p3 = n("Add", [inner[0], up3], "fpn.p3")
    levels = [b.conv(p, f"fpn.layer_blocks.{i}", channels, channels, act=False) for i, p in enumerate((p3, p4, p5))]
    outputs = {}
    for head, k in (("classification_head", classes), ("regression_head", 4)):
        parts = []
        for i, p in enumerate(levels):
            # RetinaNet's heads share their weights across levels: one seed per head
            b.rng = np.random.default_rng(seed + (1 if k == classes else 2))
            y = b.conv(p, f"{head}.conv.{i}", channels, channels)
            y = b.conv(y, f"{head}.out.{i}", channels, anchors * k, act=False)
            hw = (image // 8 >> i) ** 2
            y = b.reshape(y, [1, anchors, k, image // 8 >> i, image // 8 >> i], f"{head}.view.{i}")
            y = n("Transpose", [y], f"{head}.permute.{i}", perm=[0, 3, 4, 1, 2])
            parts.append(b.reshape(y, [1, hw * anchors, k], f"{head}.flat.{i}"))
        name = "cls_logits" if k == classes else "bbox_regression"
        outputs[name] = n("Concat", parts, name, axis=1)
    total = sum((image // 8 >> i) ** 2 for i in range(3)) * anchors
    return b.model("fpn_detection_head", [("input", TensorProto.FLOAT, [1, 3, image, image])],
                   [("cls_logits", TensorProto.FLOAT, [1, total, classes]),
                    ("bbox_regression", TensorProto.FLOAT, [1, total, 4])])


def lstm_classifier(seq: int = 32, vocab: int = 1000, embed: int = 64, hidden: int = 64,
                    classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    n = b.node
    emb = n("Gather", [b.weight("embedding.weight", (vocab, embed), 1.0), "input_ids"], "embedding", axis=0)
    x = n("Transpose", [emb], "lstm.input", perm=[1, 0, 2])              # batch_first -> [T, 1, E]
    x = b.recurrent("LSTM", x, "lstm.l0", embed, hidden)
    h = b.recurrent("LSTM", x, "lstm.l1", 2 * hidden, hidden, output="Y_h")
    h = b.reshape(n("Transpose", [h], "h_n.t", perm=[1, 0, 2]), [1, 2 * hidden], "h_n.cat")
    w = b.weight("fc.weight", (classes, 2 * hidden), np.sqrt(1.0 / (2 * hidden)))
    n("Gemm", [h, w, b.weight("fc.bias", (classes,), 0.05)], "output", transB=1)
    return b.model("lstm_classifier", [("input_ids", TensorProto.INT64, [1, seq])],
                   [("output", TensorProto.FLOAT, [1, classes])])


def gru_speech(frames: int = 50, features: int = 40, hidden: int = 64, classes: int = 29,
               seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    n = b.node
    x = n("Transpose", ["features"], "gru.input", perm=[1, 0, 2])       # [1, T, F] -> [T, 1, F]
    x = b.recurrent("GRU", x, "gru.l0", features, hidden)
    x = b.recurrent("GRU", x, "gru.l1", 2 * hidden, hidden)
    x = n("Transpose", [x], "gru.output", perm=[1, 0, 2])               # [1, T, 2H]
    logits = b.linear(x, "fc", 2 * hidden, classes)
    n("LogSoftmax", [logits], "output", axis=-1)
    return b.model("gru_speech", [("features", TensorProto.FLOAT, [1, frames, features])],
                   [("output", TensorProto.FLOAT, [1, frames, classes])])


def llama_block(seq: int = 32, hidden: int = 128, heads: int = 4, intermediate: int = 344,
                seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    n = b.node
    dim = hidden // heads

    def rms_norm(x, name):
        var = n("ReduceMean", [n("Pow", [x, b.const(f"{name}.two", 2.0)], f"{name}.sq")], f"{name}.var",
                axes=[-1], keepdims=1)
        std = n("Sqrt", [n("Add", [var, b.const(f"{name}.eps", 1e-6)], f"{name}.var_eps")], f"{name}.std")
        normed = n("Mul", [x, n("Div", [b.const(f"{name}.one", 1.0), std], f"{name}.rsqrt")], f"{name}.normed")
        return n("Mul", [b.norm_param(f"{name}.weight", hidden, 1.0), normed], f"{name}.out")

    def heads_of(x, name):
        return n("Transpose", [b.reshape(x, [1, seq, heads, dim], f"{name}.r")], f"{name}.t", perm=[0, 2, 1, 3])

    def rotate_half(x, name):
        half = lambda start, end, part: n("Slice", [x, b.const(f"{name}.{part}.s", [start], np.int64),  # noqa: E731
                                                    b.const(f"{name}.{part}.e", [end], np.int64),
                                                    b.const(f"{name}.{part}.a", [-1], np.int64)], f"{name}.{part}")
        return n("Concat", [n("Neg", [half(dim // 2, dim, "x2")], f"{name}.neg"), half(0, dim // 2, "x1")],
                 f"{name}.out", axis=-1)

    # LlamaRotaryEmbedding: freqs = position_ids[:, :, None] @ inv_freq[None, :]; cos, sin of [freqs, freqs]
    inv_freq = 1.0 / (10000 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    pos = n("Unsqueeze", [n("Cast", ["position_ids"], "rope.pos", to=TensorProto.FLOAT),
                          b.const("rope.axis", [2], np.int64)], "rope.pos_col")
    freqs = n("MatMul", [pos, b.const("rope.inv_freq", inv_freq[None, :].astype(np.float32))], "rope.freqs")
    emb = n("Concat", [freqs, freqs], "rope.emb", axis=-1)
    head_axis = b.const("rope.head_axis", [1], np.int64)
    cos = n("Unsqueeze", [n("Cos", [emb], "rope.cos"), head_axis], "rope.cos_h")
    sin = n("Unsqueeze", [n("Sin", [emb], "rope.sin"), head_axis], "rope.sin_h")

    def rope(x, name):
        return n("Add", [n("Mul", [x, cos], f"{name}.cos"),
                         n("Mul", [rotate_half(x, f"{name}.rot"), sin], f"{name}.sin")], f"{name}.out")

    x = "hidden_states"
    h = rms_norm(x, "input_layernorm")
    q = rope(heads_of(b.linear(h, "self_attn.q_proj", hidden, hidden, bias=False), "q"), "q.rope")
    k = rope(heads_of(b.linear(h, "self_attn.k_proj", hidden, hidden, bias=False), "k"), "k.rope")
    v = heads_of(b.linear(h, "self_attn.v_proj", hidden, hidden, bias=False), "v")
    scores = n("Mul", [n("Einsum", [q, k], "attn.qk", equation="bhqd,bhkd->bhqk"),
                       b.const("attn.scale", 1 / np.sqrt(dim))], "attn.scores")
    causal = np.triu(np.full((seq, seq), -1e9, np.float32), 1)[None, None]
    probs = n("Softmax", [n("Add", [scores, b.const("attn.causal", causal)], "attn.masked")], "attn.probs", axis=-1)
    ctx = n("Einsum", [probs, v], "attn.ctx", equation="bhqk,bhkd->bhqd")
    ctx = b.reshape(n("Transpose", [ctx], "attn.ctx.t", perm=[0, 2, 1, 3]), [1, seq, hidden], "attn.ctx.r")
    x = n("Add", [x, b.linear(ctx, "self_attn.o_proj", hidden, hidden, bias=False)], "res1")
    h = rms_norm(x, "post_attention_layernorm")
    gate = b.linear(h, "mlp.gate_proj", hidden, intermediate, bias=False)
    act = n("Mul", [gate, n("Sigmoid", [gate], "mlp.sigmoid")], "mlp.silu")
    up = b.linear(h, "mlp.up_proj", hidden, intermediate, bias=False)
    down = b.linear(n("Mul", [act, up], "mlp.gated"), "mlp.down_proj", intermediate, hidden, bias=False)
    n("Add", [x, down], "output")
    return b.model("llama_block", [("hidden_states", TensorProto.FLOAT, [1, seq, hidden]),
                                   ("position_ids", TensorProto.INT64, [1, seq])],
                   [("output", TensorProto.FLOAT, [1, seq, hidden])])


BREADTH_MODELS = {
    "unet": unet,
    "fcn_head": fcn_head,
    "fpn_detection_head": fpn_detection_head,
    "lstm_classifier": lstm_classifier,
    "gru_speech": gru_speech,
    "llama_block": llama_block,
}
# Small sizes of the same graphs, for tests (seconds to compile each).
SMALL = {
    "unet": dict(image=32, base=4),
    "fcn_head": dict(image=32, width=8),
    "fpn_detection_head": dict(image=64, channels=8),
    "lstm_classifier": dict(seq=6, vocab=50, embed=8, hidden=8),
    "gru_speech": dict(frames=6, features=8, hidden=8, classes=5),
    "llama_block": dict(seq=8, hidden=32, heads=2, intermediate=48),
}
