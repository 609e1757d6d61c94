"""Records that travel: a records database exported as JSON lines, imported, and merged with others.

The JSON-lines format (one JSON object a line, UTF-8):

    {"format": "nestor-records-jsonl", "version": 1, "nestor": "0.1.0"}           <- header, first line
    {"type": "meta", "key": "roofline:<target>", "value": "<text>"}
    {"type": "task", "hash": "<structural hash>", "kernel": "<IR text>", "flops": 1048576.0}
    {"type": "record", "task": "<hash>", "target": "<target key>", "device": "local",
     "schedule": "<Schedule JSON text>", "median": 0.0012, "repeats": [0.0012, 0.0013],
     "error": null, "timestamp": 1764900000.0, "version": "0.1.0"}

Times are seconds; `timestamp` is when the record was measured (time.time()), `version` the Nestor
that measured it, `device` the key of the device that timed it ("local": the tuning host).
A reader refuses a file whose header names a newer format version, and skips a malformed line
with a RecordsWarning naming the file and line, as the SQLite reader skips an unreadable row.

A record is the same record wherever it goes: importing or merging keeps one copy of each
(equal in every field but the database's row id), so a file imported twice adds nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, astuple, dataclass, field
from typing import Iterable, Iterator

from ..ir.files import atomic_write
from .records import Record, Records, RecordsError, RecordsWarning, nestor_version

JSONL_FORMAT = "nestor-records-jsonl"
JSONL_VERSION = 1   # bump on any change a reader of this version would misread

_RECORD_FIELDS = {"task": str, "target": str, "device": str, "schedule": str, "median": (float, type(None)),
                  "repeats": list, "error": (str, type(None)), "timestamp": float, "version": str}
_TASK_FIELDS = {"hash": str, "kernel": str, "flops": float}
_META_FIELDS = {"key": str, "value": str}


@dataclass
class Contents:
    """What a records file holds, read whole: meta entries, tasks (hash -> (kernel, flops)), records."""
    meta: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, tuple[str, float]] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)


@dataclass(frozen=True)
class Added:
    records: int       # new records stored
    duplicates: int    # records already there, left out
    tasks: int         # new tasks stored


def identity(record: Record) -> tuple:
    """What makes two records one: every field but the row id."""
    return astuple(record)[1:]


# reading

def read_database(path: str | os.PathLike) -> Contents:
    with Records(path, create=False) as db:
        return Contents(db.meta_items(), {t: (db.task_kernel(t), db.task_flops(t)) for t in db.tasks()},
                        db.records())


def read_jsonl(path: str | os.PathLike) -> Contents:
    path = os.fspath(path)
    contents = Contents()
    for line_no, entry in _entries(path):
        kind = entry.get("type")
        try:
            if kind == "record":
                fields = _fields(entry, _RECORD_FIELDS)
                json.loads(fields["schedule"])   # a schedule that is not JSON cannot be replayed
                fields["repeats"] = tuple(_number(r) for r in fields["repeats"])
                contents.records.append(Record(0, **fields))
            elif kind == "task":
                task = _fields(entry, _TASK_FIELDS)
                contents.tasks.setdefault(task["hash"], (task["kernel"], task["flops"]))
            elif kind == "meta":
                meta = _fields(entry, _META_FIELDS)
                contents.meta.setdefault(meta["key"], meta["value"])
            else:
                raise ValueError(f"unknown type {kind!r}")
        except (ValueError, TypeError) as e:
            _skip(path, line_no, e)
    return contents


def _entries(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each line after the header, which is checked first."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise RecordsError(f"cannot read records file '{path}': {e.strerror}") from None
    with f:
        try:
            _check_header(path, f.readline())
            for line_no, line in enumerate(f, start=2):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    if not isinstance(entry, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    _skip(path, line_no, e)
                    continue
                yield line_no, entry
        except UnicodeDecodeError as e:
            raise RecordsError(f"records file '{path}' is not UTF-8 text ({e.reason})") from None


def _check_header(path: str, line: str) -> None:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != JSONL_FORMAT:
        raise RecordsError(f"records file '{path}' is not a Nestor records export: its first line is not "
                           f'a {{"format": "{JSONL_FORMAT}", ...}} header')
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordsError(f"records file '{path}' has no valid format version in its header ({version!r})")
    if version > JSONL_VERSION:
        raise RecordsError(f"records file '{path}' has format version {version} (written by Nestor "
                           f"{header.get('nestor', '?')}); this Nestor reads version {JSONL_VERSION} or older: "
                           f"upgrade Nestor to read it")


def _fields(entry: dict, fields: dict) -> dict:
    """The named fields of an entry, checked for type (numbers as floats)."""
    found = {}
    for name, kind in fields.items():
        if name not in entry:
            raise ValueError(f"no field '{name}'")
        value = entry[name]
        if kind is float or kind == (float, type(None)) and value is not None:
            value = _number(value, name)
        elif not isinstance(value, kind):
            raise TypeError(f"field '{name}' is {type(value).__name__}")
        found[name] = value
    return found


def _number(value, name: str = "repeats") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"field '{name}' holds {value!r}, not a number")
    return float(value)


def _skip(path: str, line_no: int, why: Exception) -> None:
    warnings.warn(f"records file '{path}', line {line_no}: malformed ({why}); skipped", RecordsWarning,
                  stacklevel=4)


# writing

def export_jsonl(database: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write a records database as JSON lines (atomically). Returns the number of records."""
    if _same_file(database, out):
        raise RecordsError(f"records file '{os.fspath(out)}' is the database exported: write the export "
                           f"to another file")
    contents = read_database(database)
    with atomic_write(out) as f:
        for entry in _jsonl_entries(contents):
            f.write(json.dumps(entry).encode() + b"\n")
    return len(contents.records)


