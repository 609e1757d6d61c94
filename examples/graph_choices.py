"""Whole-model comparison of the graph choices a target decides (`import_onnx`'s `blocked` and
`winograd`): each variant of one model is tuned for the same time (its own records), compiled,
and all variants are timed interleaved in this process, on the target's device. What it prints
is what the target description's defaults (blocked and Winograd on for a CPU, off for a GPU)
should follow.

    python examples/graph_choices.py resnet50 --target cuda --time-budget 2m
    python examples/graph_choices.py squeezenet --time-budget 0      # untuned: default schedules
"""
import argparse
import functools
import os
import tempfile
import time

import nestor
from nestor.autotune.budget import Budget
from nestor.autotune.tune import tune_graph
from nestor.bench import (example_model, gpu_interleaved_medians, interleaved_medians, need_gpu,
                          output_error)
from nestor.cli_checks import duration
from nestor.codegen import as_target, is_gpu

VARIANTS = {  # name -> import_onnx's graph choices
    "plain": dict(blocked=False, winograd=False),
    "blocked": dict(blocked=True, winograd=False),
    "winograd": dict(blocked=True, winograd=True),   # Winograd runs on the blocked layout
}


def compile_variant(model, choices: dict, target, budget: float, records: str, log=print):
    graph = nestor.import_onnx(model, target=target, **choices)
    if budget:
        tune_graph(graph, Budget(seconds=budget), records_path=records, target=target)
    return nestor.compile(graph, target=target, records=records if budget else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model of nestor.zoo (bench models' names)")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--time-budget", type=functools.partial(duration, allow_zero=True), default=60.0, help="tuning per variant (0: untuned)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    target = as_target(args.target)
    gpu = is_gpu(target)
    if gpu:
        need_gpu(target)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    model = example_model(args.model)
    compiled = {}
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            start = time.perf_counter()
            compiled[name] = compile_variant(model, VARIANTS[name], target, args.time_budget,
                                             os.path.join(work, f"{name}.sqlite"))
            print(f"-- {name}: tuned and compiled in {time.perf_counter() - start:.0f} s", flush=True)
    inputs = compiled[names[0]].random_inputs()
    outputs = {n: compiled[n].run(inputs) for n in names}
    if gpu:
        runs = [compiled[n].kernels_only(inputs) for n in names]
        times = gpu_interleaved_medians(runs, [lambda: None] * len(runs), args.repeat)
    else:
        times = interleaved_medians([lambda c=compiled[n]: c.run(inputs) for n in names], args.repeat)
    print(f"{'variant':<10} {'ms':>9} {'vs ' + names[0]:>10} {'max rel err':>11}")
    for name, t in zip(names, times):
        err = output_error(outputs[name], outputs[names[0]])
        print(f"{name:<10} {t * 1e3:>9.3f} {t / times[0]:>10.2f} {err:>11.1e}")


if __name__ == "__main__":
    main()
