"""Records that travel: JSON-lines export and import, merge, show; bad and newer files refused."""
import json
import sqlite3

import pytest

from nestor.autotune.records import Record, Records, RecordsError, RecordsWarning
from nestor.autotune.records_io import JSONL_VERSION, export_jsonl, import_jsonl, merge_databases, read_jsonl
from nestor.cli import main

MATMUL = """kernel matmul(A: f32[16, 32], B: f32[32, 16]) -> (Out: f32[16, 16]) {
  for i0 in 0..16 {
    for i1 in 0..16 {
      Out[i0, i1] = 0.0
      for r0 in 0..32 reduce { Out[i0, i1] += A[i0, r0] * B[r0, i1] }
    }
  }
}
"""
RELU = """kernel relu(X: f32[64]) -> (Y: f32[64]) {
  for i0 in 0..64 { Y[i0] = max(X[i0], 0.0) }
}
"""
FLOPS = {"mm": 2 * 16 * 16 * 32, "relu": 64}


def schedule(factor: int) -> str:
    return json.dumps([{"pass": "split", "params": {"loop": "i0", "factor": factor}}])


def record(task, median, when, device="local", target="llvm", factor=None, error=None) -> Record:
    return Record(0, task, target, schedule(factor or int(when) % 7 + 2), median,
                  () if median is None else (median, median * 1.1), error, float(when), "0.1.0", device)


def write_records(path, records, meta=None) -> list[Record]:
    """A records database holding exactly these records (as measured elsewhere: times kept)."""
    with Records(path) as db:
        db.add_task("mm", MATMUL, FLOPS["mm"])
        db.add_task("relu", RELU, FLOPS["relu"])
        for key, value in (meta or {}).items():
            db.set_meta(key, value)
        with db.transaction():
            return [db.add_record(r) for r in records]


def same(records) -> list[tuple]:
    return [r.__dict__ | {"id": None} for r in records]


A = [record("mm", 3e-3, 100), record("mm", 2e-3, 101), record("relu", 1e-5, 102),
     record("mm", None, 103, error="wrong result"), record("relu", 5e-6, 104)]
B = [record("mm", 1e-3, 150, device="board-1"), A[1], record("mm", 4e-3, 99, device="board-2", target="cuda")]


def test_export_import_round_trip_keeps_every_field(tmp_path):
    stored = write_records(tmp_path / "a.sqlite", A, {"roofline:llvm": '{"flops": 1e11}'})
    assert export_jsonl(tmp_path / "a.sqlite", tmp_path / "a.jsonl") == 5
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["format"], header["version"], sorted(header)) == \
        ("nestor-records-jsonl", JSONL_VERSION, ["format", "nestor", "version"])
    assert [json.loads(x)["type"] for x in lines[1:]] == ["meta", "task", "task"] + ["record"] * 5
    added = import_jsonl(tmp_path / "a.jsonl", tmp_path / "b.sqlite")
    assert (added.records, added.duplicates, added.tasks) == (5, 0, 2)
    with Records(tmp_path / "b.sqlite", create=False) as db:
        assert same(db.records()) == same(stored)
        assert db.task_kernel("mm") == MATMUL and db.task_flops("relu") == FLOPS["relu"]
        assert db.meta("roofline:llvm") == '{"flops": 1e11}'
        assert db.best("mm", "llvm").median == 2e-3


def test_import_twice_adds_nothing_and_keeps_existing_meta(tmp_path):
    write_records(tmp_path / "a.sqlite", A, {"roofline:llvm": "theirs"})
    export_jsonl(tmp_path / "a.sqlite", tmp_path / "a.jsonl")
    write_records(tmp_path / "b.sqlite", A[:2], {"roofline:llvm": "ours"})
    added = import_jsonl(tmp_path / "a.jsonl", tmp_path / "b.sqlite")
    assert (added.records, added.duplicates, added.tasks) == (3, 2, 0)
    again = import_jsonl(tmp_path / "a.jsonl", tmp_path / "b.sqlite")
    assert (again.records, again.duplicates) == (0, 5)
    with Records(tmp_path / "b.sqlite") as db:
        assert db.count() == 5 and db.meta("roofline:llvm") == "ours"


