"""ONNX's own node test cases (onnx.backend.test.case.node) run through Nestor's ONNX backend.

Each case is a small model with inputs and expected outputs. A case is attempted when every op in
it is one Nestor lowers (or folds at compile time); it passes when every output matches within the
case's own rtol/atol. Skips say why (an op Nestor lacks, a dtype it does not compile).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .frontend import UnsupportedOpError, defined_as_function, supported_ops
from .ir.errors import NestorError

# Ops that never reach lowering here: they are folded (constants, shapes of static tensors).
FOLDED_OPS = {"Constant", "Shape", "Size"}


@dataclass
class CaseResult:
    name: str
    op: str            # the op under test ('(expanded)' for multi-node function expansions)
    status: str        # 'pass' | 'fail' | 'skip'
    detail: str = ""


def node_cases():
    import warnings
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return collect_testcases()


def case_op(case) -> str:
    ops = [n.op_type for n in case.model.graph.node if n.op_type != "Constant"]
    return ops[0] if len(set(ops)) == 1 else "(expanded)"


def run_case(case) -> CaseResult:
    from . import backend
    op = case_op(case)
    missing = {op for op in {n.op_type for n in case.model.graph.node} - set(supported_ops()) - FOLDED_OPS
               if not defined_as_function(op)}  # the importer expands those into their bodies
    if missing:
        return CaseResult(case.name, op, "skip", f"op not supported: {', '.join(sorted(missing))}")
    if any(not vi.type.HasField("tensor_type") for vi in case.model.graph.input):
        return CaseResult(case.name, op, "skip", "non-tensor input (sequence/optional)")
    try:
        rep = backend.prepare(case.model)
        for inputs, expected in case.data_sets:
            got = rep.run(inputs)
            for g, w in zip(got, expected):
                w = numpy_helper.to_array(w) if isinstance(w, onnx.TensorProto) else np.asarray(w)
                if g.shape != w.shape or g.dtype != w.dtype:
                    return CaseResult(case.name, op, "fail",
                                      f"got {g.dtype}{g.shape}, want {w.dtype}{w.shape}")
                np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol)
    except ValueError as err:
        if "unsupported element type" in str(err):
            return CaseResult(case.name, op, "skip", f"dtype: {err}")
        return CaseResult(case.name, op, "fail", _line(err))
    except UnsupportedOpError as err:  # a form of the op Nestor says it does not compile
        return CaseResult(case.name, op, "skip", f"unsupported: {_line(err)}")
    except NestorError as err:
        return CaseResult(case.name, op, "fail", _line(err))
    except AssertionError as err:
        return CaseResult(case.name, op, "fail", "wrong values: " + _line(err, 2))
    except Exception as err:  # a crash in Nestor is a failure to report, not to hide
        return CaseResult(case.name, op, "fail", f"{type(err).__name__}: {_line(err)}")
    return CaseResult(case.name, op, "pass")


def run_cases(cases, progress=None) -> list[CaseResult]:
    results = []
    start = time.perf_counter()
    for i, case in enumerate(cases):
        results.append(run_case(case))
        if progress and (i + 1) % 50 == 0:
            counts = Counter(r.status for r in results)
            progress(f"{i + 1}/{len(cases)} cases, {counts['pass']} pass, {counts['fail']} fail, "
                     f"{counts['skip']} skip, {time.perf_counter() - start:.0f} s")
    return results


def _line(err: Exception, n: int = 1) -> str:
    lines = [l for l in str(err).strip().splitlines() if l.strip()]
    return " | ".join(lines[:n]) if lines else type(err).__name__