def _jsonl_entries(contents: Contents) -> Iterator[dict]:
    yield {"format": JSONL_FORMAT, "version": JSONL_VERSION, "nestor": nestor_version()}
    for key, value in contents.meta.items():
        yield {"type": "meta", "key": key, "value": value}
    for task, (kernel, flops) in contents.tasks.items():
        yield {"type": "task", "hash": task, "kernel": kernel, "flops": flops}
    for record in contents.records:
        entry = asdict(record)
        del entry["id"]
        yield {"type": "record", **entry, "repeats": list(record.repeats)}


def add_contents(db: Records, contents: Contents) -> Added:
    """Store what `db` lacks of `contents`, in one transaction. Meta entries it has already stay."""
    have = {identity(r) for r in db.records()}
    known = set(db.tasks())
    added = duplicates = 0
    with db.transaction():
        for key, value in contents.meta.items():
            if db.meta(key) is None:
                db.set_meta(key, value)
        for task, (kernel, flops) in contents.tasks.items():
            db.add_task(task, kernel, flops)
        for record in contents.records:
            if identity(record) in have:
                duplicates += 1
                continue
            have.add(identity(record))
            db.add_record(record)
            added += 1
    return Added(added, duplicates, len(set(contents.tasks) - known))


def import_jsonl(source: str | os.PathLike, database: str | os.PathLike) -> Added:
    """Add the records of a JSON-lines export to a database (created if missing)."""
    contents = read_jsonl(source)
    with Records(database) as db:
        return add_contents(db, contents)


def merge_databases(sources: Iterable[str | os.PathLike], out: str | os.PathLike) -> Added:
    """One database holding every record of `sources` once, in the order they were measured;
    written whole or not at all. A source may be a database or a JSON-lines export. `out` is a
    new file, or one of the sources (never another file, whose records it would replace)."""
    sources = list(sources)
    merged = Contents()
    for source in sources:
        contents = read_jsonl(source) if _is_jsonl(source) else read_database(source)
        for key, value in contents.meta.items():
            merged.meta.setdefault(key, value)
        for task, entry in contents.tasks.items():
            merged.tasks.setdefault(task, entry)
        merged.records += contents.records
    merged.records.sort(key=lambda r: r.timestamp)   # stable: one file's order kept on a tie
    out = os.fspath(out)
    if os.path.exists(out) and not any(_same_file(out, source) for source in sources):
        raise RecordsError(f"records file '{out}' exists: a merge writes a new file (name it among the "
                           f"sources too to merge into it)")
    if os.path.exists(f"{out}-wal") and os.path.getsize(f"{out}-wal"):
        raise RecordsError(f"records file '{out}' is open in a tuner (it has a write-ahead log); "
                           f"merge into another file")
    with tempfile.TemporaryDirectory() as folder:
        built = os.path.join(folder, "merged.sqlite")
        with Records(built) as db:
            added = add_contents(db, merged)
        with open(built, "rb") as src, atomic_write(out) as dst:
            shutil.copyfileobj(src, dst)
    return added


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_jsonl(path: str | os.PathLike) -> bool:
    """A JSON-lines export (its first byte is '{'), not an SQLite file."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"{"
    except OSError as e:
        raise RecordsError(f"cannot read records file '{os.fspath(path)}': {e.strerror}") from None
