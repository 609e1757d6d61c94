"""The tuning machine's roofline, measured: peak FLOP/s by a BLAS matmul, memory bandwidth by a copy
too large for the caches. A short probe (about a second), run after the first tuning into a records
file for a CPU target timed on the tuning host (outside its time budget; not when RPC devices timed
it) and stored in the file's meta table: a report made elsewhere, later, judges the kernels against
the machine that timed them.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from .records import Records

MATMUL_N = 1024               # float32: 2 GFLOP, enough to keep BLAS at its peak on every core
COPY_BYTES = 64 * 2 ** 20     # source and destination: 128 MB, beyond an L3 (EPYC 32 MB, Sapphire Rapids 105 MB)


@dataclass(frozen=True)
class Roofline:
    flops: float        # peak FLOP/s
    bandwidth: float    # memory bandwidth, bytes/s
    measured: float     # time.time() of the probe

    def bound(self, intensity: float) -> float:
        """The attainable FLOP/s of a kernel doing `intensity` FLOPs a byte of memory traffic."""
        return min(self.flops, intensity * self.bandwidth)


def meta_key(target_key: str) -> str:
    return f"roofline:{target_key}"


def measure_roofline(seconds: float = 0.5) -> Roofline:
    """Peak FLOP/s and bandwidth, each the best of the repeats that fit in half of `seconds`."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32) for _ in range(2))
    flops = 2 * MATMUL_N ** 3 / _best_time(lambda: np.dot(a, b), seconds / 2)
    src = np.ones(COPY_BYTES // 4, np.float32)
    dst = np.empty_like(src)
    dst.fill(0)   # touched: page faults are not memory bandwidth
    bandwidth = 2 * COPY_BYTES / _best_time(lambda: np.copyto(dst, src), seconds / 2)   # read + write
    return Roofline(flops, bandwidth, time.time())


def _best_time(run, seconds: float, at_least: int = 2) -> float:
    run()   # warm-up: BLAS threads started, pages mapped
    best, deadline, n = float("inf"), time.perf_counter() + seconds, 0
    while n < at_least or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        best, n = min(best, time.perf_counter() - start), n + 1
    return best


def stored_roofline(records: Records, target_key: str) -> Roofline | None:
    text = records.meta(meta_key(target_key))
    if text is None:
        return None
    # a hand edit, or a file from elsewhere: measured again rather than fail a tuning or a report
    try:
        found = Roofline(**json.loads(text))
    except (ValueError, TypeError):
        return None
    numbers = (found.flops, found.bandwidth, found.measured)
    if not all(type(v) in (int, float) and math.isfinite(v) for v in numbers) or min(numbers[:2]) <= 0:
        return None
    return found


def ensure_roofline(records: Records, target_key: str) -> Roofline:
    """The stored roofline of `target_key`, measured on this host and stored first if there is none."""
    found = stored_roofline(records, target_key)
    if found is None:
        found = measure_roofline()
        records.set_meta(meta_key(target_key), json.dumps(asdict(found)))
    return found
