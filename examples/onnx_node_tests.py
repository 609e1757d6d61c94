"""Run ONNX's node test cases (collect_testcases) through Nestor's ONNX backend; report counts.

    python examples/onnx_node_tests.py [--ops Conv,Gemm] [--failures]
Prints a line per op (pass/fail/skip), the skip reasons, and a total.
"""
import argparse
from collections import Counter, defaultdict

from nestor.conformance import case_op, node_cases, run_cases

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ops", help="only cases of these ops (comma-separated)")
    p.add_argument("--failures", action="store_true", help="list every failing case")
    args = p.parse_args()
    cases = node_cases()
    if args.ops:
        wanted = set(args.ops.split(","))
        cases = [c for c in cases if case_op(c) in wanted]
    results = run_cases(cases, progress=print)
    by_op = defaultdict(Counter)
    for r in results:
        by_op[r.op][r.status] += 1
    for op in sorted(by_op):
        c = by_op[op]
        if c["pass"] or c["fail"]:
            print(f"{op:<28} pass {c['pass']:>3}  fail {c['fail']:>3}  skip {c['skip']:>3}")
    reasons = Counter(r.detail.split(":")[0] + (": " + r.detail.split(": ")[1] if r.detail.startswith("op not") else "")
                      for r in results if r.status == "skip")
    print("skip reasons (top 15):")
    for reason, n in reasons.most_common(15):
        print(f"  {n:>4}  {reason}")
    if args.failures:
        for r in results:
            if r.status == "fail":
                print(f"FAIL {r.name}: {r.detail}")
    total = Counter(r.status for r in results)
    print(f"{total['pass']} passed, {total['fail']} failed, {total['skip']} skipped "
          f"of {len(results)} ONNX node test cases")
