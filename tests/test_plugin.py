"""The example plugin package (examples/nestor_plugin_example), installed into a temporary folder
and used from fresh processes: Nestor finds its pass through the `nestor.passes` entry point."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import setuptools

from tests.test_cli_schedules import matmul_relu_model

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "nestor_plugin_example"

MATMUL = """
kernel matmul(A: f32[16, 32], B: f32[32, 48]) -> (Out: f32[16, 48]) {
  for i0 in 0..16 {
    for i1 in 0..48 {
      Out[i0, i1] = 0.0
      for r0 in 0..32 reduce { Out[i0, i1] += A[i0, r0] * B[r0, i1] }
    }
  }
}
"""

# Runs in the subprocess: the pass comes from the registry, as the tuner would get it.
CHECK_REVERSE = f"""
import numpy as np
from nestor.codegen.build import run_kernel
from nestor.ir import parse_kernel, print_kernel
from nestor.passes import ScheduleError, get_pass, parse_pipeline

kernel = parse_kernel('''{MATMUL}''')
reverse = get_pass("reverse")
scheduled = parse_pipeline("reverse(i0); reverse(i1)").apply(kernel)
assert "Out[15 - i0, 47 - i1]" in print_kernel(scheduled), print_kernel(scheduled)
rng = np.random.default_rng(0)
a, b = rng.standard_normal((16, 32), dtype=np.float32), rng.standard_normal((32, 48), dtype=np.float32)
want = run_kernel(kernel, [a, b])[0]
np.testing.assert_allclose(run_kernel(scheduled, [a, b])[0], want, rtol=1e-6)
np.testing.assert_allclose(want, a @ b, rtol=1e-4, atol=1e-4)
space = sorted(str(p) for p in reverse.schedule_space(kernel))
assert space == ["reverse(i0)", "reverse(i1)"], space
try:
    reverse(loop="r0").apply(kernel)
except ScheduleError as err:
    print("illegal:", err)
"""


# The plugin's sketch rule joins a CPU target's rules, with its seeds, and realizes with its pass.
CHECK_RULE = f"""
import numpy as np
from nestor.autotune.space import Sketch
from nestor.codegen.build import run_kernel
from nestor.ir import parse_kernel
from nestor.ir.machine import AVX512

kernel = parse_kernel('''{MATMUL}''')
sketch = Sketch.of(kernel, AVX512, strict=True)
print("rules:", list(sketch.rules))
seed = next(c for c in sketch.rule_decisions() if c.rule == "reversed_nest")
schedule, scheduled = sketch.realize(seed)
print("schedule:", schedule)
rng = np.random.default_rng(0)
a, b = rng.standard_normal((16, 32), dtype=np.float32), rng.standard_normal((32, 48), dtype=np.float32)
np.testing.assert_allclose(run_kernel(scheduled, [a, b])[0], a @ b, rtol=1e-4, atol=1e-4)
"""


def pip_builds_offline() -> bool:
    """setuptools builds wheels by itself from 70.1; before, it needs the `wheel` package."""
    version = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def install(source: Path, target: Path) -> None:
    """`pip install --target`, offline. A fresh Python 3.11 venv has setuptools 65 and no `wheel`,
    so pip cannot build there; setuptools' own commands then lay out what pip would install:
    the package and its metadata, entry_points.txt included."""
    if pip_builds_offline():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
               "--no-index", "--target", str(target), str(source)]
    else:
        target.mkdir()
        cmd = [sys.executable, "-c", "from setuptools import setup; setup()", "-q",
               "build_py", "--build-lib", str(target), "egg_info", "--egg-base", str(target)]
    subprocess.run(cmd, cwd=source, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment variables under which Python sees the installed plugin."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = tmp / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install(source, tmp / "site")
    return {**os.environ, "PYTHONPATH": str(tmp / "site")}


def run(args, env, cwd) -> str:
    done = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_nestor_passes_lists_the_plugin(plugin_env, tmp_path):
    out = run(["-m", "nestor.cli", "passes"], plugin_env, tmp_path)
    assert "plugin passes:\n  reverse(loop: str)  [plugin: nestor-plugin-example 0.1.0, entry point " \
           "reverse = nestor_plugin_example:Reverse]" in out
    assert "failed to load" not in out


def test_pipeline_with_the_plugin_in_nestor_ir(plugin_env, tmp_path):
    onnx.save(matmul_relu_model(), str(tmp_path / "mlp.onnx"))
    out = run(["-m", "nestor.cli", "ir", "mlp.onnx", "--node", "act1", "--schedule",
               "reverse(i0); vectorize(i1)"], plugin_env, tmp_path)
    assert "Out[15 - i0, i1] = max(X[15 - i0, i1], 0.0)" in out and "vectorized" in out


def test_reversed_kernel_computes_the_same(plugin_env, tmp_path):
    out = run(["-c", CHECK_REVERSE], plugin_env, tmp_path)
    assert "illegal: reverse(r0): loop r0: its iterations are not independent" in out


def test_a_broken_plugin_is_listed_with_its_error(plugin_env, tmp_path):
    dist = tmp_path / "broken_example-0.1.dist-info"  # what an installed broken package leaves
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-example\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nestor.passes]\nbroken = no_such_module:Pass\n")
    env = {**plugin_env, "PYTHONPATH": f"{plugin_env['PYTHONPATH']}{os.pathsep}{tmp_path}"}
    out = run(["-m", "nestor.cli", "passes"], env, tmp_path)
    assert "\n  reverse(loop: str)" in out
    assert "plugins that failed to load:\n  pass plugin 'broken' (no_such_module:Pass" in out
    assert "ModuleNotFoundError" in out


def test_the_plugin_sketch_rule_joins_the_cpu_rules(plugin_env, tmp_path):
    out = run(["-c", CHECK_RULE], plugin_env, tmp_path)
    assert "rules: ['tiling', 'reversed_nest']" in out
    assert "schedule: reverse(i0); default(i0)" in out
    listed = run(["-m", "nestor.cli", "passes"], plugin_env, tmp_path)
    assert "cpu: rows, tiling, reversed_nest [plugin: nestor_plugin_example]" in listed
