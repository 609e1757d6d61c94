"""Smoke tests of example scripts (small sizes, seconds)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nestor
from nestor.autotune.records import Records
from nestor.autotune.budget import Budget
from nestor.autotune.kernel_suite import SUITE
from nestor.autotune.tune import tune_graph

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_compare_records_times_two_tuning_runs_side_by_side(tmp_path):
    a, b = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    graph = nestor.import_onnx(SUITE["layernorm"].onnx_model())
    Records(a).close()  # A: untuned (an empty database; a missing one is an error)
    tune_graph(graph, Budget(trials=4), records_path=b, show_progress=False)
    out = _run(EXAMPLES / "compare_records.py", a, b, "--kernels", "layernorm", "--repeat", "2")
    row = next(line for line in out.splitlines() if line.startswith("layernorm"))
    assert len(row.split()) == 7 and all(float(x) > 0 for x in row.split()[1:])
    assert "geomean B/A:" in out.splitlines()[-1]


def _run(script, *args) -> str:
    """`script`'s stdout, run in this process from examples/: a fresh interpreter would import
    Nestor, TVM and ONNX Runtime again (seconds on a busy 2-core machine)."""
    import contextlib
    import io
    import os
    import runpy
    out, argv, path, cwd = io.StringIO(), sys.argv, list(sys.path), os.getcwd()
    sys.argv = [str(script), *map(str, args)]
    sys.path.insert(0, str(EXAMPLES))   # as for a script: it imports its siblings
    os.chdir(EXAMPLES)
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        if done.code not in (None, 0):
            pytest.fail(f"{script} exited with {done.code}")
    finally:
        sys.argv, sys.path[:] = argv, path
        os.chdir(cwd)
    return out.getvalue()


def _run_apart(*args) -> str:
    """`_run` in a child interpreter, for scripts that change TVM's global state (nestor.tvm.install)
    or serve RPC."""
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=EXAMPLES)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_compare_row_tails_tunes_a_prime_row_with_and_without_the_tail():
    import nestor.bench_kernels as bk
    from nestor.autotune import nest
    from nestor.passes import Rfactor
    timer = bk._time_side_by_side
    out = _run(EXAMPLES / "compare_row_tails.py", "--kernels", "softmax:4x37", "--trials", "2", "--repeat", "3",
               "--rounds", "1")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["softmax_4x37", "0", "without"], ["softmax_4x37", "0", "with"]]
    assert all(float(x) > 0 for r in rows for x in r[3:])
    assert bk._time_side_by_side is timer and nest.Rfactor is Rfactor  # left as it found them


def test_compare_units_measures_both_units_rule_candidates():
    out = _run(EXAMPLES / "compare_units.py", "squeezenet", "--tasks", "1")
    times = re.findall(r"(\d+\.\d{3}) +\d+ +\(", out.splitlines()[1])  # ms, GF/s, the tile: per unit
    assert len(times) == 2 and all(float(t) > 0 for t in times)
    assert out.splitlines()[-1].startswith("sum of calls x best: avx512")


def test_compare_chunks_times_rule_tiles_with_and_without_chunks():
    graph = nestor.import_onnx(__import__("nestor.zoo", fromlist=["light_model"]).light_model("squeezenet"))
    from nestor.autotune.space import Sketch
    conv = next(n.name for n in graph.nodes if n.kernel is not None and "conv" in n.kernel.name
                and any(c.rule == "tiling" for c in Sketch.of(n.kernel).rule_decisions()))
    out = _run(EXAMPLES / "compare_chunks.py", "squeezenet", "--nodes", conv)
    lines = out.splitlines()
    assert lines[0].startswith(f"{conv}:") and any("rule 0 tile" in line and " ms " in line for line in lines)


def test_bench_models_times_a_model_beside_onnx_runtime():
    out = _run(EXAMPLES / "bench_models.py", "--models", "squeezenet", "--repeat", "2")
    assert out.splitlines()[-1].startswith("geomean latency ratio vs ONNX Runtime: ")


def test_onnx_node_tests_runs_the_cases_of_an_op():
    assert "1 passed, 0 failed" in _run(EXAMPLES / "onnx_node_tests.py", "--ops", "Relu")


def test_compare_layouts_measures_a_task_in_both_layouts():
    assert _run(EXAMPLES / "compare_layouts.py", "squeezenet", "--tasks", "1").splitlines()[-1].startswith(
        "sum of calls x best: nchw")


def test_kernel_times_times_each_kernel_of_a_compiled_model(tmp_path):
    Records(str(tmp_path / "none.sqlite")).close()  # untuned: an empty database
    out = _run(EXAMPLES / "kernel_times.py", "squeezenet", "--records", tmp_path / "none.sqlite", "--runs", "2",
               "--top", "3")
    assert "ConvNCHWc" in out and "alone" in out.splitlines()[0]


def test_manual_schedules_beat_their_references_correctly():
    # correctness is asserted inside (outputs against NumPy and ONNX Runtime); times are not
    assert "% of NumPy" in _run(EXAMPLES / "manual_schedules.py", "--repeat", "1").splitlines()[-1]


def test_costmodel_quality_reports_held_out_ranking_accuracy(tmp_path):
    from tests.test_costmodel import synthetic_records
    records = synthetic_records(tmp_path / "q.sqlite", ("matmul",), count=16)  # measuring them takes long
    out = _run(EXAMPLES / "costmodel_quality.py", records, "--folds", "2", "--pool", "4", "--no-metaschedule")
    assert out.splitlines()[-1].startswith("cost model pairwise accuracy on held-out records: ")
    assert "MetaSchedule" not in out


def test_bench_kernels_tunes_a_kernel_with_both_tuners():
    """In this process (as every `_run`), MetaSchedule's first tuning context does not import TVM's
    tensor intrinsics again (tens of seconds on a busy 2-core machine): other tests did."""
    from tests.test_tvm_plugin import _unnamed_log_handlers_dropped
    _unnamed_log_handlers_dropped()  # an earlier test's tuning left pytest's on MetaSchedule's logger
    out = _run(EXAMPLES / "bench_kernels.py", "--kernels", "softmax", "--trials", "4", "--repeat", "2")
    assert out.splitlines()[-1].startswith("geomean speedup vs MetaSchedule: ")


def test_readme_main_command_tunes_compiles_and_times_beside_onnx_runtime(tmp_path, monkeypatch, capsys):
    """README's first command, with a small model and a few seconds of tuning (in this process)."""
    from nestor.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "models", "--models", "squeezenet", "--time-budget", "5s"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("squeezenet"))
    assert float(row.split()[1]) >= 5  # tuned for the budget before compiling
    assert out.splitlines()[-1].startswith("geomean latency ratio vs ONNX Runtime: ")


