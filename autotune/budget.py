"""What a tuning run may spend: a number of measurements, a wall time, or both (whichever ends
first), and the share of it kept for measuring the fastest schedules again at the end.

Rounds measured minutes apart on a shared machine differ by more than the fastest schedules do,
so the last RERANK_SHARE of a budget re-measures them side by side (Tuner.rerank); this is the
one place that says when that reserve begins and how many trials it holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..ir.errors import NestorError

RERANK_SHARE = 0.1   # of a budget (trials or time) kept for the re-ranking
RERANK_TOP = 8       # schedules measured again in one batch: a reserve of fewer trials is none


@dataclass
class Budget:
    """`trials` measurements and/or `seconds` of wall time; None: no limit of that kind.
    `start()` once when tuning begins, `spend(n)` after each batch."""
    trials: int | None = None
    seconds: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    done: int = field(default=0, init=False)
    _started: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.trials is None and self.seconds is None:
            raise NestorError("tune: give a number of trials or a time budget")
        if self.trials is not None and self.trials < 1:
            raise NestorError(f"tune: the number of trials must be at least 1, not {self.trials}")
        if self.seconds is not None and not 0 < self.seconds < float("inf"):
            raise NestorError(f"tune: the time budget must be positive and finite, not {self.seconds} s")

    def __str__(self) -> str:
        """`64 trials`, `300 s`, or `64 trials or 300 s`."""
        limits = ([f"{self.trials} trials"] if self.trials is not None else []) + \
                 ([f"{self.seconds:.0f} s"] if self.seconds is not None else [])
        return " or ".join(limits)

    def start(self) -> Budget:
        if self._started is not None:
            raise NestorError("tune: a budget is spent by one tuning run; make a new one")
        self._started = self.clock()
        return self

    def spend(self, trials: int) -> None:
        self.done += trials

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else self.clock() - self._started

    @property
    def spent(self) -> bool:
        return ((self.trials is not None and self.done >= self.trials)
                or (self.seconds is not None and self.elapsed >= self.seconds))

    @property
    def seconds_left(self) -> float | None:
        """What is left of the time budget (None: no time limit)."""
        return None if self.seconds is None else max(self.seconds - self.elapsed, 0.0)

    @property
    def trials_left(self) -> int | None:
        return None if self.trials is None else max(self.trials - self.done, 0)

    @property
    def reserve_trials(self) -> int:
        """The trials kept for the re-ranking: RERANK_SHARE of the trials, when that fills a batch."""
        keep = int(RERANK_SHARE * self.trials) if self.trials is not None else 0
        return keep if keep >= RERANK_TOP else 0

    @property
    def reserve_begun(self) -> bool:
        """Whether the last RERANK_SHARE of the trials or of the time has begun."""
        keep = self.reserve_trials
        by_trials = keep > 0 and self.trials - self.done <= keep
        by_time = self.seconds is not None and self.seconds - self.elapsed <= RERANK_SHARE * self.seconds
        return by_trials or by_time

    @property
    def search_trials_left(self) -> int | None:
        """The trials a search round may take: those left, less the reserve until it begins
        (after the re-ranking, the rest of the budget goes on searching)."""
        left = self.trials_left
        if left is None or self.reserve_begun:
            return left
        return left - self.reserve_trials
