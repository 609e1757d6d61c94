"""Fuzzing: mutated bytes for every file Nestor reads (ONNX models, compiled artifacts, records
databases, cost models) and random or mutated text for its parsers (the IR, schedule pipelines,
schedule JSON). Every outcome is a success or a NestorError, never another exception, and the
file read is left as it was.

The default run tries FUZZ_EXAMPLES examples per fuzzer, derandomized (the same ones each run).
A longer, random run: `NESTOR_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py`.
"""
import hashlib
import io
import json
import os
import sqlite3
import string
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nestor
from nestor.autotune.records import Records
from nestor.costmodel.model import CostModel
from nestor.ir import parse_kernel, print_kernel
from nestor.ir.errors import NestorError
from nestor.passes import Schedule, canonical_loops, parse_pipeline
from nestor.passes.model_schedule import read_model_schedule
from tests.test_gpu_runtime import tiny_model

LONG = int(os.environ.get("NESTOR_FUZZ_EXAMPLES", "0"))
FUZZ_EXAMPLES = LONG or 60
fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

KERNEL = parse_kernel("""
kernel mm(A: f32[16, 8], B: f32[8, 12]) -> (C: f32[16, 12]) {
  for i in 0..16 { for j in 0..12 { C[i, j] = 0.0 } }
  for i in 0..16 { for j in 0..12 { for k in 0..8 reduce { C[i, j] += A[i, k] * B[k, j] } } }
}""")
PIPELINE = "split(i2, 4); reorder(i2_o, i3, r0, i2_i); vectorize(i2_i); parallel(i2_o); unroll(r0)"


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` with 1-4 mutations: a byte flipped or set, a cut, random bytes inserted, a range
    deleted, a range repeated."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "repeat"]))
        pos = draw(st.integers(0, max(len(b) - 1, 0)))
        if kind == "flip" and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and b:
            b[pos] = draw(st.sampled_from([0, 1, 0x7f, 0x80, 0xff, draw(st.integers(0, 255))]))
        elif kind == "cut":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del b[pos:pos + draw(st.integers(1, 64))]
        elif kind == "repeat":
            b[pos:pos] = b[pos:pos + draw(st.integers(1, 64))]
    return bytes(b)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def only_nestor_errors(read, path) -> None:
    """`read(path)` succeeds or raises a NestorError, and leaves the file as it was."""
    before = _digest(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a skipped records row warns: fine
        try:
            read(str(path))
        except NestorError as err:
            assert str(err).strip(), "an empty error message"
    assert _digest(path) == before, f"{read.__name__} modified the file it read"


# ---- files ----

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid files of each kind, as bytes: the seeds the fuzzers mutate."""
    d = tmp_path_factory.mktemp("seeds")
    onnx_bytes = tiny_model().SerializeToString()
    (d / "m.onnx").write_bytes(onnx_bytes)
    artifact = d / "m.nestor"
    nestor.compile(str(d / "m.onnx")).save(str(artifact))
    records = d / "r.sqlite"
    with Records(records) as r:
        r.add_task("t0", print_kernel(KERNEL), 2 * 16 * 12 * 8)
        r.add("t0", "llvm", parse_pipeline(PIPELINE).to_json(), 1e-5, [1e-5, 2e-5])
        r.add("t0", "llvm", Schedule().to_json(), None, [], "crashed (signal 11, SIGSEGV)")
    model = CostModel(seed=0)
    kernels = [parse_pipeline(p).apply(KERNEL) for p in ("", PIPELINE, "vectorize(i1)", "parallel(i2)")]
    model.update(kernels, [4e-5, 1e-5, 2e-5, 3e-5], ["t0"] * 4)
    model.save(str(d / "m.costmodel"))
    return {"onnx": onnx_bytes, "nestor": artifact.read_bytes(), "records": records.read_bytes(),
            "costmodel": (d / "m.costmodel").read_bytes()}


def _import(path):
    nestor.import_onnx(path)


def _load_artifact(path):
    nestor.load(path)


def _read_records(path):
    with Records(path, create=False) as r:
        for task in r.tasks():
            r.task_kernel(task), r.task_flops(task)
        found = r.records()
        for rec in found:
            r.best(rec.task, rec.target), r.latest(rec.task, rec.target), r.measured(rec.task, rec.target)
        r.meta_items()


def _load_cost_model(path):
    model = CostModel.load(path)
    model.predict([KERNEL])


@pytest.mark.parametrize("kind, read", [("onnx", _import), ("nestor", _load_artifact),
                                        ("records", _read_records), ("costmodel", _load_cost_model)])
def test_mutated_files(files, tmp_path, kind, read):
    path = tmp_path / f"fuzzed.{kind}"

    @fuzz
    @given(data=mutated(files[kind]))
    def check(data):
        for leftover in tmp_path.iterdir():
            leftover.unlink()
        path.write_bytes(data)
        only_nestor_errors(read, path)

    check()


SQL_VALUES = st.one_of(st.none(), st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(), st.text(max_size=20),
                       st.binary(max_size=20), st.sampled_from(["[]", "[1e-05]", '["x"]', "{}", "nan", "[null]"]))


@fuzz
@given(row=st.tuples(*[SQL_VALUES if n in (3, 5) else SQL_VALUES.filter(lambda v: v is not None and v == v)  # NOT NULL (NaN is stored as NULL)
                       for n in range(9)]))
def test_records_rows_of_any_values(files, tmp_path_factory, row):
    """A row whose columns hold any SQLite value (a hand edit, another program's bug): the reader
    returns it well typed or skips it."""
    path = tmp_path_factory.mktemp("rows") / "r.sqlite"
    path.write_bytes(files["records"])
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO records (task, target, schedule, median, repeats, error, timestamp, version, "
                   "device) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    db.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Records(path, create=False) as r:
            found = r.records() + r.latest("t0", "llvm") + r.latest(str(row[0]), str(row[1]))
    for rec in found:
        assert isinstance(rec.schedule, str) and isinstance(rec.task, str) and isinstance(rec.target, str)
        assert rec.median is None or isinstance(rec.median, float)
        assert all(isinstance(t, float) for t in rec.repeats)
        assert rec.error is None or isinstance(rec.error, str)
        assert isinstance(rec.timestamp, float) and isinstance(rec.version, str) and isinstance(rec.device, str)
        assert rec.fastest is None or isinstance(rec.fastest, float)


def _zip_with(data: bytes, name: str, content: bytes) -> bytes:
    """The zip archive `data` with entry `name` replaced by `content`."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries[name] = content
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, c in entries.items():
            z.writestr(n, c)
    return out.getvalue()


@pytest.mark.parametrize("entry", ["plan.json", "constants.npz"])
def test_artifacts_with_a_mutated_entry(files, tmp_path, entry):
    """A whole zip whose plan or constants are damaged: reaches the checks behind the zip's."""
    with zipfile.ZipFile(io.BytesIO(files["nestor"])) as z:
        original = z.read(entry)
    path = tmp_path / "fuzzed.nestor"

    @fuzz
    @given(content=mutated(original))
    def check(content):
        path.write_bytes(_zip_with(files["nestor"], entry, content))
        only_nestor_errors(_load_artifact, path)

    check()


# ---- text ----

IR_TEXT = print_kernel(parse_pipeline(PIPELINE).apply(KERNEL))
IR_ALPHABET = string.ascii_letters[:12] + string.digits + " \n{}[]()<>,.:;=+-*/%!&|#" + "ïé\x00"
PIPE_ALPHABET = "ijr0123456789_o., ;()[]=-#" + "splitreodvcuaz"


def text_near(seed: str, alphabet: str, max_size: int):
    """Random text over `alphabet`, or `seed` with its bytes mutated."""
    return st.one_of(st.text(alphabet, max_size=max_size),
                     mutated(seed.encode()).map(lambda b: b.decode("utf-8", "replace")))


@fuzz
@given(text=text_near(IR_TEXT, IR_ALPHABET, 200))
def test_ir_parser_on_random_text(text):
    try:
        kernel = parse_kernel(text)
    except NestorError:
        return
    assert parse_kernel(print_kernel(kernel)) == kernel


@fuzz
@given(text=text_near(PIPELINE, PIPE_ALPHABET, 80))
def test_pipelines_parse_and_apply_or_give_a_nestor_error(text):
    try:
        schedule = parse_pipeline(text)
        kernel = schedule.apply(KERNEL, debug=True)
    except NestorError:
        return
    assert Schedule.from_json(schedule.to_json()).apply(KERNEL) == kernel


SCHEDULE_JSON = parse_pipeline(PIPELINE).to_json()


@fuzz
@given(text=mutated(SCHEDULE_JSON.encode()).map(lambda b: b.decode("utf-8", "replace")))
def test_schedule_json_from_records(text):
    """A records row's schedule, damaged: read as the tuner and the compiler replay it."""
    try:
        Schedule.from_json(text).apply(canonical_loops(KERNEL))
    except NestorError:
        pass


@fuzz
@given(data=mutated(json.dumps({"kernels": {"mm": "vectorize(i1)", "1254cbea": [
    {"pass": "parallel", "params": {"loop": "i0"}}]}}).encode()))
def test_model_schedule_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sched") / "s.json"
    path.write_bytes(data)
    only_nestor_errors(read_model_schedule, path)
