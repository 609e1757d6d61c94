"""The tuning records database: every measurement ever made, in one SQLite file.

SQLite in WAL mode is the embedded default because it gives what a tuner needs for free: each record
is committed in its own transaction, so a tuner killed with kill -9 loses at most the candidate in
flight and leaves a readable file; several tuners (processes) can append to one file at once; and
readers never block the writer. Resume is a query: `measured()` names what a new run may skip and
`best()` is what `nestor compile` uses. Each record keeps the key of the device that timed it; the
meta table also holds facts measured beside the records (the tuning machine's roofline). Records
travel between files through autotune/records_io.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version as _version

from ..ir.errors import NestorError

FORMAT = "nestor-records"   # meta['format']: tells our file from another app's SQLite database
SCHEMA_VERSION = 2          # bump on any change to the tables below, with a step in _MIGRATIONS
BUSY_TIMEOUT_MS = 60_000    # other tuners hold the write lock only for one INSERT; wait for them

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks (hash TEXT PRIMARY KEY, kernel TEXT NOT NULL, flops REAL NOT NULL)",
    """CREATE TABLE IF NOT EXISTS records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task TEXT NOT NULL, target TEXT NOT NULL, schedule TEXT NOT NULL,
        median REAL, repeats TEXT NOT NULL, error TEXT,  -- repeats: a JSON list of seconds
        timestamp REAL NOT NULL, version TEXT NOT NULL,
        device TEXT NOT NULL DEFAULT 'local')  -- the device key that measured it ('local': this host)""",
    "CREATE INDEX IF NOT EXISTS records_task_target ON records (task, target)",
)
_COLUMNS = "id, task, target, schedule, median, repeats, error, timestamp, version, device"
LOCAL_DEVICE = "local"

# schema version n -> the statements that make a version-n file version n + 1 (old files keep working)
_MIGRATIONS = {
    1: ("ALTER TABLE records ADD COLUMN device TEXT NOT NULL DEFAULT 'local'",),
}
# schema version n -> how a reader, which writes nothing, sees a version-n file as the current
# version: a temporary view, which shadows the file's table of the same name
_READ_AS_CURRENT = {
    1: (f"CREATE TEMP VIEW records AS SELECT {_COLUMNS.replace('device', repr(LOCAL_DEVICE))} AS device "
        f"FROM main.records",),
}


def nestor_version() -> str:
    try:
        return _version("nestor")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0"


class RecordsError(NestorError):
    """A records file that cannot be opened, is not ours, has another schema version, or is corrupt."""


class RecordsWarning(UserWarning):
    """A row that cannot be read (its schedule or repeats are not JSON): skipped, not fatal."""


@dataclass(frozen=True)
class Record:
    id: int
    task: str                   # structural hash of the kernel
    target: str
    schedule: str               # Schedule.to_json() text
    median: float | None        # seconds
    repeats: tuple[float, ...]  # seconds, every repeat
    error: str | None
    timestamp: float            # time.time() when stored
    version: str                # the Nestor that measured it
    device: str = LOCAL_DEVICE  # the device key it was measured on

    @property
    def ok(self) -> bool:
        return self.error is None and self.median is not None

    @property
    def fastest(self) -> float | None:
        """The fastest repeat: what the cost model learns from. As MeasureResult.fastest."""
        return min(self.repeats) if self.repeats and self.median is not None else self.median


def _record(row: tuple) -> Record:
    """A row as a Record, its values checked: SQLite keeps whatever a column was given."""
    rid, task, target, schedule, median, repeats, error, timestamp, version, device = row
    for name, value in (("task", task), ("target", target), ("schedule", schedule), ("repeats", repeats),
                        ("version", version), ("device", device)):
        if not isinstance(value, str):
            raise TypeError(f"its {name} is a {type(value).__name__}")
    for name, value in (("median", median), ("timestamp", timestamp)):
        if not (isinstance(value, float) or value is None and name == "median"):
            raise TypeError(f"its {name} is a {type(value).__name__}")
    if error is not None and not isinstance(error, str):
        raise TypeError(f"its error is a {type(error).__name__}")
    json.loads(schedule)   # a schedule that is not JSON cannot be replayed
    times = json.loads(repeats)
    if not (isinstance(times, list) and all(type(t) in (int, float) for t in times)):
        raise ValueError(f"its repeats {repeats[:40]!r} are not a list of seconds")
    return Record(rid, task, target, schedule, median, tuple(float(t) for t in times), error, timestamp,
                  version, device)


class Records:
    """An open records file. Creates it when missing, unless `create` is False (for readers: a
    mistyped name is an error, not a new empty database). A reader writes nothing: it reads a
    file of an older schema version through a view, where a writer migrates it (once SQLite
    finds it sound). One object per process (or thread)."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = os.fspath(path)
        self._writer = create  # False: a reader, which creates nothing
        if not create and not os.path.exists(self.path):
            raise RecordsError(f"records file '{self.path}' does not exist")
        self._version = nestor_version()
        self._skipped: set[int] = set()   # ids of unreadable rows, each warned about once
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as e:
            raise RecordsError(f"cannot open records file '{self.path}': {e}") from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        # Everything is checked before anything is written, so another app's database is left untouched.
        with self._guard(self._not_ours):
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables:
                self._check(tables, older_ok=True)
                if self._writer and self._schema_version() < SCHEMA_VERSION:  # before any write (WAL mode too)
                    self._check_intact(f"left at schema version {self._schema_version()}")
            elif not self._writer:  # a reader leaves a file that is not ours as it found it
                raise RecordsError(self._not_ours("it holds no tables"))
            if self._writer:  # a reader takes the journal mode the file has
                self._set_wal()
            self._db.execute("PRAGMA synchronous=NORMAL")  # in WAL a commit survives kill -9; no fsync each
            if not tables:
                self._create()
            elif self._schema_version() < SCHEMA_VERSION:
                # A reader leaves an older file as it is: it may be read-only, or an older
                # Nestor's tuner may still be writing it.
                self._migrate() if self._writer else self._read_as_current()

    def _set_wal(self) -> None:
        # Switching a new file to WAL needs an exclusive lock. When two tuners try at once, SQLite
        # answers one of them SQLITE_BUSY at once, without waiting (it would be a deadlock): retry.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _create(self) -> None:
        # Two tuners creating one new file: one creates, the other waits for the lock and finds it
        # made (hence IF NOT EXISTS / OR IGNORE). Not executescript: it would commit mid-transaction.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('schema_version', ?)",
                             (FORMAT, str(SCHEMA_VERSION)))
            self._check({"meta"})
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        # Under the write lock, the version read again: another process may have migrated it meanwhile.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for old in range(self._schema_version(), SCHEMA_VERSION):
                for statement in _MIGRATIONS[old]:
                    self._db.execute(statement)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            self._db.execute("COMMIT")
        except BaseException:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite rolled back already (a disk error): the first error tells why
                pass
            raise

    def _check_intact(self, what_then: str) -> None:
        """RecordsError unless SQLite finds the file sound: a write into a damaged file (a
        half-copied one, a disk error) could cost the records it still holds."""
        damage = [str(r[0]).replace("\n", " ") for r in self._db.execute("PRAGMA quick_check(3)")]
        if damage != ["ok"]:
            raise RecordsError(self._corrupt(f"{'; '.join(damage)[:300]} ({what_then}, unchanged)"))

    def _read_as_current(self) -> None:
        for old in range(self._schema_version(), SCHEMA_VERSION):
            for statement in _READ_AS_CURRENT[old]:
                self._db.execute(statement)

    def _schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isdigit():  # _check read it, through another path: corrupt
            raise RecordsError(self._corrupt(f"its schema version reads {row and row[0]!r}"))
        return int(row[0])

    def _check(self, tables: set[str], older_ok: bool = False) -> None:
        if "meta" not in tables:
            raise RecordsError(self._not_ours("it has tables but no 'meta' table"))
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError as e:  # another app's table that happens to be called meta
            raise RecordsError(self._not_ours(f"its 'meta' table is not Nestor's ({e})")) from None
        if meta.get("format") != FORMAT:
            raise RecordsError(self._not_ours(f"its meta table has no format '{FORMAT}'"))
        version = meta.get("schema_version")
        if not (version == str(SCHEMA_VERSION) or older_ok and version in {str(v) for v in _MIGRATIONS}):
            raise RecordsError(f"records file '{self.path}' has schema version {meta.get('schema_version')}, "
                               f"this Nestor reads version {SCHEMA_VERSION}; use another records file")

    def _not_ours(self, why) -> str:
        return f"records file '{self.path}' is not a Nestor records database: {why}"

    def _corrupt(self, why) -> str:
        return f"records file '{self.path}' is corrupt: {why}"

    @contextmanager
    def _guard(self, message=None):
        """sqlite3 errors -> RecordsError naming the file. Busy/IO errors keep their own wording."""
        try:
            yield
        except sqlite3.OperationalError as e:
            raise RecordsError(f"records file '{self.path}': {e}") from None
        except sqlite3.DatabaseError as e:  # SQLITE_NOTADB; SQLITE_CORRUPT: ours or not, it is damaged
            corrupt = e.sqlite_errorcode == sqlite3.SQLITE_CORRUPT
            raise RecordsError((self._corrupt if corrupt else message or self._corrupt)(e)) from None
        except UnicodeDecodeError as e:  # a damaged byte in a name or a text column
            raise RecordsError((message or self._corrupt)(f"text that is not UTF-8 ({e.reason})")) from None

    def _query(self, sql: str, params=()) -> list[tuple]:
        with self._guard():
            return self._db.execute(sql, params).fetchall()

    # tasks

    def add_task(self, task: str, kernel_text: str, flops: float) -> None:
        """Store a task's kernel (IR text) and flop count once; later calls for the same hash are no-ops."""
        self._query("INSERT OR IGNORE INTO tasks VALUES (?, ?, ?)", (task, kernel_text, float(flops)))

    def task_kernel(self, task: str) -> str | None:
        rows = self._query("SELECT kernel FROM tasks WHERE hash = ?", (task,))
        return rows[0][0] if rows else None

    def tasks(self) -> list[str]:
        return [r[0] for r in self._query("SELECT hash FROM tasks ORDER BY rowid")]

    def task_flops(self, task: str) -> float | None:
        rows = self._query("SELECT flops FROM tasks WHERE hash = ?", (task,))
        return rows[0][0] if rows else None

    # meta: facts stored with the records (as the tuning machine's measured roofline)

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def meta_items(self) -> dict[str, str]:
        """Every meta entry but the file's own format and schema version."""
        return dict(self._query("SELECT key, value FROM meta WHERE key NOT IN ('format', 'schema_version')"))

    def set_meta(self, key: str, value: str) -> None:
        if key in ("format", "schema_version"):
            raise ValueError(f"meta key '{key}' belongs to the records file itself")
        self._query("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # records

    def add(self, task: str, target: str, schedule_json: str, median: float | None,
            repeats, error: str | None = None, device: str = LOCAL_DEVICE) -> Record:
        """Store one measurement, committed before returning (autocommit: one transaction per record)."""
        row = (task, str(target), schedule_json, None if median is None else float(median),
               tuple(float(r) for r in repeats), error, time.time(), self._version, device)
        return Record(self._insert(row), *row)

    def add_record(self, record: Record) -> Record:
        """Store a record measured elsewhere (imported, merged) as it is: its time, version and device kept."""
        return Record(self._insert(dataclasses.astuple(record)[1:]), *dataclasses.astuple(record)[1:])

    def _insert(self, row: tuple) -> int:
        with self._guard():
            cur = self._db.execute(f"INSERT INTO records ({_COLUMNS[4:]}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   row[:4] + (json.dumps(row[4]),) + row[5:])
        return cur.lastrowid

    @contextmanager
    def transaction(self):
        """Many writes in one commit: all of them or none (an import, a merge)."""
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        with self._guard():
            self._db.execute("COMMIT")

    def _where(self, task, target, ok_only=False) -> tuple[str, tuple]:
        terms, params = [], []
        if task is not None:
            terms.append("task = ?"), params.append(task)
        if target is not None:
            terms.append("target = ?"), params.append(str(target))
        if ok_only:
            terms.append("error IS NULL AND median IS NOT NULL")
        return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(params)

    def _records(self, sql: str, params) -> tuple[list[Record], int]:
        """The rows read as records, and how many were skipped as unreadable."""
        found = []
        rows = self._query(sql, params)
        for r in rows:
            try:
                found.append(_record(r))
            except (ValueError, TypeError) as e:   # (a hand edit, a disk error, another writer's bug)
                if r[0] not in self._skipped:
                    self._skipped.add(r[0])
                    warnings.warn(f"records file '{self.path}': row {r[0]} (task {r[1]}) is unreadable "
                                  f"({e}); skipped", RecordsWarning, stacklevel=3)
        return found, len(rows) - len(found)

    def records(self, task: str | None = None, target: str | None = None,
                ok_only: bool = False) -> list[Record]:
        """The stored records, filtered, in insertion order."""
        where, params = self._where(task, target, ok_only)
        return self._records(f"SELECT {_COLUMNS} FROM records{where} ORDER BY id", params)[0]

    def best(self, task: str, target: str) -> Record | None:
        """The fastest correct schedule of a task on a target (the earliest on a tie), each schedule
        judged by its latest correct measurement: one measured again (the tuner's final re-ranking,
        in one batch beside its rivals) by that time, not by a luckier earlier one."""
        found = self.latest(task, target, limit=1)
        return found[0] if found else None

    def latest(self, task: str, target: str, limit: int | None = None) -> list[Record]:
        """Each correct schedule's latest measurement, fastest first (at most `limit`)."""
        where, params = self._where(task, target, ok_only=True)
        latest = f"SELECT MAX(id) FROM records{where} GROUP BY schedule"
        sql = f"SELECT {_COLUMNS} FROM records WHERE id IN ({latest}) ORDER BY median, id"
        found, skipped = self._records(sql + (f" LIMIT {int(limit)}" if limit is not None else ""), params)
        if skipped:   # unreadable rows took places in the top: read past them
            found = self._records(sql, params)[0][:limit]
        return found

    def measured(self, task: str, target: str) -> set[str]:
        """Schedule JSONs already measured (correct or not): a resumed search skips them."""
        where, params = self._where(task, target)
        return {r[0] for r in self._query(f"SELECT DISTINCT schedule FROM records{where}", params)}

    def tallies(self) -> list[tuple[str, str, int, int, tuple[str, ...]]]:
        """(target, task, records, errors, device keys) of each task measured on each target, by first record."""
        # the device keys as a JSON array: a key may hold any character, GROUP_CONCAT's comma too
        rows = self._query("SELECT target, task, COUNT(*), SUM(error IS NOT NULL OR median IS NULL), "
                           "json_group_array(DISTINCT device) FROM records GROUP BY target, task ORDER BY MIN(id)")
        return [(*r[:4], tuple(sorted(map(str, json.loads(r[4]))))) for r in rows]

    def count(self, task: str | None = None, target: str | None = None) -> int:
        where, params = self._where(task, target)
        return self._query(f"SELECT COUNT(*) FROM records{where}", params)[0][0]

    def close(self) -> None:
        """Move the write-ahead log into the database file first, so that the .sqlite alone is
        complete (copied, mailed, committed) even while other tuners keep it open."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:   # busy past the timeout, or read-only: the WAL keeps the records safe
            pass
        self._db.close()

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
