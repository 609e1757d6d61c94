"""The `nestor` command line: compile | run | ir | passes | tune | bench.

Every user error (bad model, unsupported op, wrong input) is printed as one line on stderr with a
non-zero exit status; tracebacks are for Nestor's own bugs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import inspect
import sys
import textwrap
import time
import typing
import warnings

import numpy as np

from .cli_checks import Parser, at_least, by_name, check_command, duration, input_shape, name_file, quiet_broken_pipe
from .ir.errors import DAMAGED_ARRAY_FILE, InputError, NestorError, UsageError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:   # --help, or a usage error argparse printed (exit 2)
        return done.code or 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            check_command(args)
            return args.func(args) or 0
        except NestorError as err:  # the first line: a syntax error's source and caret stay out
            print(f"nestor: error: {(str(err).strip().splitlines() or [type(err).__name__])[0]}", file=sys.stderr)
            return 2 if isinstance(err, UsageError) else 1
        except BrokenPipeError:    # `nestor passes | head`
            quiet_broken_pipe()
            return 0
        except KeyboardInterrupt:
            print("nestor: interrupted", file=sys.stderr)
            return 130


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"nestor: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="nestor", description="An autotuning tensor compiler.")
    sub = p.add_subparsers(metavar="command", dest="command")

    c = sub.add_parser("compile", help="compile an ONNX model into a deployable .nestor file")
    c.add_argument("model", help="model.onnx")
    c.add_argument("-o", "--output", help="output file (default: MODEL.nestor)")
    c.add_argument("--records", help="use the best schedules tuned into this records database")
    c.add_argument("--tune", action="store_true",
                   help="tune the model's kernels first (into --records, default nestor_records.sqlite)")
    _tuning_args(c)
    _shape_and_schedule_args(c)
    _target_arg(c)
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="run a compiled model (or an ONNX model, compiled first)")
    r.add_argument("model", help="model.nestor or model.onnx")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", type=name_file,
                   help="an input from a .npy file (repeatable); random inputs where none given")
    r.add_argument("--save-outputs", metavar="OUT.npz", help="save the outputs, by name")
    r.add_argument("--repeat", type=at_least(1), default=20, help="timed runs (default 20)")
    r.add_argument("--profile", type=at_least(1), nargs="?", const=15, metavar="N",
                   help="then time each kernel alone and print the N slowest (default 15)")
    _shape_and_schedule_args(r, default_schedule=None)   # None: an explicit one on a .nestor is refused
    _target_arg(r, default=None, default_text="a compiled model's own; cpu for an ONNX model")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("ir", help="print the Nestor IR of a model's kernels")
    i.add_argument("model", help="model.onnx")
    i.add_argument("--node", help="only the kernel of this node")
    _shape_and_schedule_args(i, default_schedule="none")
    _target_arg(i)
    i.set_defaults(func=cmd_ir)

    ps = sub.add_parser("passes", help="list the schedule passes (built-ins and plugins)")
    ps.add_argument("-v", "--verbose", action="store_true", help="full descriptions")
    ps.set_defaults(func=cmd_passes)

    t = sub.add_parser("tune", help="tune the kernels of a model (or one kernel.ir) into a records database")
    t.add_argument("model", help="model.onnx or kernel.ir (Nestor IR text)")
    t.add_argument("--records", default="nestor_records.sqlite", help="records database (default: %(default)s)")
    _tuning_args(t)
    t.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...", type=input_shape)
    _target_arg(t)
    t.set_defaults(func=cmd_tune)

    b = sub.add_parser("bench", help="benchmarks: models against ONNX Runtime, kernels against MetaSchedule")
    b.add_argument("suite", choices=["models", "kernels", "costmodel"],
                   help="costmodel: ranking quality on held-out records of --records")
    b.add_argument("--models", help="models: comma-separated names (default: all)")
    b.add_argument("--kernels", help="kernels: comma-separated names (default: all)")
    b.add_argument("--trials", type=at_least(1), default=256, help="kernels: trials per kernel and tuner")
    b.add_argument("--repeat", type=at_least(1), default=20)
    b.add_argument("--no-metaschedule", dest="metaschedule", action="store_false",
                   help="kernels: time Nestor against the library alone (ONNX Runtime, or PyTorch on a GPU); "
                        "costmodel: leave out MetaSchedule's cost model, scored beside Nestor's on the same folds")
    b.add_argument("--via-tvm", action="store_true",
                   help="kernels: tune each kernel a third time through TVM's ms.tune_tir with Nestor's strategy "
                        "(nestor.tvm) and time it beside the others")
    b.add_argument("--records", help="kernels: keep Nestor's measurements in this database; "
                                     "models: tune into it, or without --time-budget compile from it; "
                                     "costmodel: the records to evaluate on")
    b.add_argument("--pretrained", metavar="FILE", action="append",
                   help="costmodel: pretrain every model from these records of other models (.sqlite) or this "
                        "saved cost model (repeatable)")
    b.add_argument("--truth", default="median", metavar="median|fastest|DB",
                   help="costmodel: judge the ranking against each record's median (default), its fastest repeat, "
                        "or the same schedules' medians in DB (made by `nestor records retime`)")
    b.add_argument("--time-budget", metavar="30m", type=duration, help="models: tune each model this long first")
    b.add_argument("--seed", type=int, default=0,
                   help="kernels, models: the tunings' random seed (repeat a benchmark with others to see how "
                        "much of a difference is the search's luck; default: %(default)s)")
    _target_arg(b)
    b.set_defaults(func=cmd_bench)
    from .cli_records import add_commands
    add_commands(sub)   # records export | import | merge | show, report
    return p


def _tuning_args(p) -> None:
    p.add_argument("--trials", type=at_least(1), help="measurements in all, spread over a model's kernels by "
                                              "the task scheduler (default 64 per distinct kernel; "
                                              "with --time-budget alone: as many as fit)")
    p.add_argument("--time-budget", metavar="30m", type=duration, help="stop tuning after this long (s, m or h)")
    p.add_argument("--cost-model", metavar="FILE", help="load and save the cost model here")
    p.add_argument("--seed", type=int, default=0, help="the tuning's random seed: samples, evolution and the "
                                                       "cost model's (default: %(default)s)")
    p.add_argument("--pretrained", metavar="FILE", action="append",
                   help="pretrain the cost model from these records of other tunings (.sqlite) or this saved "
                        "cost model (repeatable)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="time the candidates on the devices of this TVM RPC tracker (with --rpc-key)")
    p.add_argument("--rpc-key", metavar="KEY", help="the key the devices are registered under")


def _target_arg(p, default: str | None = "cpu", default_text: str = "cpu") -> None:
    p.add_argument("--target", default=default, metavar="TARGET",
                   help=f"cpu, cuda, or a TVM target string or JSON (default: {default_text})")


def _target(args):
    """The TVM target of --target, checked before any work (a bad one: one line, exit 1)."""
    from .codegen import as_target
    return as_target(args.target)


def _shape_and_schedule_args(p, default_schedule: str = "default") -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...", type=input_shape,
                   help="fix a dynamic input's shape (repeatable)")
    p.add_argument("--schedule", default=default_schedule, metavar="default|basic|none|FILE.json|PIPELINE",
                   help=f"kernel schedule: default (untuned rules of thumb), basic (parallel outer, "
                        f"vectorized inner loops), none, a schedule file, or a pipeline string "
                        f"such as 'split(i0, 4); vectorize(i0_i)' for every kernel "
                        f"(default: {default_schedule or 'default'})")


def _input_shapes(items: list[tuple[str, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
    return by_name(items, "--input-shape")


def _compile(path: str, args):
    from .api import compile as nestor_compile
    from .codegen import describe
    target = _target(args)
    print(f"  compiling for {describe(target)}", flush=True)
    start = time.perf_counter()
    model = nestor_compile(path, input_shapes=_input_shapes(args.input_shape), target=target,
                           schedule=args.schedule or "default", records=getattr(args, "records", None),
                           progress=lambda msg: print(f"  {msg}", flush=True))
    return model, time.perf_counter() - start


def cmd_compile(args) -> int:
    from .codegen import describe
    _target(args)
    if args.tune:
        from .api import import_onnx
        _tune_graph(import_onnx(args.model, _input_shapes(args.input_shape), target=args.target), args)
    model, seconds = _compile(args.model, args)
    out = args.output   # checked, and defaulted, by check_command
    model.save(out)
    print(f"compiled {args.model} for {describe(model.target)} in {seconds:.1f} s: "
          f"{len(model.plan['steps'])} kernel calls, "
          f"{model.num_kernels} distinct kernels, arena {model.plan['arena_bytes'] / 2**20:.1f} MiB "
          f"(unplanned {model.plan['naive_bytes'] / 2**20:.1f} MiB) -> {out}")
    return 0


def cmd_run(args) -> int:
    from .api import load
    if args.model.endswith(".onnx"):
        args.target = args.target or "cpu"
        model, _ = _compile(args.model, args)
    else:
        wanted = _target(args) if args.target is not None else None
        model = load(args.model)
        _check_artifact_target(args.model, model.target, wanted)
    inputs = model.random_inputs()
    for name, path in by_name(args.input, "--input").items():
        if name not in inputs:
            raise InputError(f"--input '{name}': the model's inputs are {model.input_names}")
        inputs[name] = _read_array(name, path)
    outputs = model.run(inputs)
    times = [model.time_once(inputs) for _ in range(args.repeat)]
    for name, value in zip(model.output_names, outputs):
        print(f"output {name}: shape {tuple(value.shape)} {value.dtype}")
    print(f"median latency: {np.median(times) * 1e3:.3f} ms over {len(times)} runs")
    if args.save_outputs:
        from .ir.files import atomic_write
        with atomic_write(args.save_outputs) as f:   # whole or not at all, as np.savez's own file is not
            np.savez(f, **dict(zip(model.output_names, outputs)))
        print(f"outputs saved to {args.save_outputs}")
    if args.profile:
        _print_profile(model.profile(inputs, args.repeat), args.profile)
    return 0


def _read_array(name: str, path: str) -> np.ndarray:
    """One array from a .npy file (never a pickle: loading one runs code)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz archive" if magic.startswith(b"PK") else "not a NumPy .npy file"
        raise InputError(f"--input '{name}': '{path}' is {kind}; give one array saved with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except DAMAGED_ARRAY_FILE as err:
        raise InputError(f"--input '{name}': cannot read '{path}': {err}") from None


def _print_profile(rows: list[dict], top: int) -> None:
    """The slowest kernels, each with its share of the kernels' total and the nodes that call it."""
    total = sum(r["seconds"] for r in rows) or 1.0
    print(f"kernels timed alone: {total * 1e3:.3f} ms in all; the {min(top, len(rows))} slowest of {len(rows)}:")
    print(f"{'ms':>8} {'share':>6} {'calls':>5}  {'op':<18} nodes")
    for r in rows[:top]:
        nodes = ", ".join(r["nodes"][:3]) + (f" (+{len(r['nodes']) - 3})" if len(r["nodes"]) > 3 else "")
        print(f"{r['seconds'] * 1e3:>8.3f} {r['seconds'] / total:>6.1%} {len(r['nodes']):>5}  {r['op']:<18} {nodes}")


def _check_artifact_target(path: str, has, wanted) -> None:
    """A compiled model runs on its own target's device: a --target of another kind is an error."""
    from .codegen import describe, is_gpu
    if wanted is not None and wanted.kind.name != has.kind.name:
        raise InputError(f"'{path}' was compiled for {describe(has)}, not for --target "
                         f"{describe(wanted)}; compile the ONNX model with --target "
                         f"{'cuda' if is_gpu(wanted) else 'cpu'}")


def cmd_ir(args) -> int:
    from .api import import_onnx, scheduler
    from .ir import print_kernel, structural_hash
    graph = import_onnx(args.model, _input_shapes(args.input_shape), target=_target(args))
    schedule = scheduler(args.schedule, graph, target=args.target)
    nodes = [n for n in graph.nodes if n.kernel is not None]
    if args.node:
        nodes = [n for n in nodes if n.name == args.node]
        if not nodes:
            raise InputError(f"no kernel node named '{args.node}' in {args.model}")
    for node in nodes:
        kernel = schedule(node.kernel) if schedule else node.kernel
        print(f"# node '{node.name}' ({node.op_type}): {', '.join(node.inputs)} -> {', '.join(node.outputs)}"
              f"  [hash {structural_hash(node.kernel)[:12]}]")
        print(print_kernel(kernel))
    return 0


def cmd_passes(args) -> int:
    from .passes import list_passes, plugin_errors
    from .passes.registry import BUILTINS, GROUP
    with warnings.catch_warnings():  # broken plugins are listed below, not warned about
        warnings.simplefilter("ignore")
        passes, broken = list_passes(), plugin_errors()
    entry_points = importlib.metadata.entry_points(group=GROUP)
    for title, names in (("built-in passes", [n for n in passes if n in BUILTINS]),
                         ("plugin passes", [n for n in passes if n not in BUILTINS])):
        if names:
            print(f"{title}:")
        for name in names:
            cls = passes[name]
            origin = "" if name in BUILTINS else f"  [{_plugin_origin(cls, entry_points)}]"
            print(f"  {_signature(cls)}{origin}")
            doc = inspect.cleandoc(cls.__doc__ or "")
            if args.verbose:
                print(textwrap.indent(doc, " " * 6))
            else:
                print(textwrap.fill(_summary(doc), 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    _print_sketch_rules()
    if broken:
        print("plugins that failed to load:")
        for error in broken.values():
            print(f"  {error}")
    return 0


def _print_sketch_rules() -> None:
    """The tuner's sketch rules per target kind, plugins' marked."""
    from .autotune.rules import RULES, plugin_rules
    with warnings.catch_warnings():  # a broken rule plugin was warned about where it loaded
        warnings.simplefilter("ignore")
        plugins = plugin_rules()
    print("sketch rules:")
    for kind, rules in RULES.items():
        extra = [r for r in plugins if kind in getattr(r, "targets", ("cpu",))]
        names = [r.name for r in rules] + [f"{r.name} [plugin: {type(r).__module__}]" for r in extra]
        print(f"  {kind}: {', '.join(names)}")


def _summary(doc: str) -> str:
    """The first sentence of a docstring, its lines joined."""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    sentence, dot, _ = paragraph.partition(". ")
    return sentence + dot.strip()


def _signature(cls) -> str:
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    params = [f"{p}: {_type_name(tp)}" + (f" = {_value_text(defaults[p])}" if p in defaults else "")
              for p, tp in cls.parameters().items()]
    return f"{cls.name}({', '.join(params)})"


def _value_text(value) -> str:
    """A default as the pipeline syntax writes it."""
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _type_name(tp) -> str:
    """`tuple[int, ...]` as the pipeline syntax writes it: a list."""
    if typing.get_origin(tp) is tuple:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _plugin_origin(cls, entry_points) -> str:
    for ep in entry_points:
        try:
            if ep.load() is cls:
                dist = f"{ep.dist.name} {ep.dist.version}, " if ep.dist else ""
                return f"plugin: {dist}entry point {ep.name} = {ep.value}"
        except Exception:  # noqa: BLE001 (a broken plugin is reported by plugin_errors)
            continue
    return "plugin"


def cmd_bench(args) -> int:
    _target(args)
    if args.suite == "kernels":
        from .bench_kernels import bench_kernels
        bench_kernels(args.kernels.split(",") if args.kernels else None, args.trials, args.repeat,
                      records=args.records, target=args.target, metaschedule=args.metaschedule,
                      via_tvm=args.via_tvm, seed=args.seed)
        return 0
    if args.suite == "costmodel":
        from .autotune.model_quality import evaluate, report
        report(evaluate(args.records, pretrained=args.pretrained, truth=args.truth, metaschedule=args.metaschedule))
        return 0
    from .bench import bench_models
    names = args.models.split(",") if args.models else None
    bench_models(names, repeat=args.repeat, time_budget=args.time_budget, records=args.records,
                 target=args.target, seed=args.seed)
    return 0


def cmd_tune(args) -> int:
    _target(args)
    if args.model.endswith(".ir"):
        from .autotune.tune import tune_kernels
        kernel = _read_kernel(args.model)
        _tune(lambda budget: tune_kernels({kernel.name: kernel}, budget, args.records, target=args.target,
                                          model_path=args.cost_model, pretrained=args.pretrained, rpc=_rpc(args),
                                          seed=args.seed),
              f"kernel {kernel.name}", 1, args)
    else:
        from .api import import_onnx
        _tune_graph(import_onnx(args.model, _input_shapes(args.input_shape), target=args.target), args)
    print(f"records in {args.records} (use: nestor compile {args.model} --records {args.records})")
    return 0


def _read_kernel(path: str):
    """A kernel.ir file: UTF-8 Nestor IR text (errors name the file, line and column)."""
    from .ir import parse_kernel
    from .ir.errors import ModelError
    from .ir.parser import IRSyntaxError
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelError(f"'{path}' is not UTF-8 text (byte {err.start}); a kernel file is Nestor IR text") from None
    if not text.strip():
        raise ModelError(f"'{path}' is empty; a kernel file holds one kernel in Nestor IR text")
    try:
        return parse_kernel(text)
    except IRSyntaxError as err:
        raise ModelError(f"'{path}', {str(err).splitlines()[0]}") from None


def _tune_graph(graph, args) -> None:
    """Tune a model's kernels with the task scheduler, then print the table of tasks."""
    from .autotune.tune import tune_graph
    from .ir import structural_hash
    distinct = len({structural_hash(k) for k in graph.kernels()})
    _tune(lambda budget: tune_graph(graph, budget, args.records, target=args.target, model_path=args.cost_model,
                                    pretrained=args.pretrained, rpc=_rpc(args), seed=args.seed),
          f"{distinct} distinct kernels of {len(graph.kernels())} calls", distinct, args)


def _rpc(args) -> tuple[str, str] | None:
    """(tracker, key) of --rpc-tracker and --rpc-key, or None: both or neither."""
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise InputError("--rpc-tracker and --rpc-key go together")
    return (args.rpc_tracker, args.rpc_key) if args.rpc_tracker else None


def _tune(run, what: str, distinct: int, args) -> None:
    """Run a tuning (`run(budget) -> tasks`) within the budget of the arguments (64 trials per
    distinct kernel by default), then print the table of tasks."""
    from .autotune.budget import Budget
    from .autotune.task_scheduler import task_table
    seconds = args.time_budget
    budget = Budget(args.trials or (None if seconds is not None else 64 * distinct), seconds)
    from .codegen import describe
    print(f"tuning {what} for {describe(args.target)} ({budget}); records in {args.records}", flush=True)
    start = time.perf_counter()
    tasks = run(budget)
    task_table(tasks)
    latency = sum(t.calls * t.best for t in tasks if t.best)
    print(f"tuned in {time.perf_counter() - start:.0f} s: {sum(t.trials for t in tasks)} trials, "
          f"estimated latency {latency * 1e3:.3f} ms (sum of kernel times)")


if __name__ == "__main__":
    sys.exit(main())
