"""A compiled model shared between threads: every caller gets its own correct outputs."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import nestor
from tests.test_gpu_runtime import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_runs_from_eight_threads_each_get_their_own_outputs():
    compiled = nestor.compile(tiny_model())
    inputs = [compiled.random_inputs(seed=t) for t in range(8)]
    want = [compiled.run(x) for x in inputs]   # one thread at a time
    bench = compiled.kernels_only(inputs[0])   # its workspace is apart from the runs'
    wrong, errors = [], []
    start = threading.Barrier(8)

    def caller(t):
        try:
            start.wait()
            for _ in range(25):
                got = compiled.run(inputs[t])
                wrong.extend(t for a, b in zip(got, want[t]) if not np.array_equal(a, b))
        except Exception as err:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(err)
    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not wrong
    assert 1 <= len(compiled._free) <= 8   # an arena per run at once, kept for the next runs
    bench()
    out = compiled._own().tensors[compiled.output_names[0]].numpy()
    np.testing.assert_array_equal(out, want[0][0])


ALLOWED_CORES = """
import os
import numpy as np
import nestor  # sets up TVM's thread pool before it starts
import tvm
from tvm.script import tirx as T

@T.prim_func
def add_one(a: T.Buffer((4096,), "float32")):
    for i in T.parallel(4096):
        a[i] = a[i] + T.float32(1)

x = tvm.runtime.tensor(np.zeros(4096, "float32"))
tvm.compile(add_one, target="llvm")(x)
assert (x.numpy() == 1).all()
tasks = f"/proc/{os.getpid()}/task"
print(sorted({open(f"{tasks}/{t}/status").read().split("Cpus_allowed_list:")[1].split()[0] for t in os.listdir(tasks)}))
"""

@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a second core to pin to")
def test_a_process_given_one_core_keeps_its_kernels_threads_on_it(tmp_path):
    core = max(os.sched_getaffinity(0))  # not the machine's first, where TVM would pin its own
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    env["TVM_NUM_THREADS"] = "2"  # TVM pins threads only where there are several
    script = tmp_path / "allowed_cores.py"  # TVMScript reads its source: a file, not -c
    script.write_text(ALLOWED_CORES)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == f"['{core}']"
