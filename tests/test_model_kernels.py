"""Every kernel the frontend makes for the nine light models prints, parses back equal, verifies,
and keeps doing so after the default schedule."""
import pytest

import nestor
from nestor.ir import parse_kernel, print_kernel, structural_hash, verify
from nestor.passes import default_schedule
from nestor.zoo import encoder_block, light_model

from .test_models import LIGHT_MODEL_PARAMS


def model_graph(name):
    return nestor.import_onnx(encoder_block(seq=16, hidden=64, heads=4, ffn=128)
                              if name == "bert_layer" else light_model(name))


@pytest.mark.parametrize("name", LIGHT_MODEL_PARAMS + ["bert_layer"])
def test_kernels_round_trip_and_verify(name):
    graph = model_graph(name)
    seen = set()
    for node in graph.nodes:
        if node.kernel is None or structural_hash(node.kernel) in seen:
            continue
        seen.add(structural_hash(node.kernel))
        for kernel in (node.kernel, default_schedule(node.kernel)):
            verify(kernel)
            assert parse_kernel(print_kernel(kernel)) == kernel, node.name
    assert seen


def test_default_schedule_parallelizes_and_vectorizes():
    graph = model_graph("resnet50")
    kinds = set()
    for k in graph.kernels():
        text = print_kernel(default_schedule(k))
        kinds |= {kind for kind in ("parallel", "vectorized") if kind in text}
    assert kinds == {"parallel", "vectorized"}
