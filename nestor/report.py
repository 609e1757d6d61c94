"""`nestor report`: one self-contained HTML page of a tuning, read from its records database.

Sections: a summary; the model estimate's tuning curve and each task's (best time against trials
and against wall time, from the records' order and timestamps); each task's best kernel against
the roofline of the machine that timed it (its peak FLOP/s and bandwidth, measured when the
tuning began and stored in the records' meta table: autotune/roofline.py); the time per task in
the model (calls x best time); and each task's best schedule with the kernel it makes, as IR text.
Charts are PNGs drawn by matplotlib (the optional extra `nestor[report]`) and embedded as data
URIs, so the page needs no network and no file beside it.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass

from .autotune.records import LOCAL_DEVICE, Record, Records
from .autotune.roofline import Roofline, measure_roofline, stored_roofline
from .cli_records import kernel_name
from .ir import itemsize, parse_kernel, print_kernel
from .ir.errors import NestorError
from .ir.files import atomic_write
from .passes import Schedule

INSTALL_HINT = "pip install 'nestor[report]'"


class ReportError(NestorError):
    """A report that cannot be made: matplotlib missing, no records for the target asked for."""


@dataclass
class TaskData:
    hash: str
    name: str
    kernel: str                 # IR text, canonical loop names
    flops: float
    records: list[Record]       # on the reported target, in the order measured
    best: Record | None
    calls: int = 1              # in --model (1 without one)

    @property
    def bytes(self) -> int:
        """Compulsory memory traffic: every parameter read or written once."""
        return sum(b.size * itemsize(b.dtype) for b in parse_kernel(self.kernel).params)


def write_report(records_path: str, out: str, model: str | None = None, input_shapes: dict | None = None,
                 target: str | None = None) -> None:
    figure = _figure_class()   # before any work: a missing extra is the first thing said
    with Records(records_path, create=False) as db:
        key = _target_key(db, target, records_path)
        tasks = [_task_data(db, task, key) for task in db.tasks()]
        tasks = [t for t in tasks if t.records]
        roofline = stored_roofline(db, key)
    roofline_note = "measured on the tuning machine after its tuning"
    timed_here = all(r.device == LOCAL_DEVICE for t in tasks for r in t.records)   # not on RPC devices
    if roofline is None and _is_cpu(key) and timed_here:
        roofline, roofline_note = measure_roofline(), "not stored with these records: measured on this machine now"
    untuned = _weigh_by_model(tasks, model, input_shapes, key) if model else []
    page = _Page(records_path, key, tasks, roofline, roofline_note, model, untuned, figure)
    with atomic_write(out) as f:
        f.write(page.html().encode())


def _is_cpu(key: str) -> bool:
    try:
        return json.loads(key).get("kind") == "llvm"
    except (ValueError, AttributeError):   # a target key of an older Nestor: its string form
        return key.startswith("llvm")


def _figure_class():
    try:
        from matplotlib.figure import Figure   # the object API: no pyplot state, no display needed
    except ImportError:
        raise ReportError(f"nestor report draws its charts with matplotlib, which is not installed: "
                          f"{INSTALL_HINT}") from None
    return Figure


def _target_key(db: Records, target: str | None, path: str) -> str:
    """The target reported: the one asked for (as stored, or as `--target` names it), else the one
    with most records."""
    counts: dict[str, int] = {}
    for key, _, n, _, _ in db.tallies():
        counts[key] = counts.get(key, 0) + n
    if not counts:
        raise ReportError(f"records file '{path}' holds no records")
    if target is None:
        return max(counts, key=counts.get)
    if target in counts:
        return target
    from .autotune.tune import target_key
    from .codegen import as_target
    key = target_key(as_target(target))
    if key not in counts:
        raise ReportError(f"records file '{path}' has no records for target {key}; it has: {', '.join(counts)}")
    return key


def _task_data(db: Records, task: str, key: str) -> TaskData:
    text = db.task_kernel(task) or ""
    return TaskData(task, kernel_name(text), text, db.task_flops(task) or 0.0, db.records(task, key),
                    db.best(task, key))


def _weigh_by_model(tasks: list[TaskData], model: str, input_shapes: dict | None, key: str) -> list[str]:
    """Set each task's calls in `model` (tasks it does not call are dropped); the names of the
    model's kernels that have no records."""
    from .api import import_onnx
    from .autotune.task_scheduler import extract_tasks
    calls = {t.hash: t for t in extract_tasks(import_onnx(model, input_shapes, target=key))}
    tasks[:] = [t for t in tasks if t.hash in calls]
    for t in tasks:
        t.calls = calls[t.hash].calls
    tuned = {t.hash for t in tasks}
    return [t.kernel.name for h, t in calls.items() if h not in tuned]


