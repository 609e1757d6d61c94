"""`nestor records retime`: a database's schedules measured again, with more repeats, into a new
database; and bench costmodel judged against such a database."""
import json

import numpy as np
import pytest

from nestor.autotune.records import Records, RecordsError
from nestor.autotune.retime import retime
from nestor.autotune.tune import target_key
from nestor.cli import main

MATMUL = """kernel matmul(A: f32[16, 32], B: f32[32, 16]) -> (Out: f32[16, 16]) {
  for i0 in 0..16 {
    for i1 in 0..16 {
      Out[i0, i1] = 0.0
      for r0 in 0..32 reduce { Out[i0, i1] += A[i0, r0] * B[r0, i1] }
    }
  }
}
"""


def split(loop: str, factor: int) -> str:
    return json.dumps([{"pass": "split", "params": {"loop": loop, "factor": factor}}])


def tuned(path) -> str:
    """Records as a tuning on another machine leaves them: three schedules (one measured twice),
    a failed one, and one whose loop no longer exists."""
    with Records(path) as db:
        db.add_task("mm", MATMUL, 2 * 16 * 16 * 32)
        for factor in (2, 4, 8, 4):
            db.add("mm", "llvm -mcpu=elsewhere", split("i1", factor), 1e-3, [1e-3, 2e-3], device="board-1")
        db.add("mm", "llvm -mcpu=elsewhere", split("i1", 16), None, [], error="wrong result")
        db.add("mm", "llvm -mcpu=elsewhere", split("gone", 4), 1e-3, [1e-3])
    return str(path)


def test_each_schedule_is_measured_again_here_with_every_repeat_kept(tmp_path):
    lines = []
    done = retime(tuned(tmp_path / "r.sqlite"), str(tmp_path / "t.sqlite"), rounds=2, repeats=3,
                  progress=lines.append)
    assert (done.tasks, done.schedules, done.failed) == (1, 3, 1)
    assert len(done.agreement) == 1 and 0 <= done.agreement[0] <= 1
    with Records(tmp_path / "t.sqlite", create=False) as db:
        assert db.task_kernel("mm") == MATMUL and db.task_flops("mm") == 2 * 16 * 16 * 32
        records = db.records()
    assert sorted(r.schedule for r in records) == sorted(split("i1", f) for f in (2, 4, 8))
    for r in records:   # measured here, by this Nestor, 2 rounds of 3 repeats
        assert r.ok and r.target == target_key() and r.device == "local" and len(r.repeats) == 6
        assert r.median == pytest.approx(float(np.median(r.repeats))) and 0 < r.median < 1e-3
    assert lines[-1].startswith("[retime] task 1/1 matmul: 3 schedules, 2 x 3 repeats, rounds agree on ")


def test_retime_writes_only_a_new_database(tmp_path):
    source = tuned(tmp_path / "r.sqlite")
    with pytest.raises(RecordsError, match="already holds records"):
        retime(source, source)
    with pytest.raises(RecordsError, match="missing.sqlite' does not exist"):
        retime(str(tmp_path / "missing.sqlite"), str(tmp_path / "t.sqlite"))


def test_cli_retime_then_judge_the_cost_model_against_it(tmp_path, capsys):
    from tests.test_costmodel import synthetic_records
    source = synthetic_records(tmp_path / "r.sqlite", ("matmul",), count=16)
    out = str(tmp_path / "t.sqlite")
    assert main(["records", "retime", source, "-o", out, "--rounds", "2", "--repeats", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"16 schedules of 1 tasks re-timed into {out}; ")
    assert main(["bench", "costmodel", "--records", source, "--truth", out]) == 0
    printed = capsys.readouterr().out
    assert "cost model pairwise accuracy on held-out records: " in printed
    assert "the records' own times ranked against the same truth: pairwise " in printed
    assert main(["records", "retime", source, "-o", out]) == 1
    assert "already holds records" in capsys.readouterr().err


def test_the_cost_model_is_judged_against_the_retimed_times_of_the_same_schedules(tmp_path):
    """truth=<database>: each record judged by that database's median of its schedule; a schedule
    it lacks is left out."""
    from nestor.autotune.model_quality import evaluate
    from tests.test_costmodel import synthetic_records
    path = synthetic_records(tmp_path / "r.sqlite", ("matmul",), count=40)
    with Records(path) as db, Records(tmp_path / "reversed.sqlite") as truth:
        (task,) = db.tasks()
        truth.add_task(task, db.task_kernel(task), 1.0)
        for r in db.records()[:30]:   # the synthetic order turned upside down
            truth.add(task, r.target, r.schedule, 1.0 / r.median, [1.0 / r.median])
    (same,) = evaluate(path, folds=4, pool=16)
    (upside_down,) = evaluate(path, folds=4, pool=16, truth=str(tmp_path / "reversed.sqlite"))
    assert same.records == 40 and upside_down.records == 30
    assert same.pairwise > 0.65 and upside_down.pairwise < 0.35
    # the records' own times against that truth: every pair the other way round
    assert upside_down.measured[0] == 0.0 and upside_down.measured[1] < 0.5
    assert np.isnan(same.measured).all()
