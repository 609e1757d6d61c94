"""Per task, the sketch's rule-built candidates for two vector units (AVX-512's 32 registers of 16
lanes, AVX2's 16 of 8), measured on this machine by the tuner's measurer: how much the rules'
register fit matters here. Both units' candidates of a task are measured one after the other in
one process, so compare the columns of a row, not rows across runs.

    python examples/compare_units.py resnet50 [--tasks 12]
"""
import argparse

import nestor
from nestor.autotune.measure import Measurer
from nestor.autotune.search import kernel_flops
from nestor.autotune.space import Sketch
from nestor.ir.machine import AVX2, AVX512
from nestor.zoo import light_model

from compare_layouts import tasks_of

UNITS = {"avx512": AVX512, "avx2": AVX2}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--tasks", type=int, default=12)
    args = parser.parse_args()
    graph = nestor.import_onnx(light_model(args.model))
    heavy = sorted(tasks_of(graph).values(), key=lambda t: -kernel_flops(t[0].kernel) * t[1])[:args.tasks]
    totals = dict.fromkeys(UNITS, 0.0)
    print(f"{'node':8s} {'calls':>5s} {'MFLOP':>6s}" + "".join(f" {u + ' ms':>10s} {'GF/s':>5s} {'tile':>18s}" for u in UNITS))
    with Measurer(None) as measurer:
        for node, calls in heavy:
            measurer.switch(node.kernel, constants=tuple(i for i, t in enumerate(node.inputs) if t in graph.constants))
            flops = kernel_flops(node.kernel)
            row = f"{node.name:8s} {calls:5d} {flops / 1e6:6.0f}"
            for name, unit in UNITS.items():
                sketch = Sketch.of(node.kernel, unit)
                rules = sketch.rule_decisions()
                results = measurer.measure([sketch.realize(d)[1] for d in rules])
                good = [(r.median, str(getattr(d.decisions, "factors", d.decisions))) for r, d in zip(results, rules)
                        if r.ok]
                if good:
                    t, tile = min(good)
                    totals[name] += calls * t
                    row += f" {t * 1e3:10.3f} {flops / t / 1e9:5.0f} {tile:>18s}"
                else:
                    row += f" {'-':>10s} {'-':>5s} {'-':>18s}"
            print(row, flush=True)
    print("sum of calls x best: " + ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in totals.items()))


if __name__ == "__main__":
    main()