def _tiny_onnx(tmp_path) -> Path:
    import onnx

    from .test_tir_import import _conv_relu_matmul_model
    path = tmp_path / "tiny.onnx"
    onnx.save(_conv_relu_matmul_model(), str(path))
    return path


def test_tvm_plugin_compiles_a_model_both_ways_beside_onnx_runtime(tmp_path):
    """Untuned (--trials 0: MetaSchedule's workers take minutes to start on CI); the slow tests tune."""
    out = _run_apart(EXAMPLES / "tvm_plugin.py", "--onnx", _tiny_onnx(tmp_path), "--trials", "0", "--repeat", "2")
    assert re.search(r"via TVM: Nestor [\d.]+ ms, MetaSchedule [\d.]+ ms, ONNX Runtime [\d.]+ ms$",
                     out.splitlines()[-1])


@pytest.mark.slow
def test_tvm_plugin_tunes_with_both(tmp_path):
    out = _run_apart(EXAMPLES / "tvm_plugin.py", "--onnx", _tiny_onnx(tmp_path), "--trials", "3", "--repeat", "2")
    assert "via TVM: Nestor " in out.splitlines()[-1]


@pytest.mark.slow
def test_ms_cost_model_tunes_a_kernel_with_both_rankings():
    """MetaSchedule's workers take minutes to start on a busy machine: slow."""
    out = _run_apart(EXAMPLES / "ms_cost_model.py", "--kernels", "layernorm", "--trials", "4", "--repeat", "2")
    rows = [line.split() for line in out.splitlines() if line.startswith("layernorm")]
    assert rows and len(rows[-1]) == 6 and all(float(x) > 0 for x in rows[-1][1:]), out
    assert out.splitlines()[-1].startswith("geomean speedup of Nestor's cost model over XGBModel: ")


@pytest.mark.slow
def test_tvm_plugin_gives_each_side_the_time_budget(tmp_path):
    """MetaSchedule, stopped in a child process when its time is up, compiles what it measured."""
    out = _run_apart(EXAMPLES / "tvm_plugin.py", "--onnx", _tiny_onnx(tmp_path), "--time-budget", "60s",
                     "--repeat", "2")
    took = [int(t) for t in re.findall(r"tuned and compiled in (\d+) s", out)]
    assert len(took) == 2 and took[0] >= 60, out   # MetaSchedule's trials outlast any budget
    assert "via TVM: Nestor " in out.splitlines()[-1]


