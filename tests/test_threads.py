"""A compiled model shared between threads: every caller gets its own correct outputs."""
import threading

import numpy as np

import nestor
from tests.test_gpu_runtime import tiny_model


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
