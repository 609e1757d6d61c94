"""Realizing a search pool: each candidate's steps applied by the passes and the kernel they make
featurized for the cost model, the bulk of a search round's Python (a ResNet-50 conv: ~6 ms to
realize, ~3 ms to featurize, hundreds a round). The measurer spreads a pool over its builder
processes, idle while the search proposes (Measurer.realize); `realize_pool` is the work of one
process.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..costmodel import features
from ..ir.machine import MachineParams
from ..passes import Schedule
from .space import Candidate, Sketch


def realize_pool(sketch: Sketch, candidates: list[Candidate],
                 machine: MachineParams) -> tuple[list[Schedule], np.ndarray]:
    """Each candidate's schedule, and the feature rows (for `machine`) of the kernels they make."""
    schedules, kernels = [], []
    for c in candidates:
        schedule, kernel = sketch.realize(c)
        schedules.append(schedule)
        kernels.append(kernel)
    return schedules, features(kernels, machine)


def serve_realize(sketch: Sketch, candidates: list[Candidate], machine: MachineParams) -> dict:
    """`realize_pool` in a worker process, as a reply: the steps its passes refused come back as
    `refused` (counted in the parent's sketch), an exception as an error (the parent realizes
    that part itself, where the exception is its own)."""
    sketch.refused = Counter()  # the parent's counts came with the sketch
    try:
        schedules, rows = realize_pool(sketch, candidates, machine)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:400]}
    return {"schedules": schedules, "features": rows, "refused": dict(sketch.refused)}