# --- README: every command line in it parses, the "Using it" block runs, every example is smoke-tested

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_command_lines(program: str) -> list[str]:
    """The lines of README's code blocks that start with `program`, comments dropped."""
    lines, in_block = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.startswith(program + " "):
            lines.append(line.split("  #")[0].strip())
    return lines


def _one_variant(line: str) -> list[str]:
    """A README synopsis line as one concrete command: optional parts in, the first of each set
    of alternatives, placeholders filled."""
    import shlex
    line = re.sub(r"\[([^\]]*?) \| [^\]]*\]", r"\1", line)   # [--trials N | --time-budget 10m]
    line = line.replace("[", "").replace("]", "")
    words = [w.split("|")[0] if "|" in w and not w.startswith(("'", '"')) else w for w in shlex.split(line)]
    return [{"N": "4", "NAME": "n0"}.get(w, w) for w in words]


def test_every_readme_nestor_command_parses():
    from nestor.cli import _parser
    lines = _readme_command_lines("nestor")
    assert len(lines) >= 12
    for line in lines:
        try:
            args = _parser().parse_args(_one_variant(line)[1:])
        except SystemExit:
            pytest.fail(f"README command does not parse: {line}")
        assert args.func is not None, line


def test_every_example_script_has_a_smoke_test():
    """Each script in examples/ is named by a test (here, or beside the feature it shows; the
    plugin package has test_plugin); README's `python examples/...` lines name scripts that exist."""
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for script in EXAMPLES.glob("*.py"):
        assert f'"{script.name}"' in tests, f"examples/{script.name} has no smoke test"
    for line in _readme_command_lines("python") + re.findall(r"`python (examples/\S+)", README.read_text()):
        for name in re.findall(r"examples/(\w+\.py)", line):
            assert (EXAMPLES / name).exists(), line


def test_onnx_backend_tests_runs_the_cases_of_an_op():
    out = _run(EXAMPLES / "onnx_backend_tests.py", "--ops", "Relu")
    assert re.search(r"^1 passed, 0 failed, \d+ skipped", out.splitlines()[-1]), out


def test_readme_using_it_block_runs_on_a_small_model(tmp_path, monkeypatch, capsys):
    """README's "Using it" commands in order, on a one-node model, a few trials of tuning."""
    import numpy as np
    import onnx
    from nestor.cli import main
    from tests.test_errors import tiny_model
    monkeypatch.chdir(tmp_path)
    onnx.save(tiny_model(), "model.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.save("x.npy", x)
    steps = [
        "compile model.onnx -o model.nestor",
        "compile model.onnx --tune --trials 4 --records db.sqlite -o model.nestor",
        "run model.nestor --input x=x.npy --save-outputs out.npz --repeat 2",
        "run model.nestor --profile --repeat 2",
        "ir model.onnx --node the_node --schedule default",
        "tune model.onnx --trials 4 --records db.sqlite",
        "passes -v",
    ]
    for step in steps:
        assert main(step.split()) == 0, (step, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "kernels timed alone" in out and "# node 'the_node' (Relu)" in out and "built-in passes:" in out
    np.testing.assert_array_equal(np.load("out.npz")["y"], np.maximum(x, 0))


def test_readme_bench_costmodel_reports_ranking_quality(tmp_path, capsys):
    from nestor.cli import main
    from tests.test_costmodel import synthetic_records
    records = synthetic_records(tmp_path / "k.sqlite", ("matmul",), count=16)
    assert main(["bench", "costmodel", "--records", records]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^matmul +\w+ +16 +[01]\.\d{3}", out, re.M)
    assert re.search(r"^MetaSchedule's cost model .*: pairwise [01]\.\d{3}", out, re.M)


def test_rpc_throughput_measures_candidates_through_a_tracker(tmp_path):
    """A local tracker with one device under a key (tests/test_rpc.py's loopback), two candidates."""
    from .test_rpc import Loopback
    loopback = Loopback(str(tmp_path))
    try:
        loopback.serve("one", 1)
        out = _run_apart(EXAMPLES / "rpc_throughput.py", "--tracker", loopback.address, "--keys", "one",
                   "--candidates", "2", "--number", "2")
    finally:
        loopback.close()
    row = next(line.split() for line in out.splitlines() if line.startswith("one "))
    assert row[1] == "1" and float(row[2]) > 0 and row[-1] == "1.00", out  # the first key is its own reference
