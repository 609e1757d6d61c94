"""A MetaSchedule builder and runner inside the test's process: MetaSchedule's local ones start
worker interpreters that import TVM (and its tensor intrinsics: tens of seconds on a busy 2-core
machine) before the first candidate, which a few-trial test cannot afford."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

_BUILT: dict[str, object] = {}   # artifact path (never written) -> compiled module


@derived_object
class InProcessBuilder(ms.builder.PyBuilder):
    def build(self, build_inputs):
        results = []
        for b in build_inputs:
            # a directory of its own: MetaSchedule's RemoveBuildArtifact deletes the artifact's directory
            name = os.path.join(tempfile.mkdtemp(prefix="nestor-ms-"), "module")
            try:
                _BUILT[name] = tvm.compile(b.mod, target=b.target)
                results.append(ms.builder.BuilderResult(name, None))
            except Exception as err:  # a build error is a result, as MetaSchedule's builders report it
                results.append(ms.builder.BuilderResult(None, str(err)))
        return results


@derived_object
class InProcessRunner(ms.runner.PyRunner):
    def run(self, runner_inputs):
        futures = []
        for r in runner_inputs:
            futures.append(_done(_time(r)))
        return futures


def _time(r) -> ms.runner.RunnerResult:
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.random.rand(*[int(d) for d in a.shape]).astype(str(a.dtype)), dev)
            for a in r.args_info]
    try:
        f = _BUILT.pop(r.artifact_path).mod.time_evaluator("main", dev, number=3, repeat=2)
        return ms.runner.RunnerResult([float(s) for s in f(*args).results], None)
    except Exception as err:
        return ms.runner.RunnerResult(None, str(err))


def _done(result) -> ms.runner.RunnerFuture:
    return ms.runner.RunnerFuture(lambda: True, lambda: result)
