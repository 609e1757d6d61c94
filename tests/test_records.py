"""The tuning records database: round trip, resume after kill -9, concurrent tuners, bad files."""
import multiprocessing
import os
import signal
import sqlite3

import pytest

from nestor.autotune.records import Record, Records, RecordsError, nestor_version
from nestor.cli import main

fork = multiprocessing.get_context("fork")  # the children need no fresh import of nestor (and TVM)


def schedule(i: int) -> str:
    return f'{{"steps": [["split", {{"loop": "i", "factor": {i}}}]]}}'


def tune(path, candidates, report_fd=None, task="t", target="llvm"):
    """A stand-in tuner: measures every candidate not yet in the records, one commit each."""
    with Records(path) as db:
        done = db.measured(task, target)
        for i in candidates:
            if schedule(i) in done:
                continue
            rec = db.add(task, target, schedule(i), 1.0 + i, [1.0 + i, 2.0 + i])
            if report_fd is not None:
                os.write(report_fd, f"{rec.id}\n".encode())


def test_round_trip_and_best(tmp_path):
    path = tmp_path / "r.db"
    with Records(path) as db:
        db.add_task("t", "kernel k() {}", 1e6)
        db.add_task("t", "ignored: the task is stored once", 2.0)
        added = [db.add("t", "llvm", schedule(1), 3e-3, [3e-3, 4e-3, 3e-3]),
                 db.add("t", "llvm", schedule(2), 1e-3, (1e-3, 1e-3)),
                 db.add("t", "llvm", schedule(3), 5e-4, [5e-4], error="wrong result"),  # fast but wrong
                 db.add("t", "llvm", schedule(4), None, [], error="build failed"),
                 db.add("t", "cuda", schedule(5), 1e-5, [1e-5]),
                 db.add("u", "llvm", schedule(6), 1e-6, [1e-6])]
    with Records(path) as db:  # reopened: everything comes back as it was returned by add
        assert db.records() == added
        assert [r.id for r in added] == sorted(r.id for r in added)
        assert db.tasks() == ["t"]
        assert db.task_kernel("t") == "kernel k() {}" and db.task_kernel("u") is None
        assert db.records("t", "llvm") == added[:4]
        assert db.records("t", "llvm", ok_only=True) == added[:2]
        assert [r.ok for r in added] == [True, True, False, False, True, True]
        assert db.best("t", "llvm") == added[1]
        assert db.best("t", "cuda") == added[4] and db.best("v", "llvm") is None
        assert db.measured("t", "llvm") == {schedule(i) for i in (1, 2, 3, 4)}
        assert (db.count(), db.count("t"), db.count("t", "llvm"), db.count(target="cuda")) == (6, 5, 4, 1)
    first = added[0]
    assert first.repeats == (3e-3, 4e-3, 3e-3) and first.version == nestor_version()
    assert first.timestamp <= added[-1].timestamp
    assert isinstance(first, Record) and first.schedule == schedule(1)


def test_best_judges_each_schedule_by_its_latest_correct_measurement(tmp_path):
    with Records(tmp_path / "r.db") as db:
        lucky = db.add("t", "llvm", schedule(1), 1e-3, [1e-3])
        steady = db.add("t", "llvm", schedule(2), 2e-3, [2e-3])
        assert db.best("t", "llvm") == lucky
        again = db.add("t", "llvm", schedule(1), 3e-3, [3e-3])  # measured again beside the others: slower
        assert db.best("t", "llvm") == steady
        db.add("t", "llvm", schedule(2), None, [], error="run failed: timeout")  # its earlier time stands
        assert db.best("t", "llvm") == steady
        assert db.latest("t", "llvm") == [steady, again] and db.latest("t", "llvm", limit=1) == [steady]


def test_resume_after_kill_9(tmp_path):
    path = tmp_path / "r.db"
    read_fd, write_fd = os.pipe()
    child = fork.Process(target=tune, args=(path, range(10 ** 6), write_fd))
    child.start()
    os.close(write_fd)
    reported = b""
    while reported.count(b"\n") < 200:
        reported += os.read(read_fd, 4096)
    os.kill(child.pid, signal.SIGKILL)  # mid-stream: the child is still adding as fast as it can
    child.join()
    while chunk := os.read(read_fd, 4096):
        reported += chunk
    os.close(read_fd)
    assert child.exitcode == -signal.SIGKILL
    committed = [int(line) for line in reported.split()]
    assert os.path.exists(f"{path}-wal")  # WAL mode; the killed writer never checkpointed

    with Records(path) as db:
        kept = db.records()
        # Every record the child saw committed survives; at most the one in flight is lost or kept.
        assert [r.id for r in kept][:len(committed)] == committed
        assert len(committed) <= db.count() == len(kept) <= len(committed) + 1
        assert [r.schedule for r in kept] == [schedule(i) for i in range(len(kept))]
        assert db.measured("t", "llvm") == {r.schedule for r in kept}
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    total = len(kept) + 50
    tune(path, range(total))  # the resumed run measures only what is missing
    with Records(path) as db:
        again = db.records()
        assert again[:len(kept)] == kept
        assert [r.schedule for r in again] == [schedule(i) for i in range(total)]


