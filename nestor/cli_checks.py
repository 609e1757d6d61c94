"""The command line's checks of its arguments, all made before any work starts: a compile or a
tuning must not run for minutes and then fail on an argument.

Values are checked where argparse reads them (the types below): a bad one is a usage error, one
line, exit 2. `check_command` then checks what needs more than one argument (a flag that needs
another, names from a list) and every path, before the command runs: a file to read must be one, a
file to write must be writable in a folder that exists and must not be one of the inputs (FileError,
exit 1).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import secrets
import sys

from .ir.errors import FileError, UsageError

UNITS = {"s": 1, "m": 60, "h": 3600}


class Parser(argparse.ArgumentParser):
    """argparse's parser, its errors one line (`nestor tune: error: argument --trials: ...`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # '-5s' is a (bad) value, not an unknown flag: let `duration` say what is wrong with it
        self._negative_number_matcher = re.compile(r"^-\d*\.?\d+(e[-+]?\d+)?[smh]?$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(minimum: int):
    """An argparse type: a whole number of at least `minimum`."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return whole_number


def duration(text: str, allow_zero: bool = False) -> float:
    """An argparse type: '90', '90s', '10m' or '1h' -> seconds, finite and positive (or zero)."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS else (text, "s")
    try:
        seconds = float(number) * UNITS[unit]
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds if allow_zero else 0 < seconds) or not seconds < math.inf:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive duration such as 90s, 10m or 1h")
    return seconds


def name_file(text: str) -> tuple[str, str]:
    """An argparse type: NAME=FILE -> (name, file)."""
    name, sep, path = text.partition("=")
    if not (name and sep and path):
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=FILE.npy")
    return name, path


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """An argparse type: NAME=D0,D1,... -> (name, dims), every dimension at least 1."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=D0,D1,...")
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': dimensions are at least 1")
    return name, shape


def by_name(pairs: list[tuple], flag: str) -> dict:
    """Repeated NAME=... arguments as a dict; a name given twice is a usage error."""
    out = {}
    for name, value in pairs:
        if name in out:
            raise UsageError(f"{flag} names '{name}' twice")
        out[name] = value
    return out


def readable(path: str, what: str) -> None:
    """A file that exists, is not a directory and can be opened."""
    if not os.path.exists(path):
        raise FileError(f"{what} '{path}' does not exist")
    if os.path.isdir(path):
        raise FileError(f"{what} '{path}' is a directory, not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise FileError(f"cannot read {what} '{path}': {err.strerror}") from None


def writable(path: str, what: str, inputs: tuple[str, ...] = ()) -> None:
    """A file that can be created or replaced at `path` and is none of `inputs`: its folder
    exists and takes a new file (tried, as permissions alone do not tell: root, read-only mounts)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FileError(f"{what} '{path}' is a directory")
    if not os.path.isdir(folder):
        raise FileError(f"{what} '{path}': no such directory '{folder}'")
    for other in inputs:
        if os.path.exists(path) and os.path.exists(other) and os.path.samefile(path, other):
            raise FileError(f"{what} '{path}' is also an input; it would be overwritten")
    probe = os.path.join(folder, f".nestor-probe-{secrets.token_hex(6)}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        raise FileError(f"{what} '{path}': cannot write in '{folder}': {err.strerror}") from None


def read_or_create(path: str, what: str, inputs: tuple[str, ...] = ()) -> None:
    """A file read if it exists and written (or created): records databases, cost models."""
    if os.path.exists(path):
        readable(path, what)
    writable(path, what, inputs)


def model_file(path: str, kinds: str = ".onnx") -> None:
    """The MODEL argument: a readable file, not one of another kind (a .nestor where an ONNX
    model is wanted says so, rather than what protobuf makes of a zip)."""
    readable(path, "model")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".nestor" and ".nestor" not in kinds:
        raise FileError(f"'{path}' is a compiled model; this command takes {kinds.replace(' ', ' or ')}")
    if ext in (".onnx", ".ir") and ext not in kinds:
        raise FileError(f"'{path}' is {'an ONNX model' if ext == '.onnx' else 'a kernel'}; this command "
                        f"takes {kinds.replace(' ', ' or ')}")


def check_command(args) -> None:
    """What one argument's type cannot check, and every path, before the command runs."""
    command = getattr(args, "command", None)
    if command not in ("compile", "run", "ir", "tune", "bench"):
        return
    pretrained = getattr(args, "pretrained", None) or ()
    if command in ("compile", "tune", "ir", "run"):
        model_file(args.model, {"compile": ".onnx", "ir": ".onnx", "tune": ".onnx .ir",
                                "run": ".nestor .onnx"}[command])
    for path in getattr(args, "input", None) or ():
        readable(path[1], f"--input '{path[0]}'")
    schedule = getattr(args, "schedule", None)
    if schedule and schedule.endswith(".json"):
        readable(schedule, "schedule file")
    if command == "compile":
        if not args.tune:
            for flag in ("trials", "time_budget", "cost_model", "pretrained", "rpc_tracker", "rpc_key"):
                if getattr(args, flag):
                    raise UsageError(f"--{flag.replace('_', '-')} needs --tune")
            if args.records:
                readable(args.records, "records file")
        else:
            args.records = args.records or "nestor_records.sqlite"
            read_or_create(args.records, "records file", (args.model,))
        args.output = args.output or os.path.splitext(args.model)[0] + ".nestor"
        writable(args.output, "-o", (args.model,))
        if args.output.lower().endswith(".onnx"):
            raise UsageError(f"-o '{args.output}': a compiled model is not an ONNX model; name it .nestor")
    if command == "run":
        if not args.model.lower().endswith(".onnx"):
            for flag in ("input_shape", "schedule"):
                if getattr(args, flag):
                    raise UsageError(f"--{flag.replace('_', '-')} applies to an ONNX model; "
                                     f"'{args.model}' is compiled already")
        if args.save_outputs:
            writable(args.save_outputs, "--save-outputs",
                     (args.model, *(p for _, p in args.input)))
    if command == "tune":
        if args.model.lower().endswith(".ir") and args.input_shape:
            raise UsageError("--input-shape applies to an ONNX model, not to a kernel (.ir)")
        read_or_create(args.records, "records file", (args.model,))
    if command == "bench":
        if args.suite == "costmodel" and not args.records:
            raise UsageError("bench costmodel needs --records DB (from nestor tune or nestor bench kernels --records DB)")
        _known_names(args)
        if args.records and (args.suite == "costmodel" or (args.suite == "models" and not args.time_budget)):
            readable(args.records, "records file")
        elif args.records:
            read_or_create(args.records, "records file")
    if getattr(args, "cost_model", None):
        read_or_create(args.cost_model, "--cost-model", (args.model,))
    for path in pretrained:
        readable(path, "pretraining file")


def _known_names(args) -> None:
    """bench's --models and --kernels name models and kernels it has."""
    from .ir.errors import NestorError
    if args.suite == "models" and args.models:
        from .bench import MODELS
        unknown = [n for n in args.models.split(",") if n not in MODELS]
        if unknown:
            raise UsageError(f"--models: unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if args.suite == "kernels" and args.kernels:
        from .autotune.kernel_suite import kernels_named
        try:
            kernels_named(args.kernels.split(","))
        except NestorError as err:
            raise UsageError(f"--kernels: {err}") from None


def quiet_broken_pipe() -> None:
    """stdout's reader went away (`nestor passes | head`): nothing more to print, no traceback.
    stdout is pointed at /dev/null so that the flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
