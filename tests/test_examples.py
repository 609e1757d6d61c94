"""Smoke tests of example scripts (small sizes, seconds)."""
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