def test_concurrent_writers(tmp_path):
    path = tmp_path / "r.db"  # new: both processes race to create it too
    children = [fork.Process(target=tune, args=(path, range(150)), kwargs={"task": task})
                for task in ("a", "b")]
    for c in children:
        c.start()
    for c in children:
        c.join(timeout=60)
    assert [c.exitcode for c in children] == [0, 0]
    with Records(path) as db:
        assert db.count() == 300
        for task in ("a", "b"):
            assert [r.schedule for r in db.records(task)] == [schedule(i) for i in range(150)]


def _valid(path):
    with Records(path) as db:
        for i in range(300):
            db.add("t", "llvm", schedule(i) + "x" * 100, 1.0, [1.0])


def _truncated(path, size=None):
    _valid(path)
    data = path.read_bytes()
    path.write_bytes(data[:size or len(data) // 2])


def _foreign(path, sql):
    with sqlite3.connect(path) as db:
        db.execute(sql)
    db.close()


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_bytes(os.urandom(4096)), "not a Nestor records database"),
    (lambda p: p.write_text("schedule,median\nsplit,1.0\n" * 50), "not a Nestor records database"),
    (_truncated, "is corrupt: database disk image is malformed"),   # ours, half-written
    (lambda p: _truncated(p, 60), "is corrupt: database disk image is malformed"),
    (lambda p: _foreign(p, "CREATE TABLE songs (title TEXT)"), "no 'meta' table"),
    (lambda p: _foreign(p, "CREATE TABLE meta (a, b)"), "not Nestor's"),
    (lambda p: _foreign(p, "CREATE TABLE meta (key, value)"), "no format"),
    (lambda p: (_valid(p), _foreign(p, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")),
     "schema version 99"),
], ids=["random", "text", "truncated", "header-only", "foreign", "foreign-meta", "foreign-kv", "version"])
def test_bad_file_is_a_clear_error(tmp_path, make, says):
    path = tmp_path / "bad.db"
    make(path)
    for suffix in ("-wal", "-shm"):  # what _valid left behind is not part of the bad file
        if os.path.exists(f"{path}{suffix}"):
            os.remove(f"{path}{suffix}")
    before = path.read_bytes()
    with pytest.raises(RecordsError, match=f"records file '{path}'.*{says}"):
        Records(path)
    assert path.read_bytes() == before  # a file that is not ours is never written to


def test_unopenable_path_is_a_clear_error(tmp_path):
    path = tmp_path / "missing-dir" / "r.db"
    with pytest.raises(RecordsError, match=f"cannot open records file '{path}'"):
        Records(path)


def test_an_unreadable_row_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "r.db"
    with Records(path) as db:
        good = db.add("t", "llvm", schedule(1), 2e-3, [2e-3])
        bad = db.add("t", "llvm", schedule(2), 1e-3, [1e-3])   # the fastest, then damaged
        worse = db.add("t", "llvm", schedule(3), 5e-4, [5e-4])
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE records SET schedule = '{\"steps\": [[' WHERE id = ?", (bad.id,))
        raw.execute("UPDATE records SET repeats = 'oops' WHERE id = ?", (worse.id,))
    with Records(path) as db:
        with pytest.warns(UserWarning) as caught:
            assert db.best("t", "llvm") == good   # read past the unreadable ones at the top
            assert db.records() == [good]
        messages = [str(w.message) for w in caught]
        assert len(messages) == 2   # each row warned about once
        assert all(str(path) in m and "skipped" in m for m in messages)
        assert f"row {bad.id} " in messages[0] + messages[1] and f"row {worse.id} " in messages[0] + messages[1]


def test_closing_checkpoints_so_the_file_alone_is_complete(tmp_path):
    path = tmp_path / "r.db"
    other = Records(path)   # another tuner still has it open: SQLite would not checkpoint on its own
    try:
        with Records(path) as db:
            added = db.add("t", "llvm", schedule(1), 1e-3, [1e-3])
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())   # the .sqlite alone, without its -wal
        with Records(copy) as db:
            assert db.records() == [added]
    finally:
        other.close()