def test_merge_keeps_each_record_once_with_its_target_and_device(tmp_path):
    write_records(tmp_path / "a.sqlite", A)
    write_records(tmp_path / "b.sqlite", B)
    export_jsonl(tmp_path / "b.sqlite", tmp_path / "b.jsonl")
    added = merge_databases([tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "b.jsonl"],
                            tmp_path / "c.sqlite")
    assert (added.records, added.duplicates) == (7, 4)   # B[1] is A[1]; b.jsonl repeats b.sqlite
    with Records(tmp_path / "c.sqlite", create=False) as db:
        merged = db.records()
        assert [r.timestamp for r in merged] == [99, 100, 101, 102, 103, 104, 150]   # in the order measured
        assert same(merged) == same(sorted(A + [B[0], B[2]], key=lambda r: r.timestamp))
        assert db.best("mm", "llvm").device == "board-1" and db.best("mm", "cuda").device == "board-2"
        assert sorted(db.tasks()) == ["mm", "relu"]


def test_merge_refuses_a_bad_source_and_leaves_the_output_as_it_was(tmp_path):
    write_records(tmp_path / "a.sqlite", A)
    (tmp_path / "c.sqlite").write_bytes(b"previous")
    (tmp_path / "bad.jsonl").write_text('{"format": "nestor-records-jsonl", "version": 99}\n')
    with pytest.raises(RecordsError, match="bad.jsonl' has format version 99 .*reads version 1 or older"):
        merge_databases([tmp_path / "a.sqlite", tmp_path / "bad.jsonl"], tmp_path / "c.sqlite")
    assert (tmp_path / "c.sqlite").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqlite", "bad.jsonl", "c.sqlite"]


def test_merge_and_export_never_replace_a_records_file_by_mistake(tmp_path):
    write_records(tmp_path / "a.sqlite", A)
    write_records(tmp_path / "b.sqlite", B)
    kept = (tmp_path / "b.sqlite").read_bytes()
    with pytest.raises(RecordsError, match=f"records file '{tmp_path / 'b.sqlite'}' exists: a merge writes a new"):
        merge_databases([tmp_path / "a.sqlite"], tmp_path / "b.sqlite")
    assert (tmp_path / "b.sqlite").read_bytes() == kept
    with pytest.raises(RecordsError, match="is the database exported"):
        export_jsonl(tmp_path / "b.sqlite", tmp_path / "b.sqlite")
    assert (tmp_path / "b.sqlite").read_bytes() == kept
    added = merge_databases([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], tmp_path / "b.sqlite")   # into it
    assert (added.records, added.duplicates) == (7, 1)
    with Records(tmp_path / "b.sqlite", create=False) as db:
        assert db.count() == 7


@pytest.mark.parametrize("first, says", [
    ('{"format": "nestor-records-jsonl", "version": 2, "nestor": "9.0"}', "format version 2 .*Nestor 9.0.*upgrade"),
    ('{"format": "nestor-records-jsonl"}', "no valid format version"),
    ('{"format": "something-else", "version": 1}', "is not a Nestor records export"),
    ("task,median", "is not a Nestor records export"),
    ("", "is not a Nestor records export"),
], ids=["newer", "no-version", "foreign", "csv", "empty"])
def test_a_file_that_cannot_be_read_is_a_clear_error(tmp_path, first, says):
    path = tmp_path / "r.jsonl"
    path.write_text(first + "\n")
    with pytest.raises(RecordsError, match=f"records file '{path}' .*{says}"):
        read_jsonl(path)


