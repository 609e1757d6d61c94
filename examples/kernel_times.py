"""Each kernel of a model compiled from tuning records, timed in place (inside full runs of the
model, so with the caches as the model leaves them), alone (run back to back on the model's own
buffers) and as its task's best time in the records (timed alone by the tuner, after a cache
flush). Where the model loses time between the tuner's estimate and its real run, this names the
kernels, and tells a loss in the model (in place vs alone) from a machine slower now than when
it was tuned (alone vs record).

    python examples/kernel_times.py resnet50 --records r50.sqlite [--runs 15] [--top 25]
"""
import argparse
import time

import numpy as np

import nestor
from nestor.autotune.records import Records
from nestor.autotune.tune import target_key
from nestor.ir import structural_hash
from nestor.zoo import light_model


def step_times(compiled, runs: int) -> tuple[list[float], float]:
    """Median seconds of each step, and of the whole run, over `runs` runs of the kernels."""
    compiled.kernels_only(compiled.random_inputs())
    steps = compiled._own().steps
    times = [[] for _ in steps]
    totals = []
    for _ in range(runs + 2):
        start = time.perf_counter()
        for t, (func, args) in zip(times, steps):
            s = time.perf_counter()
            func(*args)
            t.append(time.perf_counter() - s)
        totals.append(time.perf_counter() - start)
        time.sleep(0.05)
    return [float(np.median(t[2:])) for t in times], float(np.median(totals[2:]))


def alone_times(compiled, runs: int) -> list[float]:
    """Median seconds of each step run `runs` times back to back (after two untimed runs)."""
    out = []
    for func, args in compiled._own().steps:
        times = []
        for _ in range(runs + 2):
            s = time.perf_counter()
            func(*args)
            times.append(time.perf_counter() - s)
        out.append(float(np.median(times[2:])))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="one of nestor.zoo's light models")
    parser.add_argument("--records", required=True)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--top", type=int, default=25, help="kernels shown, largest loss first")
    args = parser.parse_args()
    model = light_model(args.model)
    nodes = {n.name: n for n in nestor.import_onnx(model).nodes}
    compiled = nestor.compile(model, records=args.records)
    in_place, total = step_times(compiled, args.runs)
    alone = alone_times(compiled, args.runs)
    with Records(args.records) as records:
        key = target_key()
        best = []
        for step in compiled.plan["steps"]:
            node = nodes.get(step["node"])
            rec = records.best(structural_hash(node.kernel), key) if node and node.kernel else None
            best.append(rec.median if rec else None)
    print(f"model: {total * 1e3:.2f} ms a run; its kernels in place {sum(in_place) * 1e3:.2f} ms, "
          f"alone {sum(alone) * 1e3:.2f} ms; their tasks' records {sum(b for b in best if b) * 1e3:.2f} ms")
    rows = sorted(zip(compiled.plan["steps"], in_place, alone, best), key=lambda r: -(r[1] - (r[3] or 0)))
    print(f"{'node':10s} {'op':24s} {'in place ms':>11s} {'alone ms':>9s} {'record ms':>9s} {'ratio':>6s}")
    for step, t, a, b in rows[:args.top]:
        print(f"{step['node'][:10]:10s} {step['op'][:24]:24s} {t * 1e3:11.3f} {a * 1e3:9.3f} "
              + (f"{b * 1e3:9.3f} {t / b:6.2f}" if b else f"{'-':>9s} {'-':>6s}"))


if __name__ == "__main__":
    main()
