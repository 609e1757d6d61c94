"""MetaSchedule's builder and runner on Nestor's measurement workers (measure.py): persistent
processes where MetaSchedule's LocalBuilder and LocalRunner hand each batch to process pools
that start interpreters as they go; a batch is built in parallel, then timed one candidate at
a time with the caches flushed before each repeat; a candidate whose build or run fails, crashes
or hangs gets its error alone, and the process it took down is replaced.

    ms.tune_tir(..., **measurement())    # nestor.tvm.tuning() and install() use them by default

Unlike Nestor's own Measurer, the runner cannot check a candidate's output: MetaSchedule hands
it the built module and its arguments' shapes only, not the workload to compare with.
"""
from __future__ import annotations

import os
import shutil
import time
import weakref

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..ir.errors import NestorError
from .measure import (BUILD_TIMEOUT, REPEATS, WAKE, _serve, _shut_down, _targets, _Worker, builders,
                      default_builders, new_directory, start_all)

ARTIFACT = "module.so"   # in a folder of its own: MetaSchedule's RemoveBuildArtifact deletes the folder


class Workers:
    """The builder and runner processes of one tuning, started at its first build (for its
    target), stopped by `close` or when the last reference goes. Past `deadline` (a
    time.monotonic() value) what is left of a batch is not built or run."""

    def __init__(self, build_workers: int | None = None, timeout: float = 10.0, repeats: int = REPEATS,
                 number: int | None = None, deadline: float | None = None):
        self.build_workers, self.timeout, self.repeats, self.number = build_workers, timeout, repeats, number
        self.deadline = deadline
        self.target: str | None = None
        self.builders: list[_Worker] = []
        self.runner: _Worker | None = None
        self.directory = ""
        self._finalizer = None

    def start(self, target) -> None:
        """Start the processes for `target` (a MetaSchedule Target); nothing if started for it."""
        if self.target == str(target):
            return
        if self.target is not None:
            raise NestorError(f"measure: these workers build for {self.target}, not {target}")
        json_target, host, gpu = _targets(target)
        self.directory = new_directory()
        count = self.build_workers or default_builders()
        self.builders = builders(json_target, host, count, self.directory)
        self.runner = _Worker("runner", {"gpu": gpu}, os.path.join(self.directory, "runner.log"))
        workers = [*self.builders, self.runner]
        self._finalizer = weakref.finalize(self, _shut_down, workers, self.directory)
        try:
            start_all(workers)
        except BaseException:
            self.close()
            raise
        self.target = str(target)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self.target, self._finalizer = None, None


@derived_object
class NestorBuilder(ms.builder.PyBuilder):
    """Builds MetaSchedule's candidates in Workers' builder processes."""

    def __init__(self, workers: Workers):
        super().__init__()
        self.workers = workers
        self.count = 0

    def build(self, build_inputs):
        if not build_inputs:
            return []
        workers = self.workers
        workers.start(build_inputs[0].target)
        folders = []
        for _ in build_inputs:
            self.count += 1
            folders.append(os.path.join(workers.directory, f"candidate{self.count}"))
            os.mkdir(folders[-1])
        requests = [(b.mod, os.path.join(f, ARTIFACT)) for b, f in zip(build_inputs, folders)]
        replies = _serve(workers.builders, requests, BUILD_TIMEOUT, "build failed: ", workers.deadline)
        results = []
        for (_, path), folder, reply in zip(requests, folders, replies):
            if "error" in reply:
                shutil.rmtree(folder, ignore_errors=True)  # MetaSchedule removes only built artifacts
                results.append(ms.builder.BuilderResult(None, reply["error"]))
            else:
                results.append(ms.builder.BuilderResult(path, None))
        return results


@derived_object
class NestorRunner(ms.runner.PyRunner):
    """Times MetaSchedule's built candidates in Workers' runner process, one at a time, on random
    arguments; returns futures already done (nothing else of ours runs beside a timing)."""

    def __init__(self, workers: Workers):
        super().__init__()
        self.workers = workers

    def run(self, runner_inputs):
        workers = self.workers
        requests = [{"path": r.artifact_path, "name": "main", "signature": _signature(r.args_info),
                     "repeats": workers.repeats, "number": workers.number} for r in runner_inputs]
        if requests:
            # the cores idled (or compiled) since the last timing (measure.Measurer._build_and_time)
            requests[0]["wake"] = WAKE
        if any(r["signature"] is None for r in requests) or workers.runner is None:
            return [_done(None, "the runner takes tensor arguments of a built module only")] * len(requests)
        replies = _serve([workers.runner], requests, workers.timeout, "", workers.deadline)
        return [_done(r.get("repeats"), r.get("error")) for r in replies]


def measurement(build_workers: int | None = None, timeout: float = 10.0, repeats: int = REPEATS,
                number: int | None = None, deadline: float | None = None) -> dict:
    """The builder and runner arguments of ms.tune_tir / tune_relax, sharing one Workers."""
    workers = Workers(build_workers, timeout, repeats, number, deadline)
    return {"builder": NestorBuilder(workers), "runner": NestorRunner(workers)}


def _signature(args_info) -> tuple | None:
    """((shape, dtype), ...) of tensor arguments; None if any is not a tensor."""
    infos = [a.as_json() for a in args_info]
    if any(info[0] != "TENSOR" for info in infos):
        return None
    return tuple((tuple(int(d) for d in shape), str(dtype)) for _, dtype, shape in infos)


def _done(seconds: list[float] | None, error: str | None) -> ms.runner.RunnerFuture:
    result = ms.runner.RunnerResult([float(s) for s in seconds] if error is None else None, error)
    return ms.runner.RunnerFuture(lambda: True, lambda: result)


def close_measurement(args: dict) -> None:
    """Stop the processes behind the builder and runner among `args` (tune_tir's arguments) that
    measurement() made; others are left alone."""
    for value in args.values():
        workers = getattr(value, "workers", None)
        if isinstance(workers, Workers):
            workers.close()
