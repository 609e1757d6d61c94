"""Chunked reductions per kernel: for chosen nodes of a model, the sketch's rule-built tiles with
and without a chunk of the outermost reduction loop (and, with --records, the task's best
schedule there), built and timed by the tuner's measurer in one process, two rounds; prints
each candidate's best time and GFLOP/s. Compare rows of one node, not across runs.

    python examples/compare_chunks.py resnet50 --nodes n90,n140,n148,n152 [--records r50.sqlite]
"""
import argparse
import dataclasses

import nestor
from nestor.autotune.measure import Measurer
from nestor.autotune.records import Records
from nestor.autotune.search import kernel_flops
from nestor.autotune.space import Candidate, Sketch
from nestor.autotune.tune import target_key
from nestor.ir import structural_hash
from nestor.passes import Schedule
from nestor.zoo import light_model


def candidates(node, records):
    sketch = Sketch.of(node.kernel)
    out = []
    if records is not None:
        best = records.best(structural_hash(node.kernel), target_key())
        if best:
            out.append(("best in records", Schedule.from_json(best.schedule).apply(node.kernel)))
    for i, rule in enumerate(sketch.rule_decisions()):
        if rule.rule != "tiling":
            continue
        for chunk in (None, *sketch.info.chunk_factors):
            d = Candidate("tiling", dataclasses.replace(rule.decisions, chunk=(chunk, 0) if chunk else None))
            out.append((f"rule {i} tile {rule.decisions.factors} chunk {chunk}", sketch.realize(d)[1]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="one of nestor.zoo's light models")
    parser.add_argument("--nodes", required=True, help="node names, comma-separated (see `nestor ir`)")
    parser.add_argument("--records", help="also time each task's best schedule in these records")
    args = parser.parse_args()
    graph = nestor.import_onnx(light_model(args.model))
    nodes = {n.name: n for n in graph.nodes}
    records = Records(args.records) if args.records else None
    with Measurer(None, repeats=7) as measurer:
        for name in args.nodes.split(","):
            node = nodes[name]
            cands = candidates(node, records)
            measurer.switch(node.kernel, constants=tuple(i for i, t in enumerate(node.inputs)
                                                         if t in graph.constants))
            rounds = [measurer.measure([k for _, k in cands]) for _ in range(2)]
            flops = kernel_flops(node.kernel)
            print(f"{name}: {[b.shape for b in node.kernel.inputs[:2]]}")
            for j, (label, _) in enumerate(cands):
                times = [r[j].median for r in rounds if r[j].ok]
                print(f"  {label:48s} " + (f"{min(times) * 1e3:8.3f} ms {flops / min(times) / 1e9:5.0f} GF/s"
                                          if times else f"error: {rounds[0][j].error[:120]}"), flush=True)
    if records is not None:
        records.close()


if __name__ == "__main__":
    main()
