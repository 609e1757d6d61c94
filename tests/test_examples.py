"""Smoke tests of example scripts (small sizes, seconds)."""
import re
import subprocess
import sys
from pathlib import Path

import nestor
from nestor.autotune.budget import Budget
from nestor.autotune.kernel_suite import SUITE
from nestor.autotune.tune import tune_graph

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_compare_records_times_two_tuning_runs_side_by_side(tmp_path):
    a, b = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")
    graph = nestor.import_onnx(SUITE["layernorm"].onnx_model())
    tune_graph(graph, Budget(trials=4), records_path=b, show_progress=False)  # A: untuned
    done = subprocess.run([sys.executable, str(EXAMPLES / "compare_records.py"), a, b, "--kernels", "layernorm",
                           "--repeat", "2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("layernorm"))
    assert len(row.split()) == 7 and all(float(x) > 0 for x in row.split()[1:])
    assert "geomean B/A:" in done.stdout.splitlines()[-1]


def _run(*args) -> str:
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=EXAMPLES)
    assert done.returncode == 0, done.stderr
    return done.stdout


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