# -- curves ----------------------------------------------------------------------------------

def best_so_far(records: list[Record]) -> list[float | None]:
    """After each record, the fastest correct median yet (None until there is one)."""
    best, found = None, []
    for r in records:
        if r.ok and (best is None or r.median < best):
            best = r.median
        found.append(best)
    return found


def model_curve(tasks: list[TaskData]) -> tuple[list[int], list[float], list[float]]:
    """(trial number, wall seconds since the first record, estimated model seconds) after each
    record of any task, from when every task has a time: the sum of calls x best time so far."""
    events = sorted(((t, r) for t in tasks for r in t.records), key=lambda e: (e[1].timestamp, e[1].id))
    if not events:
        return [], [], []
    start, best = events[0][1].timestamp, {}
    trials, walls, estimates = [], [], []
    for n, (task, r) in enumerate(events, start=1):
        if r.ok and (task.hash not in best or r.median < best[task.hash]):
            best[task.hash] = r.median
        if len(best) == len(tasks):
            trials.append(n), walls.append(r.timestamp - start)
            estimates.append(sum(t.calls * best[t.hash] for t in tasks))
    return trials, walls, estimates


# -- the page --------------------------------------------------------------------------------

class _Page:
    def __init__(self, path, key, tasks, roofline, roofline_note, model, untuned, figure):
        self.path, self.key, self.tasks, self.model, self.untuned = path, key, tasks, model, untuned
        self.roofline, self.roofline_note, self.Figure = roofline, roofline_note, figure

    def html(self) -> str:
        sections = [self.summary(), self.estimate(), self.curves(), self.roofline_section(), self.time_per_task(),
                    self.schedules()]
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Nestor report: "
                f"{_e(os.path.basename(self.path))}</title><style>{_STYLE}</style></head><body>\n"
                f"<h1>Nestor tuning report</h1>\n" + "\n".join(sections) + "\n</body></html>\n")

    def summary(self) -> str:
        records = [r for t in self.tasks for r in t.records]
        devices = sorted({r.device for r in records})
        rows = [("records file", self.path), ("target", self.key), ("devices", ", ".join(devices)),
                ("tasks", len(self.tasks)), ("records", len(records)),
                ("errors", sum(not r.ok for r in records)),
                ("model", f"{self.model} (tasks weighed by their calls)" if self.model else
                 "none given (each task counted once; --model m.onnx weighs them by their calls)")]
        if self.roofline:
            rows += [("peak compute", f"{self.roofline.flops / 1e9:.1f} GFLOP/s ({self.roofline_note})"),
                     ("memory bandwidth", f"{self.roofline.bandwidth / 1e9:.1f} GB/s")]
        return _section("summary", "Summary", _table(["", ""], rows))

    def estimate(self) -> str:
        trials, walls, estimates = model_curve(self.tasks)
        what = "model latency (sum of calls x best time)" if self.model else "sum of the tasks' best times"
        if not estimates:
            untimed = [t.name for t in self.tasks if t.best is None]
            return _section("model-estimate", "Model estimate", f"<p>No estimate: no correct record of "
                                                                f"{_e(', '.join(untimed))}.</p>")
        body = (f"<p>Estimated {what}: {estimates[-1] * 1e3:.4f} ms after {trials[-1]} trials, from the first "
                f"trial at which every task had a time.</p>" + self.curve_chart(trials, walls, estimates, what))
        return _section("model-estimate", "Model estimate", body)

    def curves(self) -> str:
        parts = []
        for t in self.tasks:
            best = best_so_far(t.records)
            points = [(n, r.timestamp, b) for n, (r, b) in enumerate(zip(t.records, best), start=1) if b is not None]
            if not points:
                parts.append(f"<h3>{_e(t.name)}</h3><p>No correct record.</p>")
                continue
            start = t.records[0].timestamp
            parts.append(f"<h3>{_e(t.name)} <small>{t.hash[:12]}</small></h3>" + self.curve_chart(
                [p[0] for p in points], [p[1] - start for p in points], [p[2] for p in points], "best time"))
        return _section("curves", "Tuning curves", "\n".join(parts))

    def curve_chart(self, trials, walls, seconds, what: str) -> str:
        fig = self.Figure(figsize=(9, 2.6), dpi=80)
        scale, unit = (1e3, "ms") if max(seconds) >= 1e-3 else (1e6, "µs")
        for ax, xs, label in zip(fig.subplots(1, 2), (trials, walls), ("trials", "wall time (s)")):
            ax.step(xs, [s * scale for s in seconds], where="post")
            ax.set_xlabel(label), ax.set_ylabel(unit), ax.grid(alpha=0.3)
        fig.suptitle(what, fontsize=10)
        fig.tight_layout()
        return _image(fig, f"{what} against trials and wall time")

    def roofline_section(self) -> str:
        if self.roofline is None:
            return _section("roofline", "Roofline", "<p>No roofline for this target: one is measured for CPU "
                                                    "targets timed on the tuning host only.</p>")
        rows, points = [], []
        for t in self.tasks:
            if not (t.best and t.flops):
                continue
            achieved, intensity = t.flops / t.best.median, t.flops / max(t.bytes, 1)
            bound = self.roofline.bound(intensity)
            points.append((t.name, intensity, achieved))
            rows.append((t.name, f"{intensity:.2f}", f"{achieved / 1e9:.2f}", f"{bound / 1e9:.2f}",
                         f"{achieved / bound:.1%}", "compute" if bound == self.roofline.flops else "memory"))
        table = _table(["task", "FLOP/byte", "GFLOP/s", "roof GFLOP/s", "of roof", "bound by"], rows)
        note = (f"<p>Roof: min({self.roofline.flops / 1e9:.1f} GFLOP/s, FLOP/byte x "
                f"{self.roofline.bandwidth / 1e9:.1f} GB/s), {self.roofline_note}. Bytes: each parameter read or "
                f"written once.</p>")
        if any(achieved > self.roofline.bound(intensity) for _, intensity, achieved in points):
            note += ("<p>Above 100%: the kernel's data stayed in cache (a roof of memory bandwidth does not "
                     "bind it), or the probe ran while the machine was busier than when the kernel was timed.</p>")
        return _section("roofline", "Roofline", note + (self.roofline_chart(points) if points else "") + table)

    def roofline_chart(self, points) -> str:
        fig = self.Figure(figsize=(7, 4.5), dpi=80)
        ax = fig.subplots()
        ridge = self.roofline.flops / self.roofline.bandwidth   # where the roof stops sloping
        lo = min(min(p[1] for p in points), ridge) / 4
        hi = max(max(p[1] for p in points), ridge) * 4
        xs = [lo * (hi / lo) ** (i / 64) for i in range(65)]
        ax.loglog(xs, [self.roofline.bound(x) / 1e9 for x in xs], color="black", label="roof")
        for name, intensity, achieved in points:
            ax.loglog([intensity], [achieved / 1e9], "o")
            ax.annotate(name, (intensity, achieved / 1e9), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("FLOP / byte"), ax.set_ylabel("GFLOP/s"), ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        return _image(fig, "each task's best kernel against the roofline")

    def time_per_task(self) -> str:
        timed = sorted((t for t in self.tasks if t.best), key=lambda t: -t.calls * t.best.median)
        total = sum(t.calls * t.best.median for t in timed)
        rows = [(t.name, t.calls, f"{t.best.median * 1e3:.4f}", f"{t.calls * t.best.median * 1e3:.4f}",
                 f"{t.calls * t.best.median / total:.1%}") for t in timed]
        rows += [(name, "", "not tuned", "", "") for name in self.untuned]
        body = _table(["task", "calls", "best ms", "calls x best ms", "share"], rows)
        if timed:
            fig = self.Figure(figsize=(7, 0.6 + 0.25 * min(len(timed), 30)), dpi=80)
            ax = fig.subplots()
            shown = timed[:30][::-1]
            ax.barh([t.name for t in shown], [t.calls * t.best.median * 1e3 for t in shown])
            ax.set_xlabel("ms in the model" if self.model else "ms (each task once)")
            ax.tick_params(axis="y", labelsize=7)
            fig.tight_layout()
            body = _image(fig, "time per task") + body
        return _section("time-per-task", "Time per task in the model", body)

    def schedules(self) -> str:
        parts = []
        for t in self.tasks:
            if t.best is None:
                continue
            try:
                schedule = Schedule.from_json(t.best.schedule)
                text = print_kernel(schedule.apply(parse_kernel(t.kernel)))
                steps = str(schedule) or "(none: the kernel as written)"
            except (NestorError, ValueError) as err:   # a schedule another Nestor wrote
                steps, text = t.best.schedule, f"cannot replay: {err}"
            parts.append(f"<h3>{_e(t.name)} <small>{t.best.median * 1e3:.4f} ms, {_e(t.best.device)}</small></h3>"
                         f"<pre class='steps'>{_e(steps)}</pre><pre>{_e(text)}</pre>")
        return _section("schedules", "Best schedules", "\n".join(parts))


def _image(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _section(ident: str, title: str, body: str) -> str:
    return f"<section id='{ident}'><h2>{_e(title)}</h2>\n{body}\n</section>"


def _table(header, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
          "text-align:left;font-size:0.9em}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:0.8em}"
          "pre.steps{background:#eef3fb}h3 small{color:#777;font-weight:normal}")
