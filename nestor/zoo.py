"""Example models for tests and benchmarks, built offline.

- The nine "light" CNNs shipped in onnx's backend test data. Their weights are all produced by
  ConstantOfShape nodes with one fill value, which makes their outputs degenerate;
  `light_model(name)` replaces each such node by a seeded random initializer, scaled so that
  activations stay in range through deep networks.
- A transformer encoder block (BERT-style, post-LayerNorm, GELU via Erf), built with onnx.helper.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512")


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light model with its ConstantOfShape weights replaced by seeded random initializers."""
    if name not in LIGHT_MODELS:
        raise ValueError(f"unknown light model {name!r}; choose from {', '.join(LIGHT_MODELS)}")
    model = onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx"))
    return randomize_constant_weights(model, seed)


def randomize_constant_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    kept, new_inits = [], []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            new_inits.append(numpy_helper.from_array(_weight(rng, shape), node.output[0]))
        else:
            kept.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(new_inits)
    # Drop the now unused shape initializers, and list only real inputs as graph inputs (models
    # of the IR-3 era also list initializers there; IR 4 made that optional).
    used = {i for node in kept for i in node.input} | {o.name for o in out.graph.output}
    inits_kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits_kept)
    init_names = {t.name for t in inits_kept}
    real_inputs = [vi for vi in out.graph.input if vi.name not in init_names and vi.name in used]
    del out.graph.input[:]
    out.graph.input.extend(real_inputs)
    out.ir_version = max(out.ir_version, 4)
    return out


def _weight(rng, shape) -> np.ndarray:
    if len(shape) <= 1:  # biases and BatchNorm statistics: positive, near one
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[-1]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)


