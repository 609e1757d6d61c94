"""examples/graph_choices.py: every variant of a model compiles, agrees with the others and is timed."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "graph_choices.py"


def test_graph_choices_times_agreeing_variants_of_a_model(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "squeezenet", "--time-budget", "0", "--repeat", "2",
                           "--variants", "plain,winograd"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[-2:]}
    assert set(rows) == {"plain", "winograd"}
    assert float(rows["plain"][1]) == 1.0 and float(rows["winograd"][0]) > 0
    assert float(rows["winograd"][2]) < 1e-4       # the Winograd graph computes what the plain one does


def test_graph_choices_names_an_unknown_variant(capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit):
        main(["squeezenet", "--variants", "plain,fft"])
    assert "unknown variant(s) ['fft']" in capsys.readouterr().err
