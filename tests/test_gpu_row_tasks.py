"""The transformer models' row tasks on a GPU, extracted as the tuner extracts them: their layer
norms, softmaxes and RMSNorm means sit under a batch loop of 1 ([1, seq, hidden]) and must still
get a block of threads per row from the GPU row rule, in every seed."""
import dataclasses

import numpy as np
import pytest

from nestor.api import import_onnx
from nestor.autotune.space import Sketch
from nestor.autotune.task_scheduler import extract_tasks
from nestor.codegen import as_target, cuda_target, machine_params, run_kernel
from nestor.codegen.build import build
from nestor.ir import Store, walk_stmts
from nestor.zoo import encoder_block
from nestor.zoo_breadth import llama_block
from tests.test_passes import inputs
from tests.test_rules import launches

CUDA = machine_params(cuda_target("sm_90"))
MODELS = {"encoder_block": lambda: encoder_block(seq=32, hidden=64, heads=2, ffn=128),
          "llama_block": lambda: llama_block(seq=32, hidden=32, heads=2, intermediate=48)}


@pytest.mark.parametrize("model, task, rows", [
    ("encoder_block", "ln1 (+1)", 32), ("encoder_block", "probs", 2 * 32),
    ("llama_block", "input_layernorm.var (+1)", 32), ("llama_block", "attn.probs", 2 * 32)])
def test_model_row_tasks_get_a_block_per_row(model, task, rows):
    tasks = {t.name: t for t in extract_tasks(import_onnx(MODELS[model](), target=as_target("cuda")))}
    kernel = tasks[task].kernel
    sketch = Sketch.of(kernel, CUDA, strict=True)
    assert list(sketch.rules)[0] == "gpu_rows"
    seeds = [c for c in sketch.rule_decisions() if c.rule == "gpu_rows"]
    args = inputs(kernel)
    want = run_kernel(kernel, args)
    built = []
    for n, c in enumerate(seeds):
        _, scheduled = sketch.realize(c)
        assert launches(scheduled)[0] == (rows, c.decisions.threads), c.decisions
        assert not [s for s in walk_stmts(scheduled.body)
                    if isinstance(s, Store) and s.reduce and s.buffer.scope == "global"], c.decisions
        for got, ref in zip(run_kernel(scheduled, args), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=str(c.decisions))
        built.append(dataclasses.replace(scheduled, name=f"seed{n}"))
    source = build(built, cuda_target("sm_90")).module.imports[0].inspect_source()
    assert source.count("__global__") >= 2 * len(seeds) and "__syncthreads()" in source
