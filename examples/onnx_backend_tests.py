"""ONNX's node test cases through ONNX's own runner (onnx.backend.test.BackendTest) and
nestor.backend: the `_cpu` cases whose names hold no `_expanded` (issue 22's count).

    python examples/onnx_backend_tests.py [--ops Sin,Resize] [--failures]
Prints pass/fail/skip per op that has a failure, the commonest failure reasons, and a total.
Unlike examples/onnx_node_tests.py, an op Nestor lacks is a failure here, as the runner sees it.
"""
import argparse
import time
import unittest
import warnings
from collections import Counter, defaultdict

import onnx.backend.test

import nestor.backend
from nestor.conformance import case_op, node_cases


class Outcomes(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.status = {}

    def addSuccess(self, test):
        self.status[test._testMethodName] = ("pass", "")

    def addFailure(self, test, err):
        self.status[test._testMethodName] = ("fail", _reason(err[1]))

    addError = addFailure

    def addSkip(self, test, reason):
        self.status[test._testMethodName] = ("skip", reason)


def _reason(err) -> str:
    lines = [l for l in str(err).splitlines() if l.strip()]
    return f"{type(err).__name__}: {lines[0][:120] if lines else ''}"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ops", help="only cases of these ops (comma-separated)")
    p.add_argument("--failures", action="store_true", help="list every failing case")
    args = p.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = onnx.backend.test.BackendTest(nestor.backend, __name__)
        ops = {c.name + "_cpu": case_op(c) for c in node_cases()}
    cls = runner.test_cases["OnnxBackendNodeModelTest"]
    names = sorted(n for n in runner._test_items["NodeModel"] if n.endswith("_cpu") and "_expanded" not in n)
    if args.ops:
        wanted = set(args.ops.split(","))
        names = [n for n in names if ops.get(n) in wanted]
    result, start = Outcomes(), time.perf_counter()
    for i, name in enumerate(names):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(name).run(result)
        if (i + 1) % 100 == 0:
            c = Counter(s for s, _ in result.status.values())
            print(f"{i + 1}/{len(names)}: {c['pass']} pass, {c['fail']} fail, {c['skip']} skip, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    by_op, reasons = defaultdict(Counter), Counter()
    for name, (status, why) in result.status.items():
        by_op[ops.get(name, "?")][status] += 1
        if status == "fail":
            reasons[why.split(":")[0] + ": " + why.split(": ", 1)[-1][:60]] += 1
    for op in sorted(by_op, key=lambda o: (-by_op[o]["fail"], o)):
        c = by_op[op]
        if c["fail"]:
            print(f"{op:<28} pass {c['pass']:>3}  fail {c['fail']:>3}  skip {c['skip']:>3}")
    print("failure reasons (top 20):")
    for reason, n in reasons.most_common(20):
        print(f"  {n:>4}  {reason}")
    if args.failures:
        for name, (status, why) in sorted(result.status.items()):
            if status == "fail":
                print(f"FAIL {name}: {why}")
    total = Counter(s for s, _ in result.status.values())
    print(f"{total['pass']} passed, {total['fail']} failed, {total['skip']} skipped "
          f"of {len(names)} ONNX backend node tests (_cpu, no _expanded)")