class _GraphBuilder:
    """Collects initializers and nodes; each method returns the name of what it made."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def weight(self, name: str, shape, scale: float = 0.1) -> str:
        value = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def const(self, name: str, value, dtype=np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def exported_encoder(seq: int = 16, hidden: int = 64, heads: int = 4, ffn: int = 128,
                     vocab: int = 100, seed: int = 0, opset: int = 14) -> onnx.ModelProto:
    """An embedding + encoder layer written the way PyTorch's TorchScript exporter writes it:
    LayerNorm decomposed (ReduceMean, Sub, Pow, Sqrt, Div), head reshapes computed from Shape /
    Gather / Unsqueeze / Concat, an int64 attention mask turned into a bias with Cast / Where /
    Expand, token and position embeddings with Gather and Slice, GELU with Tanh, a Sigmoid gate."""
    b = _GraphBuilder(seed)
    w, c, n, inits, nodes = b.weight, b.const, b.node, b.inits, b.nodes
    head = hidden // heads

    def layer_norm(x, name):
        mean = n("ReduceMean", [x], f"{name}.mean", axes=[-1], keepdims=1)
        d = n("Sub", [x, mean], f"{name}.d")
        var = n("ReduceMean", [n("Pow", [d, c(f"{name}.two", 2.0)], f"{name}.sq")], f"{name}.var",
                axes=[-1], keepdims=1)
        std = n("Sqrt", [n("Add", [var, c(f"{name}.eps", 1e-5)], f"{name}.vareps")], f"{name}.std")
        y = n("Mul", [n("Div", [d, std], f"{name}.norm"), w(f"{name}.g", (hidden,))], f"{name}.scaled")
        return n("Add", [y, w(f"{name}.b", (hidden,))], f"{name}.out")

    def linear(x, name, k, m):
        y = n("MatMul", [x, w(f"{name}.w", (k, m), 1 / np.sqrt(k))], f"{name}.mm")
        return n("Add", [y, w(f"{name}.bias", (m,), 0.02)], f"{name}.out")

    def dim(x, i, name):  # x.shape[i] as a 1-element int64 tensor, via Shape → Gather → Unsqueeze
        g = n("Gather", [n("Shape", [x], f"{name}.shape"), c(f"{name}.i", i, np.int64)], f"{name}.g", axis=0)
        return n("Unsqueeze", [g, c(f"{name}.ax", [0], np.int64)], f"{name}.u")

    def split_heads(x, name):
        shape = n("Concat", [dim(x, 0, f"{name}.b"), dim(x, 1, f"{name}.s"),
                             c(f"{name}.h", [heads], np.int64), c(f"{name}.d", [head], np.int64)],
                  f"{name}.newshape", axis=0)
        return n("Transpose", [n("Reshape", [x, shape], f"{name}.r")], f"{name}.t", perm=[0, 2, 1, 3])

    tok = n("Gather", [w("word_emb", (vocab, hidden), 1.0), "input_ids"], "tok_emb", axis=0)
    pos_ids = n("Slice", [c("pos_table", np.arange(512), np.int64), c("s0", [0], np.int64),
                          c("s1", [seq], np.int64), c("s2", [0], np.int64)], "pos_ids")
    pos = n("Gather", [w("pos_emb", (512, hidden), 1.0), pos_ids], "pos_emb_g", axis=0)
    x = layer_norm(n("Add", [tok, pos], "emb"), "ln0")
    # mask (1 = keep) → additive bias: where(mask, 0, -1e4), expanded to [b, heads, seq, seq]
    m = n("Unsqueeze", [n("Unsqueeze", ["attention_mask", c("a1", [1], np.int64)], "m1"),
                        c("a2", [2], np.int64)], "m2")
    keep = n("Cast", [m], "mask_bool", to=TensorProto.BOOL)
    bias = n("Where", [keep, c("zero", 0.0), c("neg", -1e4)], "mask_bias")
    bias = n("Expand", [bias, c("mshape", [1, heads, seq, seq], np.int64)], "mask_full")
    q, k, v = (split_heads(linear(x, nm, hidden, hidden), nm) for nm in ("q", "k", "v"))
    scores = n("Div", [n("MatMul", [q, n("Transpose", [k], "kt", perm=[0, 1, 3, 2])], "qk"),
                       c("scale", np.sqrt(head))], "scores")
    probs = n("Softmax", [n("Add", [scores, bias], "scores_m")], "probs", axis=3)
    ctx = n("Transpose", [n("MatMul", [probs, v], "ctx_h")], "ctx_t", perm=[0, 2, 1, 3])
    ctx = n("Reshape", [ctx, c("ctx_shape", [1, seq, hidden], np.int64)], "ctx")
    h = layer_norm(n("Add", [linear(ctx, "o", hidden, hidden), x], "res1"), "ln1")
    up = linear(h, "up", hidden, ffn)
    # tanh GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), gated by sigmoid(x) for coverage
    inner = n("Add", [up, n("Mul", [n("Pow", [up, c("three", 3.0)], "cube"), c("k", 0.044715)], "kc")], "inner")
    t = n("Tanh", [n("Mul", [inner, c("s2pi", np.sqrt(2 / np.pi))], "targ")], "tanh")
    gelu = n("Mul", [n("Mul", [up, c("half", 0.5)], "hx"), n("Add", [t, c("one", 1.0)], "t1")], "gelu")
    gated = n("Mul", [gelu, n("Sigmoid", [up], "gate")], "gated")
    down = linear(gated, "down", ffn, hidden)
    out = layer_norm(n("Add", [down, h], "res2"), "ln2")
    n("Squeeze", [out, c("sq_axes", [0], np.int64)], "output")
    graph = helper.make_graph(
        nodes, "exported_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [seq, hidden])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def encoder_block(seq: int = 128, hidden: int = 768, heads: int = 12, ffn: int = 3072,
                  batch: int = 1, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """One BERT-base encoder layer as PyTorch's exporter writes it (MatMul+Add, Reshape/Transpose
    for heads, Softmax attention, Erf GELU, LayerNormalization)."""
    b = _GraphBuilder(seed)
    w, c, n, inits, nodes = b.weight, b.const, b.node, b.inits, b.nodes
    head = hidden // heads

    def linear(x, name, k, m):
        y = n("MatMul", [x, w(f"{name}.weight", (k, m), 1 / np.sqrt(k))], f"{name}.mm")
        return n("Add", [y, w(f"{name}.bias", (m,), 0.02)], f"{name}.out")

    def split_heads(x, name):
        r = n("Reshape", [x, c(f"{name}.shape", [batch, seq, heads, head], np.int64)], f"{name}.r")
        return n("Transpose", [r], f"{name}.t", perm=[0, 2, 1, 3])

    x = "hidden_states"
    q = split_heads(linear(x, "query", hidden, hidden), "q")
    k = split_heads(linear(x, "key", hidden, hidden), "k")
    v = split_heads(linear(x, "value", hidden, hidden), "v")
    kt = n("Transpose", [k], "k.tt", perm=[0, 1, 3, 2])
    scores = n("Div", [n("MatMul", [q, kt], "scores.mm"), c("scale", np.sqrt(head))], "scores")
    scores = n("Add", [scores, "attention_mask"], "scores.masked")
    probs = n("Softmax", [scores], "probs", axis=-1)
    ctx = n("Transpose", [n("MatMul", [probs, v], "ctx.mm")], "ctx.t", perm=[0, 2, 1, 3])
    ctx = n("Reshape", [ctx, c("ctx.shape", [batch, seq, hidden], np.int64)], "ctx")
    attn = linear(ctx, "attn_out", hidden, hidden)
    h1 = n("LayerNormalization", [n("Add", [attn, x], "res1"), w("ln1.weight", (hidden,), 0.1),
                                   w("ln1.bias", (hidden,), 0.1)], "ln1", axis=-1, epsilon=1e-12)
    up = linear(h1, "ffn_up", hidden, ffn)
    # GELU(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
    erf = n("Erf", [n("Div", [up, c("sqrt2", np.sqrt(2.0))], "gelu.div")], "gelu.erf")
    gelu = n("Mul", [n("Mul", [up, n("Add", [erf, c("one", 1.0)], "gelu.add")], "gelu.mul"),
                     c("half", 0.5)], "gelu")
    down = linear(gelu, "ffn_down", ffn, hidden)
    n("LayerNormalization", [n("Add", [down, h1], "res2"), w("ln2.weight", (hidden,), 0.1),
                             w("ln2.bias", (hidden,), 0.1)], "output", axis=-1, epsilon=1e-12)
    graph = helper.make_graph(
        nodes, "bert_encoder_layer",
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [batch, seq, hidden]),
         helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [batch, 1, 1, seq])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, seq, hidden])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model
