"""Transformer-family example models, built offline with seeded weights (batch 1, opset 17).

Each builder writes its graph the way PyTorch's exporter writes the original module (eval mode, no
Dropout): linears as MatMul + Add (Gemm where the input is 2-D, as for a classifier head), heads
split with Reshape / Transpose, Softmax attention, and each family's own norm and activation:

- `vit_block_stack`: a small ViT/DeiT (timm layout): Conv patch embedding, class token, position
  embedding, pre-LayerNorm blocks with a fused qkv linear (5-D Reshape/Transpose, Gather of q, k, v),
  Erf GELU, final LayerNorm, class-token Gather, Gemm head.
- `distilbert_block`: a post-LayerNorm DistilBERT layer; the int64 attention mask becomes
  `Where(mask == 0, finfo.min, scores)` as HF's DistilBERT writes it.
- `gpt2_block`: a pre-LayerNorm GPT-2 decoder block: fused qkv linear cut by Split, an additive
  causal mask constant, tanh GELU (Pow, Mul, Add, Tanh).
- `llama_mlp`: HF's LlamaRMSNorm (Cast, Pow, ReduceMean, Add, Sqrt, Div, Mul) and the SiLU-gated
  MLP (bias-free gate/up/down MatMuls, Sigmoid * Mul), with a residual add.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .zoo import _GraphBuilder

OPSET = 17


class _Transformer(_GraphBuilder):
    """`_GraphBuilder` plus the pieces the transformer builders share."""

    def linear(self, x: str, name: str, k: int, m: int, bias: bool = True) -> str:
        y = self.node("MatMul", [x, self.weight(f"{name}.weight", (k, m), 1 / np.sqrt(k))],
                      f"{name}.mm" if bias else f"{name}.out")
        if not bias:
            return y
        return self.node("Add", [y, self.weight(f"{name}.bias", (m,), 0.02)], f"{name}.out")

    def norm_param(self, name: str, size: int, around: float) -> str:
        """A norm's scale (around 1) or shift (around 0), seeded."""
        value = around + 0.1 * self.rng.standard_normal(size)
        return self.const(name, value.astype(np.float32))

    def layer_norm(self, x: str, name: str, size: int, eps: float) -> str:
        return self.node("LayerNormalization", [x, self.norm_param(f"{name}.weight", size, 1.0),
                                                self.norm_param(f"{name}.bias", size, 0.0)],
                         f"{name}.out", axis=-1, epsilon=eps)

    def gelu_erf(self, x: str, name: str) -> str:
        # 0.5 * x * (1 + erf(x / sqrt(2))), as torch.nn.GELU() exports below opset 20
        erf = self.node("Erf", [self.node("Div", [x, self.const(f"{name}.sqrt2", np.sqrt(2.0))],
                                          f"{name}.div")], f"{name}.erf")
        one = self.node("Add", [erf, self.const(f"{name}.one", 1.0)], f"{name}.add")
        return self.node("Mul", [self.node("Mul", [x, one], f"{name}.mul"),
                                 self.const(f"{name}.half", 0.5)], f"{name}.out")

    def reshape(self, x: str, shape, name: str) -> str:
        return self.node("Reshape", [x, self.const(f"{name}.shape", shape, np.int64)], name)

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
            [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(model, full_check=True)
        return model


def vit_block_stack(image: int = 224, patch: int = 16, hidden: int = 384, heads: int = 6,
                    mlp: int = 1536, depth: int = 2, classes: int = 1000,
                    seed: int = 0) -> onnx.ModelProto:
    """A ViT-S/16 (DeiT-small) cut to `depth` blocks, as timm's VisionTransformer exports."""
    b = _Transformer(seed)
    n = b.node
    head = hidden // heads
    grid = image // patch
    tokens = grid * grid + 1
    # patch embedding: Conv k=s=patch, then flatten(2).transpose(1, 2)
    conv = n("Conv", ["pixel_values", b.weight("patch_embed.weight", (hidden, 3, patch, patch),
                                               1 / np.sqrt(3 * patch * patch)),
                      b.weight("patch_embed.bias", (hidden,), 0.02)],
             "patch_embed.conv", kernel_shape=[patch, patch], strides=[patch, patch])
    x = n("Transpose", [b.reshape(conv, [1, hidden, -1], "patch_embed.flat")], "patch_embed.out",
          perm=[0, 2, 1])
    x = n("Concat", [b.weight("cls_token", (1, 1, hidden), 0.02), x], "tokens", axis=1)
    x = n("Add", [x, b.weight("pos_embed", (1, tokens, hidden), 0.02)], "pos_drop")
    for i in range(depth):
        p = f"blocks.{i}"
        # attention: qkv linear → [B, N, 3, H, D] → permute(2, 0, 3, 1, 4) → q, k, v = qkv[0..2]
        h = b.layer_norm(x, f"{p}.norm1", hidden, 1e-6)
        qkv = b.reshape(b.linear(h, f"{p}.attn.qkv", hidden, 3 * hidden),
                        [1, tokens, 3, heads, head], f"{p}.attn.qkv.r")
        qkv = n("Transpose", [qkv], f"{p}.attn.qkv.t", perm=[2, 0, 3, 1, 4])
        q, k, v = (n("Gather", [qkv, b.const(f"{p}.attn.{nm}.i", j, np.int64)], f"{p}.attn.{nm}",
                     axis=0) for j, nm in enumerate("qkv"))
        q = n("Mul", [q, b.const(f"{p}.attn.scale", head ** -0.5)], f"{p}.attn.q_scaled")
        kt = n("Transpose", [k], f"{p}.attn.kt", perm=[0, 1, 3, 2])
        probs = n("Softmax", [n("MatMul", [q, kt], f"{p}.attn.scores")], f"{p}.attn.probs", axis=-1)
        ctx = n("Transpose", [n("MatMul", [probs, v], f"{p}.attn.ctx")], f"{p}.attn.ctx.t",
                perm=[0, 2, 1, 3])
        ctx = b.reshape(ctx, [1, tokens, hidden], f"{p}.attn.ctx.r")
        x = n("Add", [x, b.linear(ctx, f"{p}.attn.proj", hidden, hidden)], f"{p}.res1")
        # MLP: fc1 → GELU → fc2
        h = b.layer_norm(x, f"{p}.norm2", hidden, 1e-6)
        h = b.gelu_erf(b.linear(h, f"{p}.mlp.fc1", hidden, mlp), f"{p}.mlp.act")
        x = n("Add", [x, b.linear(h, f"{p}.mlp.fc2", mlp, hidden)], f"{p}.res2")
    x = b.layer_norm(x, "norm", hidden, 1e-6)
    cls = n("Gather", [x, b.const("cls_index", 0, np.int64)], "pooled", axis=1)  # x[:, 0]
    n("Gemm", [cls, b.weight("head.weight", (classes, hidden), 1 / np.sqrt(hidden)),
               b.weight("head.bias", (classes,), 0.02)], "logits", transB=1)
    return b.model("vit_small",
                   [("pixel_values", TensorProto.FLOAT, [1, 3, image, image])],
                   [("logits", TensorProto.FLOAT, [1, classes])])


def distilbert_block(seq: int = 77, hidden: int = 768, heads: int = 12, ffn: int = 3072,
                     seed: int = 0) -> onnx.ModelProto:
    """One DistilBERT TransformerBlock (post-LayerNorm, Erf GELU) as HF's model exports; the
    attention mask (int64, 0 = padding) is applied with Equal / Reshape / Where."""
    b = _Transformer(seed)
    n = b.node
    head = hidden // heads
    x = "hidden_states"

    def split_heads(t, name):  # view(bs, -1, n_heads, dim_per_head).transpose(1, 2)
        return n("Transpose", [b.reshape(t, [1, -1, heads, head], f"{name}.r")], f"{name}.t",
                 perm=[0, 2, 1, 3])

    q = split_heads(b.linear(x, "attention.q_lin", hidden, hidden), "q")
    k = split_heads(b.linear(x, "attention.k_lin", hidden, hidden), "k")
    v = split_heads(b.linear(x, "attention.v_lin", hidden, hidden), "v")
    q = n("Div", [q, b.const("attention.scale", np.sqrt(head))], "q.scaled")
    scores = n("MatMul", [q, n("Transpose", [k], "k.tt", perm=[0, 1, 3, 2])], "scores")
    # mask = (mask == 0).view(bs, 1, 1, k_length).expand_as(scores)
    # scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    pad = n("Equal", ["attention_mask", b.const("mask.zero", 0, np.int64)], "mask.pad")
    pad = b.reshape(pad, [1, 1, 1, seq], "mask.view")
    pad = n("Expand", [pad, n("Shape", [scores], "scores.shape")], "mask.expand")
    scores = n("Where", [pad, b.const("mask.min", np.finfo(np.float32).min), scores],
               "scores.masked")
    probs = n("Softmax", [scores], "probs", axis=-1)
    ctx = n("Transpose", [n("MatMul", [probs, v], "ctx.mm")], "ctx.t", perm=[0, 2, 1, 3])
    ctx = b.reshape(ctx, [1, -1, hidden], "ctx")
    attn = b.linear(ctx, "attention.out_lin", hidden, hidden)
    h = b.layer_norm(n("Add", [attn, x], "sa.res"), "sa_layer_norm", hidden, 1e-12)
    up = b.gelu_erf(b.linear(h, "ffn.lin1", hidden, ffn), "ffn.act")
    down = b.linear(up, "ffn.lin2", ffn, hidden)
    out = b.layer_norm(n("Add", [down, h], "ffn.res"), "output_layer_norm", hidden, 1e-12)
    n("Identity", [out], "output")
    return b.model(f"distilbert_block_{seq}",
                   [("hidden_states", TensorProto.FLOAT, [1, seq, hidden]),
                    ("attention_mask", TensorProto.INT64, [1, seq])],
                   [("output", TensorProto.FLOAT, [1, seq, hidden])])


def gpt2_block(seq: int = 77, hidden: int = 768, heads: int = 12, seed: int = 0) -> onnx.ModelProto:
    """One GPT-2 block (pre-LayerNorm, causal self-attention, tanh GELU "NewGELU")."""
    b = _Transformer(seed)
    n = b.node
    head = hidden // heads
    x = "hidden_states"
    h = b.layer_norm(x, "ln_1", hidden, 1e-5)
    qkv = b.linear(h, "attn.c_attn", hidden, 3 * hidden)
    # query, key, value = c_attn(h).split(hidden, dim=2)
    b.nodes.append(helper.make_node("Split", [qkv, b.const("attn.split", [hidden] * 3, np.int64)],
                                    ["attn.q", "attn.k", "attn.v"], name="attn.split", axis=2))

    def split_heads(t, name):
        return n("Transpose", [b.reshape(t, [1, seq, heads, head], f"{name}.r")], f"{name}.t",
                 perm=[0, 2, 1, 3])

    q, k, v = (split_heads(f"attn.{nm}", f"attn.{nm}h") for nm in "qkv")
    scores = n("MatMul", [q, n("Transpose", [k], "attn.kt", perm=[0, 1, 3, 2])], "attn.scores.mm")
    scores = n("Div", [scores, b.const("attn.scale", np.sqrt(head))], "attn.scores")
    # causal mask: 0 on and below the diagonal, float32's lowest value above it
    mask = np.triu(np.full((seq, seq), np.finfo(np.float32).min, np.float32), k=1)
    scores = n("Add", [scores, b.const("attn.causal_mask", mask[None, None])], "attn.scores.masked")
    probs = n("Softmax", [scores], "attn.probs", axis=-1)
    ctx = n("Transpose", [n("MatMul", [probs, v], "attn.ctx")], "attn.ctx.t", perm=[0, 2, 1, 3])
    ctx = b.reshape(ctx, [1, seq, hidden], "attn.ctx.r")
    x = n("Add", [b.linear(ctx, "attn.c_proj", hidden, hidden), x], "res1")
    h = b.layer_norm(x, "ln_2", hidden, 1e-5)
    up = b.linear(h, "mlp.c_fc", hidden, 4 * hidden)
    # NewGELU: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * pow(x, 3))))
    cube = n("Pow", [up, b.const("gelu.three", 3.0)], "gelu.cube")
    inner = n("Add", [up, n("Mul", [b.const("gelu.k", 0.044715), cube], "gelu.kc")], "gelu.inner")
    t = n("Tanh", [n("Mul", [b.const("gelu.s2pi", np.sqrt(2 / np.pi)), inner], "gelu.targ")],
          "gelu.tanh")
    gelu = n("Mul", [n("Mul", [b.const("gelu.half", 0.5), up], "gelu.hx"),
                     n("Add", [b.const("gelu.one", 1.0), t], "gelu.t1")], "gelu")
    n("Add", [x, b.linear(gelu, "mlp.c_proj", 4 * hidden, hidden)], "output")
    return b.model(f"gpt2_block_{seq}",
                   [("hidden_states", TensorProto.FLOAT, [1, seq, hidden])],
                   [("output", TensorProto.FLOAT, [1, seq, hidden])])


def llama_mlp(seq: int = 77, hidden: int = 256, intermediate: int = 688,
              seed: int = 0) -> onnx.ModelProto:
    """HF LlamaRMSNorm followed by LlamaMLP (down(silu(gate(x)) * up(x))), plus the residual."""
    b = _Transformer(seed)
    n = b.node
    x = "hidden_states"
    # LlamaRMSNorm: h = x.to(float32); h * rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight
    h = n("Cast", [x], "norm.cast", to=TensorProto.FLOAT)
    var = n("ReduceMean", [n("Pow", [h, b.const("norm.two", 2.0)], "norm.sq")], "norm.var",
            axes=[-1], keepdims=1)
    std = n("Sqrt", [n("Add", [var, b.const("norm.eps", 1e-6)], "norm.var_eps")], "norm.std")
    rstd = n("Div", [b.const("norm.one", 1.0), std], "norm.rsqrt")
    h = n("Mul", [b.norm_param("norm.weight", hidden, 1.0),
                  n("Mul", [h, rstd], "norm.normed")], "norm.out")
    gate = b.linear(h, "mlp.gate_proj", hidden, intermediate, bias=False)
    act = n("Mul", [gate, n("Sigmoid", [gate], "mlp.sigmoid")], "mlp.silu")
    up = b.linear(h, "mlp.up_proj", hidden, intermediate, bias=False)
    down = b.linear(n("Mul", [act, up], "mlp.gated"), "mlp.down_proj", intermediate, hidden,
                    bias=False)
    n("Add", [x, down], "output")
    return b.model(f"llama_mlp_{seq}",
                   [("hidden_states", TensorProto.FLOAT, [1, seq, hidden])],
                   [("output", TensorProto.FLOAT, [1, seq, hidden])])


TRANSFORMER_MODELS = {
    "vit_small": vit_block_stack,
    "distilbert_77": lambda: distilbert_block(77),
    "distilbert_384": lambda: distilbert_block(384),
    "gpt2_77": lambda: gpt2_block(77),
    "llama_mlp_77": lambda: llama_mlp(77),
}
