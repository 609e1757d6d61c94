"""Candidates measured per minute through a TVM RPC tracker, for each of several keys (say one
with one device and one with two): the same sampled schedules of a matmul, built here and timed
on the key's devices. Start the tracker and servers first:

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key one      # on one device
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key two      # on each of two devices
    python examples/rpc_throughput.py --tracker HOST:9190 --keys one two [--candidates 16] [--number 100]

Builds take about sum(build seconds) / build workers of a batch (the "builds s" column), overlapped
with the timing on the devices, which is what more devices divide: more devices measure more
candidates a minute while the timing takes longer than the builds (slow devices, long timings:
--size, --repeats, --number), not once the builds are what the batch waits for. "vs first" is the
geometric mean of each candidate's time on the key against the first key's (1.00: the same).
Servers sharing one host, each under `taskset`, need TVM_BIND_THREADS=0 as well: else TVM pins
every server's threads to the machine's first cores.
"""
import argparse
import random
import statistics
import time

from nestor.autotune.rpc_measure import RPCMeasurer
from nestor.autotune.space import Sketch
from nestor.codegen import as_target, machine_params
from nestor.ir import parse_kernel


def matmul(n: int):
    return parse_kernel(f"""kernel mm(A: f32[{n}, {n}], B: f32[{n}, {n}]) -> (C: f32[{n}, {n}]) {{
  for i in 0..{n} {{ for j in 0..{n} {{ C[i, j] = 0.0 }} }}
  for i in 0..{n} {{ for j in 0..{n} {{ for k in 0..{n} reduce {{ C[i, j] += A[i, k] * B[k, j] }} }} }}
}}""")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracker", required=True, metavar="HOST:PORT")
    p.add_argument("--keys", required=True, nargs="+", help="device keys, each measured in turn")
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="the matmul's N (N×N by N×N; default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats a candidate (default 3)")
    p.add_argument("--number", type=int, help="runs a timed repeat (default: about 1 ms a repeat)")
    p.add_argument("--target", help="the devices' target (default: this host's CPU)")
    args = p.parse_args()
    kernel = matmul(args.size)
    sketch = Sketch.of(kernel, machine_params(as_target(args.target)))
    rng = random.Random(0)
    candidates = [sketch.realize(sketch.sample(rng))[1] for _ in range(args.candidates)]
    print(f"{'key':<12} {'devices':>7} {'cand/min':>9} {'batch s':>8} {'builds s':>8} {'ok':>4} {'vs first':>8}")
    first = None  # the first key's median time of each candidate: the others' results compared with them
    for key in args.keys:
        with RPCMeasurer(kernel, args.tracker, key, target=args.target, repeats=args.repeats, number=args.number,
                         timeout=120) as m:
            m.measure(candidates[:2])  # every process has run once
            start = time.perf_counter()
            results = m.measure(candidates)
            seconds = time.perf_counter() - start
            builds = sum(r.build_seconds for r in results) / len(m._builders)
            devices = len({r.device for r in results if r.ok})
            medians = [r.median for r in results]
            first = first or medians
            ratios = [t / f for t, f in zip(medians, first) if t and f]
            same = statistics.geometric_mean(ratios) if ratios else float("nan")
            print(f"{key:<12} {devices:>7} {60 * len(results) / seconds:>9.1f} {seconds:>8.1f} {builds:>8.1f} "
                  f"{sum(r.ok for r in results):>4} {same:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
