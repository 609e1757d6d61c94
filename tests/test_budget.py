"""The tuning budget: trials, seconds or both; spent when either ends; the re-rank reserve is its
last RERANK_SHARE (of trials when that fills a re-ranking batch, of time always)."""
import pytest

from nestor.autotune.budget import RERANK_SHARE, RERANK_TOP, Budget
from nestor.ir.errors import NestorError


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_trials_only():
    budget = Budget(trials=100).start()
    assert budget.trials_left == 100 and budget.reserve_trials == 10 and not budget.spent
    budget.spend(89)
    assert not budget.reserve_begun and budget.search_trials_left == 1
    budget.spend(1)  # 10 left: the reserve
    assert budget.reserve_begun and budget.search_trials_left == budget.trials_left == 10
    budget.spend(10)
    assert budget.spent and budget.trials_left == 0
    assert str(budget) == "100 trials"


def test_a_reserve_smaller_than_a_rerank_batch_is_none():
    budget = Budget(trials=int(RERANK_TOP / RERANK_SHARE) - 1).start()
    assert budget.reserve_trials == 0
    budget.spend(budget.trials - 1)
    assert not budget.reserve_begun and budget.search_trials_left == 1


def test_time_only():
    clock = Clock()
    budget = Budget(seconds=50, clock=clock).start()
    assert budget.trials_left is None and budget.search_trials_left is None and budget.reserve_trials == 0
    budget.spend(1000)
    clock.now += 44.9
    assert not budget.reserve_begun and not budget.spent
    clock.now += 0.1  # 5 s left: the reserve
    assert budget.reserve_begun and not budget.spent and budget.elapsed == pytest.approx(45)
    clock.now += 5
    assert budget.spent
    assert str(budget) == "50 s"


def test_both_end_with_whichever_comes_first():
    clock = Clock()
    budget = Budget(trials=200, seconds=60, clock=clock).start()
    assert str(budget) == "200 trials or 60 s"
    clock.now += 54  # the time's reserve begins before the trials'
    assert budget.reserve_begun and budget.search_trials_left == 200
    budget.spend(200)
    assert budget.spent
    budget = Budget(trials=200, seconds=60, clock=clock).start()
    budget.spend(180)  # the trials' reserve
    assert budget.reserve_begun and not budget.spent
    clock.now += 60
    assert budget.spent


def test_a_budget_needs_a_limit_and_is_started_once():
    with pytest.raises(NestorError, match="give a number of trials or a time budget"):
        Budget()
    with pytest.raises(NestorError, match="at least 1"):
        Budget(trials=0)
    with pytest.raises(NestorError, match="positive"):
        Budget(seconds=0)
    budget = Budget(trials=8).start()
    with pytest.raises(NestorError, match="one tuning run"):
        budget.start()