def test_malformed_lines_are_skipped_with_a_warning_naming_file_and_line(tmp_path):
    write_records(tmp_path / "a.sqlite", A[:2])
    export_jsonl(tmp_path / "a.sqlite", tmp_path / "a.jsonl")
    good = (tmp_path / "a.jsonl").read_text().splitlines()   # header, 2 tasks, 2 records
    entry = json.loads(good[3])
    bad = ["{not json", "[1, 2]", json.dumps({"type": "sound"}), json.dumps({**entry, "median": "fast"}),
           json.dumps({**entry, "schedule": "[[["}), json.dumps({k: v for k, v in entry.items() if k != "device"}),
           json.dumps({**entry, "repeats": [1, None]})]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(good[:4] + bad + good[4:]) + "\n")
    with pytest.warns(RecordsWarning) as caught:
        contents = read_jsonl(path)
    messages = [str(w.message) for w in caught]
    assert [m.split(",")[1].split(":")[0].strip() for m in messages] == [f"line {n}" for n in range(5, 12)]
    assert all(f"records file '{path}'" in m and m.endswith("skipped") for m in messages)
    assert "unknown type 'sound'" in messages[2] and "'median'" in messages[3] and "'device'" in messages[5]
    assert same(contents.records) == same(A[:2])


def test_show_lists_tasks_trials_errors_and_best_times_per_target(tmp_path, capsys):
    write_records(tmp_path / "a.sqlite", A + [B[0], B[2]])
    assert main(["records", "show", str(tmp_path / "a.sqlite")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path / 'a.sqlite'}: 2 tasks, 7 records, 2 targets"
    llvm = out.index("target llvm")
    assert out[llvm + 1] == "devices board-1, local"
    mm, relu = out[llvm + 3].split(), out[llvm + 4].split()
    assert mm == ["mm", "matmul", "4", "1", "1.0000", f"{FLOPS['mm'] / 1e-3 / 1e9:.2f}"]
    assert relu == ["relu", "relu", "2", "0", "0.0050", f"{FLOPS['relu'] / 5e-6 / 1e9:.2f}"]
    cuda = out.index("target cuda")
    assert out[cuda + 1] == "devices board-2" and out[cuda + 3].split()[2:5] == ["1", "0", "4.0000"]


def test_show_keeps_a_device_key_that_holds_a_comma_whole(tmp_path, capsys):
    rack = "rack 1,slot 2@10.0.0.5:9090"   # a device key is any string the user chose
    write_records(tmp_path / "a.sqlite", [A[0], record("mm", 1e-3, 150, device=rack)])
    with Records(tmp_path / "a.sqlite", create=False) as db:
        assert db.tallies() == [("llvm", "mm", 2, 0, ("local", rack))]
    assert main(["records", "show", str(tmp_path / "a.sqlite")]) == 0
    assert f"devices local, {rack}" in capsys.readouterr().out.splitlines()


def test_readme_records_commands(tmp_path, capsys):
    """The README's records lines, end to end through the CLI."""
    write_records(tmp_path / "db.sqlite", A)
    write_records(tmp_path / "other.sqlite", B)
    db, jsonl, into, merged = (str(tmp_path / n) for n in ("db.sqlite", "records.jsonl", "new.sqlite", "c.sqlite"))
    assert main(["records", "export", db, "-o", jsonl]) == 0
    assert main(["records", "import", jsonl, "--into", into]) == 0
    assert main(["records", "merge", db, str(tmp_path / "other.sqlite"), "-o", merged]) == 0
    assert main(["records", "show", merged]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"5 records of {db} written to {jsonl}",
                       f"5 records (2 new tasks) imported into {into}; 0 already there",
                       f"7 records of 2 files merged into {merged}; 1 duplicates left out"]
    assert out[3].endswith(": 2 tasks, 7 records, 2 targets")


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "new.jsonl").write_text('{"format": "nestor-records-jsonl", "version": 7}\n')
    assert main(["records", "import", str(tmp_path / "new.jsonl"), "--into", str(tmp_path / "db.sqlite")]) == 1
    assert main(["records", "show", str(tmp_path / "missing.sqlite")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "format version 7" in err[0] and "missing.sqlite' does not exist" in err[1]
    assert not (tmp_path / "db.sqlite").exists() and not (tmp_path / "missing.sqlite").exists()


def test_an_old_schema_file_exports_with_local_devices(tmp_path):
    path = tmp_path / "old.sqlite"
    write_records(path, A[:1])
    with sqlite3.connect(path) as raw:   # back to schema 1: no device column
        raw.execute("ALTER TABLE records DROP COLUMN device")
        raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    raw.close()
    export_jsonl(path, tmp_path / "old.jsonl")
    assert read_jsonl(tmp_path / "old.jsonl").records[0].device == "local"
