"""The `nestor records` commands (export | import | merge | retime | show) and `nestor report`."""
from __future__ import annotations

import re

from .cli_checks import at_least, input_shape
from .ir.errors import InputError


def add_commands(sub) -> None:
    """Register `records` and `report` on the main parser's subcommands."""
    r = sub.add_parser("records", help="export, import, merge or show tuning records")
    verbs = r.add_subparsers(metavar="action", required=True)
    e = verbs.add_parser("export", help="write a records database as JSON lines (documented, versioned)")
    e.add_argument("database", help="records database (.sqlite)")
    e.add_argument("-o", "--output", required=True, help="records.jsonl")
    e.set_defaults(func=cmd_export)
    i = verbs.add_parser("import", help="add the records of a JSON-lines export to a database")
    i.add_argument("source", help="records.jsonl")
    i.add_argument("--into", required=True, metavar="DB", help="records database (created if missing)")
    i.set_defaults(func=cmd_import)
    m = verbs.add_parser("merge", help="merge records databases (or exports) into a new one, each record once")
    m.add_argument("sources", nargs="+", help="records databases (.sqlite) or exports (.jsonl)")
    m.add_argument("-o", "--output", required=True, help="the merged database (.sqlite): a new file, or a source")
    m.set_defaults(func=cmd_merge)
    t = verbs.add_parser("retime", help="measure a database's schedules again on this machine, with more repeats, "
                                        "into a new database (a truth for bench costmodel --truth)")
    t.add_argument("database", help="records database (.sqlite)")
    t.add_argument("-o", "--output", required=True, help="the re-timed records (.sqlite, new)")
    t.add_argument("--model", help="model.onnx the records were tuned for: its weights' packing stages are "
                                   "timed apart, as the tuner timed them")
    t.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...", type=input_shape,
                   help="fix a dynamic input's shape of --model (repeatable)")
    t.add_argument("--rounds", type=at_least(1), default=2, help="measurements of each schedule, each round "
                                                                  "in a new random order")
    t.add_argument("--repeats", type=at_least(1), help="timed repeats of each measurement (default: the tuner's)")
    t.add_argument("--target", help="time on this target (default: this host's CPU; cuda: its GPU)")
    t.set_defaults(func=cmd_retime)
    s = verbs.add_parser("show", help="tasks, trials and best time per task and target")
    s.add_argument("database", help="records database (.sqlite)")
    s.set_defaults(func=cmd_show)

    p = sub.add_parser("report", help="an HTML page of a tuning: curves, roofline, time per task, schedules")
    p.add_argument("database", help="records database (.sqlite)")
    p.add_argument("--model", help="model.onnx: weigh each task by its calls in this model")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...", type=input_shape,
                   help="fix a dynamic input's shape of --model (repeatable)")
    p.add_argument("--target", help="the records' target to report (default: the one with most records)")
    p.add_argument("-o", "--output", required=True, help="report.html")
    p.set_defaults(func=cmd_report)


def cmd_export(args) -> int:
    from .autotune.records_io import export_jsonl
    n = export_jsonl(args.database, args.output)
    print(f"{n} records of {args.database} written to {args.output}")
    return 0


def cmd_import(args) -> int:
    from .autotune.records_io import import_jsonl
    added = import_jsonl(args.source, args.into)
    print(f"{added.records} records ({added.tasks} new tasks) imported into {args.into}; "
          f"{added.duplicates} already there")
    return 0


def cmd_merge(args) -> int:
    from .autotune.records_io import merge_databases
    added = merge_databases(args.sources, args.output)
    print(f"{added.records} records of {len(args.sources)} files merged into {args.output}; "
          f"{added.duplicates} duplicates left out")
    return 0


def cmd_retime(args) -> int:
    from .autotune.measure import REPEATS
    from .autotune.retime import retime
    from .cli import _input_shapes
    if args.input_shape and not args.model:
        raise InputError("--input-shape needs --model")
    constants = None
    if args.model:   # records name a task by its kernel's hash, as the tuner's search does
        from .api import import_onnx
        from .autotune.task_scheduler import extract_tasks
        from .ir import structural_hash
        graph = import_onnx(args.model, _input_shapes(args.input_shape), target=args.target)
        constants = {structural_hash(t.kernel): t.constants for t in extract_tasks(graph)}
    done = retime(args.database, args.output, args.rounds, args.repeats or REPEATS, args.target, constants)
    print(f"{done.schedules} schedules of {done.tasks} tasks re-timed into {args.output}"
          + (f"; {done.failed} left out (no longer replay, build or run)" if done.failed else "")
          + (f"; two rounds order {done.mean_agreement:.3f} of pairs alike (a ranking's ceiling)"
             if done.agreement else ""))
    return 0


def cmd_show(args) -> int:
    from .autotune.records import Records
    with Records(args.database, create=False) as db:
        for line in show_lines(db):
            print(line)
    return 0


def show_lines(db) -> list[str]:
    """The summary `records show` prints: per target, each task's trials, errors and best time."""
    rows = db.tallies()
    targets = dict.fromkeys(r[0] for r in rows)
    lines = [f"{db.path}: {_count(len(db.tasks()), 'task')}, {_count(db.count(), 'record')}, "
             f"{_count(len(targets), 'target')}"]
    for target in targets:
        mine = [r for r in rows if r[0] == target]
        devices = sorted({d for r in mine for d in r[4]})
        lines += ["", f"target {target}", f"devices {', '.join(devices)}",
                  f"  {'task':<14}{'kernel':<28}{'trials':>7}{'errors':>7}{'best ms':>12}{'GFLOP/s':>10}"]
        for _, task, trials, errors, _ in mine:
            best = db.best(task, target)
            flops = db.task_flops(task)
            ms = f"{best.median * 1e3:.4f}" if best else "-"
            rate = f"{flops / best.median / 1e9:.2f}" if best and flops else "-"
            lines.append(f"  {task[:12]:<14}{kernel_name(db.task_kernel(task)):<28}{trials:>7}{errors:>7}"
                         f"{ms:>12}{rate:>10}")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def kernel_name(text: str | None) -> str:
    """The name in a kernel's IR text ('kernel NAME(...'), without parsing all of it."""
    found = re.match(r"\s*kernel\s+([^\s(]+)", text or "")
    return found.group(1) if found else "?"


def cmd_report(args) -> int:
    from .cli import _input_shapes
    from .report import write_report
    if args.input_shape and not args.model:
        raise InputError("--input-shape needs --model")
    write_report(args.database, args.output, model=args.model, input_shapes=_input_shapes(args.input_shape),
                 target=args.target)
    print(f"report written to {args.output}")
    return 0