def test_reading_a_records_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(RecordsError, match=r"records file '.*typo.sqlite' does not exist"):
        Records(tmp_path / "typo.sqlite", create=False)
    assert not (tmp_path / "typo.sqlite").exists()


def _schema_1(path, rows: int = 1) -> None:
    """A records file as Nestor wrote them before records had a device key: one task, `rows` records."""
    with sqlite3.connect(path) as raw:
        raw.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE tasks (hash TEXT PRIMARY KEY, kernel TEXT NOT NULL, flops REAL NOT NULL);
            CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL, target TEXT NOT NULL,
                schedule TEXT NOT NULL, median REAL, repeats TEXT NOT NULL, error TEXT, timestamp REAL NOT NULL,
                version TEXT NOT NULL);
            INSERT INTO meta VALUES ('format', 'nestor-records'), ('schema_version', '1');
            INSERT INTO tasks VALUES ('t', 'kernel k() {}', 1e6);""")
        raw.executemany("INSERT INTO records (task, target, schedule, median, repeats, error, timestamp, version) "
                        "VALUES ('t', 'llvm', ?, 0.002, '[0.002, 0.003]', NULL, 1700000000.0, '0.0.1')",
                        [("[]" if n == 0 else schedule(n),) for n in range(rows)])
    raw.close()


def test_a_schema_1_file_is_migrated_and_keeps_its_records(tmp_path):
    """Files written before records had a device key open as they were, their rows measured 'local'."""
    path = tmp_path / "old.db"
    _schema_1(path)
    before = path.read_bytes()
    with Records(path, create=False) as db:   # a reader: reads it as it is, writes nothing
        old, = db.records()
        assert (old.median, old.repeats, old.timestamp, old.version, old.device) == \
            (0.002, (0.002, 0.003), 1700000000.0, "0.0.1", "local")
        assert db.tallies() == [("llvm", "t", 1, 0, ("local",))] and db.best("t", "llvm") == old
    assert path.read_bytes() == before
    with Records(path) as db:   # a writer migrates it
        assert db.records() == [old]
        new = db.add("t", "llvm", schedule(1), 1e-3, [1e-3], device="rpi4-0")
    with Records(path) as db:
        assert db.records() == [old, new] and db.best("t", "llvm").device == "rpi4-0"
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    raw.close()


@pytest.mark.parametrize("damage", ["page", "half"])
def test_a_damaged_schema_1_file_is_one_line_and_left_as_it_is(tmp_path, capsys, damage):
    """Migrating writes into the file: a damaged one (a page overwritten, or half of it copied) is
    refused in one line naming it, before any write, so what it still holds stays readable."""
    path = tmp_path / "old.db"
    _schema_1(path, rows=2000)   # about 40 pages
    data = bytearray(path.read_bytes())
    if damage == "page":   # a page of the records' tree: SQLite opens the file, its check does not pass
        data[20 * 4096 + 100:20 * 4096 + 300] = bytes(range(200))
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    with pytest.raises(RecordsError, match=f"records file '{path}' is corrupt: "):
        Records(path)
    assert path.read_bytes() == bytes(data)
    assert main(["records", "show", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nestor: error: records file '{path}' is corrupt: ") and "\n" not in err
    assert path.read_bytes() == bytes(data)


def test_meta_entries_and_records_added_as_they_are(tmp_path):
    with Records(tmp_path / "a.db") as db:
        assert db.meta("roofline") is None and db.meta_items() == {}
        db.set_meta("roofline", '{"flops": 1}')
        db.set_meta("roofline", '{"flops": 2}')   # replaced
        assert db.meta("roofline") == '{"flops": 2}' and db.meta_items() == {"roofline": '{"flops": 2}'}
        with pytest.raises(ValueError):
            db.set_meta("schema_version", "3")
        theirs = Record(7, "t", "llvm", schedule(1), 1e-3, (1e-3,), None, 1600000000.0, "0.0.9", "board-1")
        with db.transaction():
            kept = db.add_record(theirs)
        with pytest.raises(KeyError), db.transaction():
            db.add_record(theirs)
            raise KeyError   # rolled back: the second copy is not stored
    with Records(tmp_path / "a.db") as db:
        assert db.records() == [kept] and kept.timestamp == theirs.timestamp and kept.device == "board-1"
