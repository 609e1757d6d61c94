"""Measuring candidates: built in worker processes, timed one at a time in an isolated runner
process, and checked against the unscheduled kernel's output before any time counts.

Why processes: a candidate can crash (an out-of-bounds store segfaults), hang, or make TVM or LLVM
fail. Each is recorded as that candidate's error, and a process it killed is replaced for the next.
Why two phases: on a 2-core machine a build next to a timing run distorts the timing, so a batch is
first built (in parallel) and only then timed (serially, with nothing else of ours running).
Workers are fresh interpreters started with subprocess: not fork (TVM is not fork-safe once used),
and not multiprocessing's spawn (it re-runs the caller's main script, so an unguarded script that
tunes would recurse). They talk to the parent over a socket pair with pickled messages.
On an NVIDIA GPU the same: builders compile (nvcc or NVRTC, through TVM), the runner times on the
device with its event timer, and a kernel that faults (an illegal address poisons the process's
CUDA context) gets its error and the runner is replaced before the next candidate.
Between batches the builders also realize the search's pools for it (realize.py).
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import math
import os
import pickle
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Callable
from multiprocessing.connection import Connection, Pipe, wait

import numpy as np

from ..ir import Kernel, structural_hash
from ..ir.errors import NestorError
from ..ir.machine import MachineParams
from ..passes import Schedule
from .records import LOCAL_DEVICE
from .space import Candidate, Sketch

# Before each repeat every argument but the first is flushed from the caches (clflush), as a
# kernel finds them in a model: its input was just written by the kernel before it, its weights
# were last read a whole run ago. Flushing everything (64 MiB written over) timed ResNet-50's
# convs up to 2x slower than they ran in place (examples/kernel_times.py) and its DRAM-bound
# times hid the differences between tiles; these times are within 0-15% of the in-place ones.
FLUSH = "cache_flush_cpu_non_first_arg"
# On the GPU the whole L2 is overwritten before each repeat (_register_l2_flush): TVM 0.27 has
# no flush of its own for CUDA, and a kernel's inputs in a model come from DRAM more often than
# from an L2 of 50 MB that the kernels between two calls of it have filled.
FLUSH_GPU = "nestor.measure.l2_flush_cuda"
# Timed repeats per candidate. Most of a task's candidates lie within 5% of each other, so the
# order the cost model learns (from each one's fastest repeat) is mostly noise unless a
# measurement is repeatable at that grain; a repeat costs about a millisecond, a build 0.2 s.
REPEATS = 10
MIN_REPEAT = 1e-3        # number=None: a repeat runs a short kernel enough times to last about this long
# number=None: a kernel whose run lasts this long is timed one run a repeat, so every timed run
# finds its weights flushed. Two runs a repeat timed ResNet-50's late 1x1 convs (4 MB of weights,
# 0.66 ms) with one of them on weights still in L3: their top schedules, all 0.65-0.68 ms so,
# ran 0.73-1.17 ms in the model, where the weights always come from DRAM.
SINGLE_RUN = 2e-4
START_TIMEOUT = 120.0    # a worker's start: a fresh interpreter importing TVM (~1.5 s when idle)
BUILD_TIMEOUT = 120.0    # LLVM can take minutes on a huge unrolled loop: that is an error too
# A candidate still building or running when the time budget ends: cut, not the candidate's
# fault, so the tuner does not record it (a later run measures it).
BUDGET_ENDED = "not measured: the time budget ended"
# Tests: a builder sleeps this many seconds before each candidate's build (a hung build).
BUILD_DELAY_ENV = "NESTOR_TEST_BUILD_DELAY"
DIR_PREFIX = "nestor-measure-"  # then the owner's pid and a dash: nestor-measure-1234-k2j4x_
# A search round measures 16 candidates: more builders would idle, each holding TVM (~260 MB).
MAX_BUILDERS = 16
WAKE = 0.1               # a batch's first candidate runs untimed this long before its timing


@dataclass(frozen=True)
class MeasureResult:
    median: float | None              # seconds per run; None when there is an error
    repeats: tuple[float, ...] = ()
    error: str | None = None
    build_seconds: float = 0.0
    device: str = LOCAL_DEVICE        # the device key it ran on (records keep it)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def fastest(self) -> float | None:
        """The fastest repeat: what the cost model learns from. On a shared machine another
        process's burst slows some repeats several fold, and no burst makes a kernel faster: in
        a 5-minute ResNet-50 tune on 2 busy cores a tenth of the medians of five were 2.8x their
        fastest repeat or more, and of 172 schedules measured twice the fastest repeats differed
        by 2% (the medians by 7%) in half, by 1.5x (3.8x) in a tenth."""
        return min(self.repeats) if self.repeats and self.median is not None else self.median


class Measurer:
    """Builds and times candidate schedules of `reference` (the unscheduled kernel), whose output
    on seeded random inputs (the same for every candidate) is the truth they are checked against.

    Each candidate gets: one checked run, then `repeats` timed repeats of `number` runs (None:
    runs_per_repeat), all but the first argument flushed from the caches before each repeat
    (FLUSH); `timeout` bounds the whole.
    `inputs` replaces the random inputs (integer inputs are random 0s and 1s: often indices).
    `target`: anything `codegen.as_target` takes (None: this host; "cuda": this machine's GPU,
    which must be present). `build_workers` (None): `default_builders()`.
    The reference output is computed on the CPU (the unscheduled kernel binds no GPU threads).

    `time_left()`: the seconds left of the tuning's time budget (None: no limit); a batch's
    builds and runs stop when they run out, and what they cut gets BUDGET_ENDED.

    `switch(reference)` moves the same worker processes to another kernel (the tasks of a model
    take turns); a kernel switched back to keeps its inputs and reference outputs."""

    def __init__(self, reference: Kernel | None, target=None, repeats: int = REPEATS, number: int | None = None,
                 timeout: float = 10.0, build_workers: int | None = None, rtol: float = 1e-4,
                 atol: float = 1e-5, seed: int = 0, inputs: list[np.ndarray] | None = None,
                 time_left: Callable[[], float | None] | None = None):
        self.repeats, self.number, self.timeout = repeats, number, timeout
        self._time_left = time_left
        self._rtol, self._atol = rtol, atol
        self._constants: set[int] = set()
        self._count = 0
        self._tasks: dict[str, int] = {}  # structural hash -> number of its files in _dir
        target, host, self._gpu = _targets(target)
        if build_workers is None:
            build_workers = default_builders()
        self._dir = new_directory()
        self._builders = builders(target, host, build_workers, self._dir)
        self._runners = self._new_runners()
        workers = self._workers = self._builders + self._runners
        self._finalizer = weakref.finalize(self, _shut_down, workers, self._dir)
        try:
            start_all(workers)
            self._signature = None
            if reference is not None:  # else: the first switch() names it
                self.switch(reference, seed, inputs)
        except BaseException:
            self.close()
            raise

    def switch(self, reference: Kernel, seed: int = 0, inputs: list[np.ndarray] | None = None,
               constants: tuple[int, ...] = ()) -> None:
        """Measure candidates of `reference` from now on. Its output on the inputs is computed
        once (the first switch to it) and is the truth candidates are checked against.
        `constants`: the inputs that are model constants (weights). Stages of a candidate that
        read only those (packing a weight) run once before the timing, not in it, as they run
        once at compile time in the deployed model."""
        self._constants = set(constants)
        key = structural_hash(reference)
        first = key not in self._tasks
        n = self._tasks.setdefault(key, len(self._tasks))
        config = {"inputs": os.path.join(self._dir, f"inputs{n}.npz"),
                  "reference": os.path.join(self._dir, f"reference{n}.npz"),
                  "outputs": [(b.name, b.shape, b.dtype) for b in reference.outputs],
                  "rtol": self._rtol, "atol": self._atol}
        if first:
            arrays = _random_inputs(reference, seed) if inputs is None else _checked(reference, inputs)
            np.savez(config["inputs"], *arrays)
            # in a builder, on the CPU: the reference is unscheduled (no GPU threads bound), and
            # a builder is idle between batches
            (ref,) = _serve(self._builders[:1], [{"reference": reference, "inputs": config["inputs"],
                                                  "save": config["reference"]}], BUILD_TIMEOUT, "")
            if "error" in ref:
                del self._tasks[key]
                raise NestorError(f"measure: the reference kernel {reference.name} fails: {ref['error']}")
        self._signature = _signature(reference)
        for w in self._runners:
            w.config = {**w.config, **config}  # what a replacement runner starts with
        for reply in _serve(self._runners, [{"configure": config}] * len(self._runners), self.timeout, ""):
            if "error" in reply:
                raise NestorError(f"measure: the runner cannot take kernel {reference.name}: {reply['error']}")

    def _new_runners(self) -> list[_Worker]:
        """The processes that time candidates, one candidate each at a time: here, one."""
        return [_Worker("runner", {"gpu": self._gpu}, os.path.join(self._dir, "runner.log"))]

    def _constant_stages(self, kernel: Kernel) -> tuple[list[Kernel], dict]:
        """The kernels to build for a candidate, and the runner's instructions: `stages` (name,
        input indices, output shape and dtype, run once before timing) and `kept` (the inputs
        the timed kernel takes, before the stages' outputs)."""
        if not self._constants:
            return [kernel], {}
        from ..codegen.constant_stages import hoist_constant_stages
        main, stages, kept = hoist_constant_stages(kernel, self._constants)
        if not stages:
            return [kernel], {}
        named = [dataclasses.replace(st.kernel, name=f"{kernel.name}_stage{j}") for j, st in enumerate(stages)]
        calls = {"stages": [(k.name, list(st.sources), k.outputs[0].shape, k.outputs[0].dtype)
                            for k, st in zip(named, stages)], "kept": kept}
        return [main, *named], calls

    def measure(self, candidates: list[Kernel]) -> list[MeasureResult]:
        """One result per candidate, in order; a bad candidate gets an error, never an exception."""
        results: list[MeasureResult | None] = [None] * len(candidates)
        jobs = []  # (position, kernel under a unique name, .so path)
        for n, k in enumerate(candidates):
            if _signature(k) != self._signature:
                results[n] = MeasureResult(None, error="parameters differ from the reference kernel's")
                continue
            self._count += 1
            # A unique function name per module: nothing can resolve to another candidate's code.
            name = f"candidate{self._count}"
            jobs.append((n, dataclasses.replace(k, name=name), os.path.join(self._dir, name + ".so")))
        # per job: the kernels to build (the candidate, or its part after constant stages, then
        # those stages) and how the runner calls them
        parts = [self._constant_stages(k) for _, k, _ in jobs]
        left = self._time_left() if self._time_left is not None else None
        deadline = None if left is None else time.monotonic() + left

        builds = [(kernels, path) for (_, _, path), (kernels, _) in zip(jobs, parts)]
        runs = [{"path": path, "name": k.name, "repeats": self.repeats, "number": self.number, **calls}
                for (_, k, path), (_, calls) in zip(jobs, parts)]
        for (n, _, path), (b, r) in zip(jobs, self._build_and_time(builds, runs, deadline)):
            _remove(path)
            build_s = b.get("seconds", 0.0)
            if r is None:  # not built
                results[n] = MeasureResult(None, error=b["error"], build_seconds=build_s)
                continue
            device = r.get("device", LOCAL_DEVICE)
            if "error" in r:
                results[n] = MeasureResult(None, error=r["error"], build_seconds=build_s, device=device)
            else:
                reps = tuple(r["repeats"])
                results[n] = MeasureResult(statistics.median(reps), reps, None, build_s, device)
        return results

    def realize(self, sketch: Sketch, candidates: list[Candidate],
                machine: MachineParams) -> tuple[list[Schedule], np.ndarray] | None:
        """`realize.realize_pool`, the candidates dealt in order over the builder processes (idle
        while the search proposes); None where one of them fails (the caller then realizes the
        pool itself, where the error is its own)."""
        parts = min(len(self._builders), len(candidates))
        if not parts:
            return [], np.zeros((0, 0), np.float32)
        cut = [len(candidates) * n // parts for n in range(parts + 1)]
        requests = [{"realize": (sketch, candidates[a:b], machine)} for a, b in zip(cut, cut[1:])]
        replies = _serve(self._builders, requests, BUILD_TIMEOUT, "realizing failed: ")
        if any("error" in r for r in replies):
            return None
        for r in replies:
            sketch.refused.update(r["refused"])
        return [s for r in replies for s in r["schedules"]], np.concatenate([r["features"] for r in replies])

    def _build_and_time(self, builds: list, runs: list[dict], deadline: float | None) -> list[tuple[dict, dict | None]]:
        """Each job's build reply and, where it built, its run's reply: every job built (in
        parallel), then timed, so that no build disturbs a timing on this machine."""
        built = _serve(self._builders, builds, BUILD_TIMEOUT, "build failed: ", deadline)
        ok = [n for n, b in enumerate(built) if "error" not in b]
        if ok:
            # The cores idled (or compiled) since the last timing: the first candidates of a
            # batch timed 1.5x slower than the same code later in it, in every repeat.
            runs[ok[0]]["wake"] = WAKE
        timed = dict(zip(ok, _serve(self._runners, [runs[n] for n in ok], self.timeout, "", deadline)))
        return [(b, timed.get(n)) for n, b in enumerate(built)]

    def close(self) -> None:
        """Stop the worker processes and delete the temporary files."""
        self._finalizer()

    def __enter__(self) -> Measurer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the parent's side of the workers ----

def new_directory() -> str:
    """A fresh directory for a measurement's files (its owner's pid in the name), after
    removing those of owners that are gone."""
    remove_stale_directories()
    return tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")


def default_builders() -> int:
    """Builder processes: one per core, as a batch is all built before any of it is timed (no
    build competes with a timing), up to MAX_BUILDERS."""
    from ..codegen import host_cores
    return min(host_cores(), MAX_BUILDERS)


def builders(target: str, host: str, count: int, directory: str) -> list[_Worker]:
    """`count` (at least one) builder processes for `target` (JSON), not started, logging in `directory`."""
    return [_Worker("builder", {"target": target, "host": host}, os.path.join(directory, f"builder{n}.log"))
            for n in range(max(1, count))]


def start_all(workers: list[_Worker]) -> None:
    """Start the workers and wait until each is ready (all started first: the imports overlap)."""
    for w in workers:
        w.start()
    for w in workers:
        w.ready()


class _Worker:
    """A child interpreter serving one request at a time; replaced when it dies or hangs."""

    def __init__(self, role: str, config: dict, log: str):
        self.role, self.config, self.log = role, config, log
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.since = 0.0  # when the request in flight was sent

    def start(self) -> None:
        ours, theirs = Pipe()
        code = (f"import sys; sys.path += {_worker_path()!r}; "
                f"from nestor.autotune.measure import _child; _child({theirs.fileno()})")
        with open(self.log, "ab") as log:
            # Isolated (-I): neither the working directory nor PYTHON* variables nor the user's
            # site shape what runs here; the parent's path, less the user's directories, is
            # appended for a Nestor or TVM found only through it.
            # Own session: the user's Ctrl-C is the parent's to handle; it stops us in close().
            self.proc = subprocess.Popen([sys.executable, "-I", "-c", code], pass_fds=[theirs.fileno()],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        theirs.close()
        self.conn = ours
        ours.send((self.role, self.config))

    def ready(self) -> None:
        try:
            if self.conn.poll(START_TIMEOUT) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        self.stop()
        with open(self.log, errors="replace") as f:
            tail = " | ".join(f.read().strip().splitlines()[-3:])
        raise NestorError(f"measure: the {self.role} process did not start: {tail or 'no output'}")

    def submit(self, request) -> None:
        for retry in (False, True):
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self.start()
                self.ready()
            try:
                self.conn.send(request)
                break
            except OSError:  # it died since the poll (killed): once more, to a new one
                self.stop()
                if retry:
                    raise
        self.since = time.monotonic()

    def reply(self) -> dict:
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the child died mid-request
            try:
                code = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
            self.stop()
            if code is not None and code < 0:
                return {"error": f"crashed (signal {-code}, {signal.Signals(-code).name})"}
            return {"error": f"crashed (exit status {code})"}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.conn.close()
            self.proc = self.conn = None


def _serve(workers: list[_Worker], requests: list, timeout: float, prefix: str,
           deadline: float | None = None) -> list[dict]:
    """Each request's reply, in order, spread over the workers (one request each at a time).
    A worker that dies or runs past `timeout` gets that request an error ("crashed ...",
    "timeout ...", after `prefix`) and is replaced for the next; so is one whose reply says
    `replace` (its process is unusable: a GPU fault). At `deadline` (time.monotonic) the
    requests in flight are stopped and they and those not sent get BUDGET_ENDED."""
    (replies,) = _serve_stages([(workers, timeout, prefix)], [requests], deadline)
    return replies


def _serve_stages(stages: list[tuple[list[_Worker], float, str]], requests: list[list],
                  deadline: float | None = None) -> list[list[dict | None]]:
    """As _serve, for jobs that pass through stages of workers (stages[k]: workers, timeout,
    prefix; requests[k][n]: job n's request there): a job goes on to the next stage as soon as
    its reply has no error. replies[k][n]; None where job n did not reach stage k."""
    jobs = len(requests[0])
    replies: list[list] = [[None] * jobs for _ in stages]
    todo = [collections.deque(range(jobs))] + [collections.deque() for _ in stages[1:]]
    idle = [list(workers) for workers, _, _ in stages]
    busy: dict[_Worker, tuple[int, int]] = {}  # worker -> (stage, job)
    while any(todo) or busy:
        if deadline is not None and time.monotonic() >= deadline:
            for w, (k, n) in busy.items():
                w.stop()
                replies[k][n] = {"error": BUDGET_ENDED}
            for k, waiting in enumerate(todo):
                for n in waiting:
                    replies[k][n] = {"error": BUDGET_ENDED}
            break
        for k, waiting in enumerate(todo):
            while waiting and idle[k]:
                w = idle[k].pop()
                n = waiting.popleft()
                w.submit(requests[k][n])
                busy[w] = (k, n)
        end = min(w.since + stages[k][1] for w, (k, _) in busy.items())
        if deadline is not None:
            end = min(end, deadline)
        ready = wait([w.conn for w in busy], max(end - time.monotonic(), 0.0))
        for w, (k, n) in list(busy.items()):
            _, timeout, prefix = stages[k]
            if w.conn in ready:
                r = w.reply()
                if "error" in r and r["error"].startswith("crashed"):
                    r["error"] = prefix + r["error"]
                if r.pop("replace", False):
                    w.stop()
            elif time.monotonic() - w.since >= timeout:
                w.stop()
                r = {"error": f"{prefix}timeout after {timeout:g} s"}
            else:
                continue
            replies[k][n] = r
            del busy[w]
            idle[k].append(w)
            if "error" not in r and k + 1 < len(stages):
                todo[k + 1].append(n)
    return replies


def _worker_path() -> list[str]:
    """The parent's import path less the directories a user's own modules come from (the
    working directory, the main script's): a worker imports Nestor and its dependencies only."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    own = {os.path.realpath(os.getcwd())}
    if main:
        own.add(os.path.realpath(os.path.dirname(os.path.abspath(main))))
    return [p for p in sys.path if p and os.path.realpath(p) not in own]


# A directory an older Nestor named without its owner's pid (DIR_PREFIX, then mkdtemp's 8 random
# characters) is judged by its use: a live owner's workers hold their logs in it open, and a
# measuring owner writes a module into it for every candidate.
PIDLESS_NAME = re.compile(re.escape(DIR_PREFIX) + r"[a-z0-9_]{8}")
PIDLESS_IDLE = 3600.0  # seconds unchanged before such a directory may be stale


def remove_stale_directories() -> None:
    """Remove the measurement directories (DIR_PREFIX, then the owner's pid) of processes that
    are gone: a killed tuner leaves its candidates' modules behind. A directory whose pid now
    belongs to a process started after the directory last changed is stale too (a reused pid).
    One named without a pid (an older Nestor's) is stale when it has not changed for
    PIDLESS_IDLE and none of our processes has a file open in it or works in it."""
    import psutil
    root = tempfile.gettempdir()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    pidless = []
    for entry in entries:
        m = re.fullmatch(re.escape(DIR_PREFIX) + r"(\d+)-.*", entry.name)
        if not (m or PIDLESS_NAME.fullmatch(entry.name)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or st.st_uid != os.getuid():
                continue
            if not m:
                if time.time() - st.st_mtime >= PIDLESS_IDLE:
                    pidless.append(entry.path)
                continue
            # a second of slack: psutil's start time is the boot time (whole seconds, on a wall
            # clock that may have been set since) plus the clock ticks since
            if psutil.Process(int(m.group(1))).create_time() <= st.st_mtime + 1:
                continue  # its owner is alive
        except psutil.NoSuchProcess:
            pass
        except (OSError, psutil.Error):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
    if pidless:  # only then are the processes looked into
        for path in _unused(pidless):
            shutil.rmtree(path, ignore_errors=True)


def _unused(directories: list[str]) -> list[str]:
    """Those of `directories` in which no process of this user has a file open or its working
    directory. A process that cannot be looked into (a container's init) is passed over: the
    workers that hold an older measurer's logs are its own children, as open to us as it is."""
    import psutil
    used: set[str] = set()
    for proc in psutil.process_iter():
        try:
            if proc.uids().real != os.getuid():
                continue
            used.update(f.path for f in proc.open_files())
            used.add(proc.cwd())
        except psutil.Error:  # gone meanwhile, a zombie, or not ours to look into
            continue
    return [d for d in directories
            if not any(u == real or u.startswith(real + os.sep) for real in [os.path.realpath(d)] for u in used)]


def _shut_down(workers: list[_Worker], directory: str) -> None:
    for w in workers:
        w.stop()
    shutil.rmtree(directory, ignore_errors=True)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _signature(kernel: Kernel) -> tuple:
    return tuple((tuple(b.shape), b.dtype) for b in kernel.params)


def _targets(target) -> tuple[str, str, bool]:
    """The JSON forms the builders take of a target (anything `as_target` takes; None: this
    host) and of its host (the CPU, where the reference runs), and whether it is a GPU."""
    from ..codegen import as_target, gpu_present, is_gpu
    target = as_target(target)
    if is_gpu(target):
        if not gpu_present():
            raise NestorError("measure: no NVIDIA GPU here to time CUDA kernels on")
        return str(target), str(target.host), True
    if target.kind.name != "llvm":
        raise NestorError(f"measure: runs on the CPU (llvm) or an NVIDIA GPU (cuda), not {target.kind.name}")
    return str(target), str(target), False


def runs_per_repeat(first: float) -> int:
    """Runs in one timed repeat of a kernel whose checked (cold) run took `first` seconds."""
    if first >= SINGLE_RUN:
        return 1
    return min(10 ** 6, math.ceil(MIN_REPEAT / max(first, 1e-9)))


def _random_inputs(kernel: Kernel, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_array(b.shape, b.dtype, rng) for b in kernel.inputs]


def random_array(shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """Normal floats; integers 0 and 1, in bounds for any index into an axis of 2 or more."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        a = rng.standard_normal(shape)
    elif dtype.kind == "b":
        a = rng.random(shape) < 0.5
    else:
        a = rng.integers(0, 2, shape)
    return np.asarray(a).astype(dtype)


def _checked(kernel: Kernel, inputs) -> list[np.ndarray]:
    arrays = [np.asarray(a) for a in inputs]
    want = [(tuple(b.shape), np.dtype(b.dtype)) for b in kernel.inputs]
    if [(a.shape, a.dtype) for a in arrays] != want:
        raise NestorError(f"measure: inputs of {kernel.name} must be {want}")
    return arrays


def _mismatch(got: list[np.ndarray], want: list[np.ndarray], names: list[str], rtol: float,
              atol: float) -> str | None:
    """'wrong result: ...' naming the worst element out of tolerance, or None if all agree."""
    for name, g, w in zip(names, got, want):
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(g64 - w64)
            if g.dtype.kind == "f":
                finite = w64[np.isfinite(w64)]
                rms = float(np.sqrt(np.mean(finite ** 2))) if finite.size else 0.0
                # A reordered float reduction errs in proportion to the terms it sums, not to a
                # result that cancels to near zero: the tolerance also scales with the output's RMS.
                rt = max(rtol, 4 * float(np.finfo(g.dtype).eps))
                bad = ~(err <= atol + rt * (np.abs(w64) + rms))
                bad &= ~((g64 == w64) | (np.isnan(g64) & np.isnan(w64)))  # same inf, both NaN
            else:
                bad = g != w
        if bad.any():
            worst = np.where(bad, np.nan_to_num(err, nan=np.inf), -1.0)
            at = np.unravel_index(np.argmax(worst), g.shape)
            return f"wrong result: max abs err {worst[at]:.3g} at {name}[{', '.join(map(str, at))}]"
    return None


# ---- the children ----

def _child(fd: int) -> None:
    """A worker's main loop: serve requests until the parent closes the pipe."""
    try:  # Linux: die with the parent, so a hanging kernel cannot outlive a killed tuner
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    conn = Connection(fd)
    role, config = conn.recv()
    if role == "remote runner":
        from .rpc_measure import remote_runner
        serve = remote_runner(**config)
    else:
        serve = _builder(**config) if role == "builder" else _runner(**config)
    conn.send("ready")
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        try:
            request = pickle.loads(message)
        except Exception as err:  # a class the parent has and we cannot import (a rule of its __main__)
            conn.send({"error": f"cannot read the request: {_brief(err)}"})
            continue
        conn.send(serve(request))


def _brief(err: BaseException) -> str:
    """The first line of an error, without TVM's restated condition (`Check failed: (...) is false:`)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = re.sub(r"^Check failed: \(.*?\) is false: ", "", lines[0] if lines else "")
    return f"{type(err).__name__}: {first}"[:400]


def _cuda_compiler() -> None:
    """TVM compiles CUDA with NVRTC from the cuda-python package by default; where that is not
    installed, with the toolkit's nvcc rather than failing every build."""
    if "TVM_CUDA_COMPILE_MODE" in os.environ:
        return
    try:
        import cuda.bindings.nvrtc  # noqa: F401
    except ImportError:
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"


def _load_arrays(path: str) -> list[np.ndarray]:
    """The arrays of an .npz written by np.savez(path, *arrays), in order."""
    with np.load(path) as f:
        return [f[f"arr_{n}"] for n in range(len(f.files))]


def _builder(target: str, host: str):
    import tvm

    from ..codegen import build
    from .realize import serve_realize
    _cuda_compiler()

    def compute_reference(reference: Kernel, inputs: str, save: str) -> dict:
        """The reference kernel's outputs on the inputs, computed on the host CPU, saved."""
        start = time.perf_counter()
        try:
            run = build([reference], host)[reference.name]
        except Exception as err:
            return {"error": f"build failed: {_brief(err)}"}
        try:
            args = [tvm.runtime.tensor(a, tvm.cpu()) for a in _load_arrays(inputs)]
            outs = [tvm.runtime.tensor(np.zeros(b.shape, b.dtype), tvm.cpu()) for b in reference.outputs]
            run(*args, *outs)
            np.savez(save, *[t.numpy() for t in outs])
        except Exception as err:
            return {"error": f"run failed: {_brief(err)}"}
        return {"seconds": time.perf_counter() - start}

    def build_tir(mod):
        """A TIR module as MetaSchedule's LocalBuilder builds it. Without importing its tensor
        intrinsics as LocalBuilder does (a minute on a busy 2-core machine): a candidate comes
        tensorized already, their registry is for the search."""
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        return tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target)

    def serve(request) -> dict:
        if isinstance(request, dict) and "realize" in request:
            return serve_realize(*request["realize"])
        if isinstance(request, dict):
            return compute_reference(**request)
        kernels, path = request
        start = time.perf_counter()
        time.sleep(float(os.environ.get(BUILD_DELAY_ENV, 0)))
        try:
            if isinstance(kernels, tvm.IRModule):  # a MetaSchedule candidate (ms_measure)
                build_tir(kernels).export_library(path)
            else:
                build(kernels if isinstance(kernels, list) else [kernels], target).export(path)
            return {"seconds": time.perf_counter() - start}
        except Exception as err:
            return {"seconds": time.perf_counter() - start, "error": f"build failed: {_brief(err)}"}
    return serve


def _register_l2_flush(dev) -> str:
    """Registers FLUSH_GPU for `dev`: a copy between two device buffers of twice the L2's size,
    which leaves none of a kernel's data in the L2. Returns its name."""
    import tvm
    import tvm_ffi
    size = 2 * int(dev.l2_cache_size_bytes or 64 << 20)
    src, dst = (tvm.runtime.empty((size,), "uint8", dev) for _ in range(2))

    def flush(*_args) -> None:
        src.copyto(dst)
        dev.sync()  # finished before the timer starts, whichever stream the copy took

    tvm_ffi.register_global_func(FLUSH_GPU, flush, override=True)
    return FLUSH_GPU


class _Bench:
    """One kernel's inputs and reference outputs placed on a device (this host's CPU or GPU, or
    a remote one through TVM's RPC), and the checked run and timing of its candidates there."""

    def __init__(self, config: dict, dev, flush: str, gpu: bool = False, remote: bool = False):
        import tvm
        self.dev, self.flush, self.gpu, self.remote = dev, flush, gpu, remote
        self.rtol, self.atol = config["rtol"], config["atol"]
        self.host = _load_arrays(config["inputs"])
        self.args = [tvm.runtime.tensor(a, dev) for a in self.host]
        # Outputs start as NaN (ints: their maximum) before the checked run, so an element a
        # candidate fails to write cannot pass with a value left there by the one before.
        self.fills = [np.full(shape, np.nan if np.dtype(dt).kind == "f" else
                              (True if dt == "bool" else np.iinfo(dt).max), dt) for _, shape, dt in config["outputs"]]
        self.outs = [tvm.runtime.tensor(fill, dev) for fill in self.fills]
        self.names = [name for name, _, _ in config["outputs"]]
        self.truth = _load_arrays(config["reference"])  # the parent computed it before (Measurer.switch)

    def run(self, module, request: dict) -> dict:
        """{"repeats": seconds} of the candidate `request["name"]` in `module`, or {"error": ...}
        when its checked run is wrong. Exceptions are the caller's."""
        import tvm
        dev, args, outs = self.dev, self.args, self.outs
        # the inputs again too: a candidate that wrote out of bounds without faulting (easy
        # on a GPU) must not pass its damage on to the next
        for t, a in zip(args, self.host):
            t.copyfrom(a)
        for t, fill in zip(outs, self.fills):
            t.copyfrom(fill)
        call_args = args
        if request.get("stages"):  # constant stages (weight packing): run once, untimed
            call_args = [args[i] for i in request["kept"]]
            for name, sources, shape, dtype in request["stages"]:
                produced = tvm.runtime.tensor(np.empty(shape, dtype), dev)
                module[name](*[args[i] for i in sources], produced)
                call_args.append(produced)
        func = module[request["name"]]
        start = time.perf_counter()
        func(*call_args, *outs)
        dev.sync()
        first = time.perf_counter() - start
        wrong = _mismatch([t.numpy() for t in outs], self.truth, self.names, self.rtol, self.atol)
        if wrong:
            return {"error": wrong}
        if self.remote:  # the call's time here includes the round trip to the device: timed there
            first = module.time_evaluator(request["name"], dev, number=1, repeat=1)(*call_args, *outs).mean
        elif self.gpu:  # the first call also loaded the code onto the device
            start = time.perf_counter()
            func(*call_args, *outs)
            dev.sync()
            first = time.perf_counter() - start
        return _timed(module, request, [*call_args, *outs], first, dev, self.flush)


def _timed(module, request: dict, args: list, first: float, dev, flush: str) -> dict:
    """{"repeats": seconds} of `request["name"]` in `module` on `args`, whose first run took
    `first` seconds: woken for `request["wake"]` seconds, then `request["repeats"]` timed repeats
    (of `request["number"]` runs, None: runs_per_repeat), `flush` before each."""
    func = module[request["name"]]
    wake, woken = request.get("wake", 0.0), time.perf_counter()
    while first < wake and time.perf_counter() - woken < wake:
        func(*args)
    dev.sync()
    number = request["number"] or runs_per_repeat(first)
    timer = module.time_evaluator(request["name"], dev, number=number, repeat=request["repeats"], f_preproc=flush)
    return {"repeats": list(timer(*args).results)}


class _RandomArguments:
    """Arguments of MetaSchedule candidates, which come with their shapes and dtypes only: random
    (as a kernel's inputs), made anew when the signature changes (MetaSchedule measures a task's
    batch together) and restored before each candidate, which may have written over them
    (MetaSchedule does not say which are outputs)."""

    def __init__(self, dev):
        self.dev, self.made = dev, {}

    def __call__(self, signature: tuple) -> list:
        import tvm
        if signature not in self.made:
            rng = np.random.default_rng(0)
            host = [random_array(shape, dtype, rng) for shape, dtype in signature]
            self.made = {signature: (host, [tvm.runtime.tensor(a, self.dev) for a in host])}
        host, args = self.made[signature]
        for t, a in zip(args, host):
            t.copyfrom(a)
        return args


def _run_unchecked(module, request: dict, args: list, dev, flush: str) -> dict:
    """A MetaSchedule candidate's times: no reference to check it against (its workload is not
    handed to the runner); its first run loads the code, the second is its cold time."""
    func = module[request["name"]]
    func(*args)
    dev.sync()
    start = time.perf_counter()
    func(*args)
    dev.sync()
    return _timed(module, request, args, time.perf_counter() - start, dev, flush)


def _runner(gpu: bool = False, **config):
    """Runs candidates of one kernel at a time, on the CPU or (`gpu`) on CUDA device 0; a
    `{"configure": config}` request moves it to another kernel (inputs, reference outputs,
    output shapes, tolerances)."""
    import tvm

    from ..codegen import use_all_cores
    use_all_cores()  # before the first kernel starts TVM's thread pool (its default takes half)
    if gpu:
        _cuda_compiler()  # a module built where no GPU was is CUDA source, compiled on loading
    dev = tvm.cuda(0) if gpu else tvm.cpu()
    flush = _register_l2_flush(dev) if gpu else FLUSH
    bench = _Bench(config, dev, flush, gpu) if config else None
    random_arguments = _RandomArguments(dev)

    def serve(request) -> dict:
        nonlocal bench
        if "configure" in request:
            try:
                bench = _Bench(request["configure"], dev, flush, gpu)
                return {}
            except Exception as err:
                return {"error": f"configure failed: {_brief(err)}"}
        try:
            module = tvm.runtime.load_module(request["path"])
            if "signature" in request:  # a MetaSchedule candidate (ms_measure)
                return _run_unchecked(module, request, random_arguments(request["signature"]), dev, flush)
            return bench.run(module, request)
        except Exception as err:
            # On the GPU this may be a fault (an illegal address) that left the process's CUDA
            # context unusable: every later call in it would fail too.
            return {"error": f"run failed: {_brief(err)}", "replace": gpu}
    return serve
