"""A TVM user's flow tuned by MetaSchedule and by Nestor (nestor.tvm), compiled by TVM both times,
timed beside ONNX Runtime.

The ONNX model goes through TVM's Relax frontend and `relax.get_pipeline("static_shape_tuning")`
twice with the same budget: once as TVM ships it, once after `nestor.tvm.install()`.
    python examples/tvm_plugin.py [--model resnet50 | --onnx model.onnx] [--time-budget 10m | --trials 64]
The three compiled models are timed interleaved (nestor.bench.interleaved_medians: turns in
alternation, medians of --repeat runs each), and their ratios to ONNX Runtime printed; the last
line reads `<model> via TVM: Nestor <a> ms, MetaSchedule <b> ms, ONNX Runtime <c> ms`.
Nestor's side measures its candidates with Nestor's builder and runner (nestor.tvm's default);
--measure both tunes it a second time, first, with MetaSchedule's LocalBuilder and LocalRunner,
and prints how many candidates each measured a minute (the timings use Nestor's).
--time-budget gives each side that long to tune. MetaSchedule's tuning has no time limit of its own, so
it runs in a child process stopped when the time is up, and the pipeline then compiles what its
database holds; Nestor stops itself (nestor.tvm.install(time_budget=...)). --trials gives each side
that many trials instead; 0 compiles untuned.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

import nestor.tvm
from nestor.cli_checks import duration


def tuned(onnx_model, target, trials: int, work_dir: str, nestor_budget: float | None = None,
          nestor_tuning: bool = False, measure: str = "nestor"):
    """The model through the Relax frontend and the static_shape_tuning pipeline, compiled
    (`measure`: whose builder and runner measure Nestor's candidates)."""
    import tvm
    import tvm.relax.frontend.onnx
    from tvm import relax
    mod = relax.frontend.onnx.from_onnx(onnx_model, keep_params_in_input=False)
    pipeline = relax.get_pipeline("static_shape_tuning", target=target, total_trials=trials, work_dir=work_dir)
    if nestor_tuning:
        with nestor.tvm.installed(time_budget=nestor_budget, measure=measure):
            mod = pipeline(mod)
    else:
        mod = pipeline(mod)
    return relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())


def metaschedule_for(seconds: float, onnx_path: str, work_dir: str) -> None:
    """MetaSchedule's tuning in a child process, stopped `seconds` after it begins to tune; its
    database in work_dir keeps what it measured (a line torn by the stop is dropped)."""
    started = os.path.join(work_dir, "tuning-started")
    child = subprocess.Popen([sys.executable, __file__, "--metaschedule-child", onnx_path, "--work-dir", work_dir])
    while not os.path.exists(started) and child.poll() is None:
        time.sleep(0.2)
    try:
        if child.wait(timeout=seconds):
            sys.exit(f"MetaSchedule's tuning failed (exit status {child.returncode}); its output is above")
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    for name in os.listdir(work_dir):
        if name.endswith(".json"):
            drop_torn_lines(os.path.join(work_dir, name))


def drop_torn_lines(path: str) -> None:
    with open(path) as f:
        lines = f.readlines()
    whole = [line for line in lines if _parses(line)]
    if len(whole) < len(lines):
        with open(path, "w") as f:
            f.writelines(line if line.endswith("\n") else line + "\n" for line in whole)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def metaschedule_child(onnx_path: str, work_dir: str) -> None:
    """What metaschedule_for runs: the pipeline with trials enough to outlast any budget."""
    from nestor.codegen import host_target
    model = onnx.load(onnx_path)
    open(os.path.join(work_dir, "tuning-started"), "w").close()
    tuned(model, host_target(), UNBOUNDED_TRIALS, work_dir)


UNBOUNDED_TRIALS = 1_000_000   # a budget of time is the limit


def measured(work_dir: str) -> int:
    """Candidates Nestor's records in work_dir hold (errors included)."""
    from nestor.autotune.ms_database import records_path
    from nestor.autotune.records import Records
    if not os.path.exists(records_path(work_dir)):
        return 0
    with Records(records_path(work_dir)) as records:
        return records.count()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a model of nestor.bench (default resnet50)")
    p.add_argument("--onnx", help="an ONNX file instead (one float input)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", metavar="10m", type=duration, help="tuning time of each side (s, m or h)")
    budget.add_argument("--trials", type=int, default=64, help="trials of each side instead (default 64)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs of each model (default 20)")
    p.add_argument("--measure", choices=("nestor", "both"), default="nestor",
                   help="both: tune Nestor's side with MetaSchedule's LocalBuilder/LocalRunner too, and compare "
                        "the candidates measured a minute")
    p.add_argument("--metaschedule-child", metavar="ONNX", help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.metaschedule_child:
        return metaschedule_child(args.metaschedule_child, args.work_dir)

    import tvm
    from nestor.bench import example_model, interleaved_medians, ort_session
    from nestor.codegen import host_target
    seconds = args.time_budget
    onnx_model = onnx.load(args.onnx) if args.onnx else example_model(args.model)
    name = args.onnx or args.model
    graph_input = onnx_model.graph.input[0]
    shape = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    session = ort_session(onnx_model)
    want = session.run(None, {graph_input.name: x})[0]
    target = host_target()

    sides = [("MetaSchedule", "tvm"), ("Nestor", "nestor")]
    if args.measure == "both":
        sides.insert(1, ("Nestor with LocalBuilder/LocalRunner", "tvm"))
    vms = {}
    for label, measure in sides:
        with tempfile.TemporaryDirectory() as work_dir:
            start = time.perf_counter()
            if label == "MetaSchedule" and seconds is not None:
                onnx_path = os.path.join(work_dir, "model.onnx")
                onnx.save(onnx_model, onnx_path)
                metaschedule_for(seconds, onnx_path, work_dir)
                vm = tuned(onnx_model, target, 0, work_dir)   # what the database holds
            else:
                trials = args.trials if seconds is None else UNBOUNDED_TRIALS
                vm = tuned(onnx_model, target, trials, work_dir, seconds, label != "MetaSchedule", measure)
            took = time.perf_counter() - start
            count = measured(work_dir)
        data = tvm.runtime.tensor(x)
        out = vm["main"](data)
        out = out if hasattr(out, "numpy") else out[0]  # a model of several outputs: the first
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-3, atol=1e-3)
        vms[label] = vm
        tuning_s = took if seconds is None else seconds   # with a budget, the tuning's share of `took`
        rate = f", {count} candidates measured: {count / max(tuning_s, 1e-9) * 60:.1f} a minute of tuning" \
            if label != "MetaSchedule" else ""
        print(f"{label}: tuned and compiled in {took:.0f} s{rate}", flush=True)
    data = tvm.runtime.tensor(x)
    nestor_s, ms_s, ort_s = interleaved_medians([lambda: vms["Nestor"]["main"](data),
                                                 lambda: vms["MetaSchedule"]["main"](data),
                                                 lambda: session.run(None, {graph_input.name: x})], args.repeat)
    print(f"to ONNX Runtime: Nestor {nestor_s / ort_s:.2f}x, MetaSchedule {ms_s / ort_s:.2f}x "
          f"(medians of {args.repeat} interleaved runs)")
    print(f"{name} via TVM: Nestor {nestor_s * 1e3:.3f} ms, MetaSchedule {ms_s * 1e3:.3f} ms, "
          f"ONNX Runtime {ort_s * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
