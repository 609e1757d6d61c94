"""Per-task comparison of the ONNX (NCHW) and blocked (NCHW16c) layouts of one model: for each of
its heaviest tasks, the sketch's rule-built candidates (plus `--samples` random ones) of the
kernel in both layouts, measured by the tuner's measurer; prints each layout's best time and
GFLOP/s. Both layouts' candidates of a task are measured one after the other in one process,
so compare the columns of a row, not rows across runs.

    python examples/compare_layouts.py resnet50 [--tasks 10] [--samples 0]
"""
import argparse
import random

import nestor
from nestor.autotune.measure import Measurer
from nestor.autotune.search import kernel_flops
from nestor.autotune.space import Sketch
from nestor.ir import structural_hash
from nestor.zoo import light_model


def tasks_of(graph):
    """structural hash -> [node, calls]"""
    found = {}
    for node in graph.nodes:
        if node.kernel is not None:
            found.setdefault(structural_hash(node.kernel), [node, 0])[1] += 1
    return found


def best_of(measurer, graph, node, samples):
    kernel = node.kernel
    measurer.switch(kernel, constants=tuple(i for i, t in enumerate(node.inputs) if t in graph.constants))
    sketch = Sketch.of(kernel)
    rng = random.Random(0)
    kernels = [sketch.realize(d)[1] for d in sketch.rule_decisions() + [sketch.sample(rng) for _ in range(samples)]]
    times = [r.median for r in measurer.measure(kernels) if r.ok]
    return min(times) if times else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--samples", type=int, default=0)
    args = parser.parse_args()
    model = light_model(args.model)
    plain, blocked = nestor.import_onnx(model, blocked=False), nestor.import_onnx(model)
    plain_by_name = {n.name: n for n in plain.nodes}
    heavy = sorted(tasks_of(blocked).values(), key=lambda t: -kernel_flops(t[0].kernel) * t[1])[:args.tasks]
    print(f"{'node':10s} {'calls':>5s} {'MFLOP':>7s} {'nchw ms':>9s} {'GF/s':>6s} {'nchwc ms':>9s} {'GF/s':>6s}")
    totals = [0.0, 0.0]
    with Measurer(None) as measurer:
        for node, calls in heavy:
            flops = kernel_flops(node.kernel)
            row = f"{node.name:10s} {calls:5d} {flops / 1e6:7.0f}"
            for k, (graph, n) in enumerate(((plain, plain_by_name.get(node.name)), (blocked, node))):
                t = best_of(measurer, graph, n, args.samples) if n is not None else None
                row += f" {t * 1e3:9.3f} {flops / t / 1e9:6.0f}" if t else f" {'-':>9s} {'-':>6s}"
                totals[k] += calls * (t or 0)
            print(row, flush=True)
    print(f"sum of calls x best: nchw {totals[0] * 1e3:.2f} ms, nchwc {totals[1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
