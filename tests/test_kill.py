"""Fault injection: a tuning run killed with kill -9 (the tuner itself, or one of its measurement
workers) at a random moment keeps every record written before the kill, and tuning again resumes
from them (nothing measured twice, the dead tuner's measurement directory cleared).

The default run kills a worker, then the tuner; the slow tests kill workers and tuners again and again.
"""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from nestor.autotune.measure import DIR_PREFIX
from nestor.autotune.records import Records
from nestor.autotune.tune import target_key

TUNE = textwrap.dedent("""
    import sys
    from nestor.autotune import Budget
    from nestor.autotune.tune import tune_kernels
    from nestor.ir import parse_kernel
    kernel = parse_kernel('''
    kernel mm(A: f32[48, 48], B: f32[48, 48]) -> (C: f32[48, 48]) {
      for i in 0..48 { for j in 0..48 { C[i, j] = 0.0 } }
      for i in 0..48 { for j in 0..48 { for k in 0..48 reduce { C[i, j] += A[i, k] * B[k, j] } } }
    }''')
    (task,) = tune_kernels({"mm": kernel}, Budget(int(sys.argv[2])), sys.argv[1], show_progress=False, batch=2)
    print(task.tuner.stored, task.trials)
""")


def stored(path) -> list[tuple[int, str]]:
    """(id, schedule) of every record, read-only, while a tuner may be writing."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return []
    try:
        return db.execute("SELECT id, schedule FROM records ORDER BY id").fetchall()
    except sqlite3.Error:  # not created yet
        return []
    finally:
        db.close()


class Tuning:
    """A tuning run in a child process, with its own temporary directory."""

    def __init__(self, tmp_path, trials: int):
        self.records = tmp_path / "r.sqlite"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir(exist_ok=True)
        script = tmp_path / "tune.py"
        script.write_text(TUNE)
        env = dict(os.environ, TMPDIR=str(self.tmp))
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.records), str(trials)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def wait_for_records(self, n: int, timeout: float = 120.0) -> list[tuple[int, str]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rows = stored(self.records)
            if len(rows) >= n:
                return rows
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.05)
        raise AssertionError(f"no {n} records after {timeout} s")

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def finish(self) -> tuple[int, int]:
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err
        resumed_from, trials = map(int, out.split())
        return resumed_from, trials


def kill_worker_at_random(run: Tuning, rng: random.Random) -> None:
    """kill -9 a builder or the runner, whatever it is doing: the records stay, the tuner goes on."""
    time.sleep(rng.uniform(0.0, 1.0))
    seen = stored(run.records)
    rng.choice(run.workers()).kill()
    assert set(seen) <= set(run.wait_for_records(len(seen) + 1))


def kill_tuner_at_random(run: Tuning, rng: random.Random) -> list[tuple[int, str]]:
    """kill -9 the tuner a random moment from now; the records seen before the kill must all
    still be there. Returns them after the kill."""
    time.sleep(rng.uniform(0.0, 1.5))
    seen = stored(run.records)  # the last look before the kill
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    after_kill = stored(run.records)
    assert set(seen) <= set(after_kill)
    assert [d.startswith(f"{DIR_PREFIX}{run.proc.pid}-") for d in measure_dirs(run.tmp)] == [True]  # left behind
    return after_kill


def measure_dirs(tmp) -> list[str]:
    return [d for d in os.listdir(tmp) if d.startswith(DIR_PREFIX)]


def resume(tmp_path, before: list[tuple[int, str]], trials: int) -> None:
    """Tune again: it starts from every stored record, measures nothing twice, and the dead
    tuners' measurement directories are gone."""
    run = Tuning(tmp_path, trials)
    resumed_from, measured = run.finish()
    assert resumed_from == len(before) and measured == trials
    rows = stored(run.records)
    assert set(before) <= set(rows) and len(rows) == len(before) + trials
    assert len({schedule for _, schedule in rows}) == len(rows)  # no schedule measured twice
    assert measure_dirs(run.tmp) == []
    with Records(run.records, create=False) as db:  # and the file reads whole through Nestor
        assert db.count(target=target_key()) == len(rows)


def test_killed_worker_and_tuner_lose_no_records_and_tuning_resumes(tmp_path):
    rng = random.Random(0)
    run = Tuning(tmp_path, trials=1000)
    run.wait_for_records(2)
    kill_worker_at_random(run, rng)
    rows = kill_tuner_at_random(run, rng)
    resume(tmp_path, rows, trials=2)


@pytest.mark.slow
def test_workers_killed_again_and_again_the_run_completes(tmp_path):
    rng = random.Random(1)
    run = Tuning(tmp_path, trials=24)
    run.wait_for_records(2)
    for _ in range(4):
        kill_worker_at_random(run, rng)
    resumed_from, measured = run.finish()
    rows = stored(run.records)
    assert resumed_from == 0 and measured == len(rows) == 24
    assert len({schedule for _, schedule in rows}) == 24


@pytest.mark.slow
def test_tuner_killed_again_and_again(tmp_path):
    rng = random.Random(2)
    rows = []
    for _ in range(5):
        run = Tuning(tmp_path, trials=1000)
        run.wait_for_records(len(rows) + 1)
        rows = kill_tuner_at_random(run, rng)
    resume(tmp_path, rows, trials=8)
