"""`nestor report`: one self-contained HTML page; every section there, every image a PNG, the
numbers those of the records (and of the roofline stored with them)."""
import base64
import json
import sys
import zlib
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nestor.autotune.records import Record, Records
from nestor.autotune.roofline import Roofline, ensure_roofline, meta_key, stored_roofline
from nestor.cli import main
from nestor.ir import parse_kernel, print_kernel
from nestor.passes import parse_pipeline

pytest.importorskip("matplotlib", reason="nestor report needs the extra nestor[report]")

TARGET = '{"kind":"llvm","mcpu":"znver4","num-cores":2}'
ROOF = Roofline(flops=1e11, bandwidth=2e10, measured=1.7e9)   # stored: the report must use it, not measure
SECTIONS = {"summary": "Summary", "model-estimate": "Model estimate", "curves": "Tuning curves",
            "roofline": "Roofline", "time-per-task": "Time per task in the model", "schedules": "Best schedules"}


def tiny_model(path) -> str:
    """Two equal matmul+relu kernels (one task, 2 calls), a softmax, and a transpose."""
    weights = [numpy_helper.from_array(np.full((32, 32), v, np.float32), f"W{v}") for v in (1, 2)]
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "W2"], ["c"]), helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Softmax", ["d"], ["e"]), helper.make_node("Transpose", ["e"], ["Y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [16, 32])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [32, 16])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def model_tasks(model):
    from nestor.api import import_onnx
    from nestor.autotune.task_scheduler import extract_tasks
    return {t.kernel.name: t for t in extract_tasks(import_onnx(model, target=TARGET))}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Records of the model's matmul_relu and softmax tasks (not its transpose), and of one task
    the model does not call; the medians chosen so the best of each is known."""
    folder = tmp_path_factory.mktemp("report")
    model = tiny_model(folder / "m.onnx")
    tasks = model_tasks(model)
    mm, sm = tasks["matmul_relu"], tasks["softmax"]
    path = folder / "db.sqlite"
    split = parse_pipeline("split(i1, 8); parallel(i0)").to_json()
    with Records(path) as db:
        for t in (mm, sm):
            db.add_task(t.hash, print_kernel(t.kernel), t.flops)
        db.add_task("other", "kernel relu(X: f32[64]) -> (Y: f32[64]) {\n  for i0 in 0..64 { Y[i0] = max(X[i0], 0.0) }\n}\n", 64)
        db.set_meta(meta_key(TARGET), json.dumps(ROOF.__dict__))
        rows = [(mm.hash, "[]", 4e-5, 100), (sm.hash, "[]", 3e-6, 101), (mm.hash, split, 1e-5, 102),
                (mm.hash, split, None, 103), (sm.hash, "[]", 2e-6, 104), ("other", "[]", 1e-6, 105),
                (mm.hash, "[]", 2e-5, 106)]
        with db.transaction():
            for task, schedule, median, when in rows:
                db.add_record(Record(0, task, TARGET, schedule, median, (median,) if median else (),
                                     None if median else "wrong result", float(when), "0.1.0", "board-1"))
    return {"db": str(path), "model": model, "mm": mm, "sm": sm, "folder": folder, "split": split}


class Page(HTMLParser):
    """The parts of the page a test reads: sections (id -> h2 text), images, tables, <pre> texts."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.images, self.tables, self.pres, self.links = {}, [], [], [], []
        self._section, self._in, self._text = None, None, ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = attrs["id"]
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self.tables.append((self._section, []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("h2", "td", "th", "pre"):
            self._in, self._text = tag, ""
        for name in ("href", "src"):
            if name in attrs and tag != "img":
                self.links.append(attrs[name])

    def handle_data(self, data):
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if tag != self._in:
            return
        if tag == "h2":
            self.sections[self._section] = self._text
        elif tag in ("td", "th"):
            self.tables[-1][1][-1].append(self._text)
        else:
            self.pres.append((self._section, self._text))
        self._in = None

    def table(self, section):
        return next(rows for s, rows in self.tables if s == section)


def check_png(data: bytes) -> tuple[int, int]:
    """A whole PNG: signature, a valid IHDR, chunks with right CRCs up to IEND; its size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big") == zlib.crc32(kind + body)
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds and pos == len(data)
    from PIL import Image
    import io
    with Image.open(io.BytesIO(data)) as image:
        image.load()   # every pixel decoded
        return image.size


def make(tuned, *extra, name="report.html"):
    out = tuned["folder"] / name
    assert main(["report", tuned["db"], *extra, "-o", str(out)]) == 0
    return Page(out.read_text())


def test_every_section_present_and_every_image_a_png(tuned):
    page = make(tuned, "--model", tuned["model"])
    assert page.sections == SECTIONS
    assert len(page.images) == 5   # the estimate's curves, 2 tasks' curves, the roofline, the time per task
    for src in page.images:
        prefix, _, data = src.partition(",")
        assert prefix == "data:image/png;base64"
        width, height = check_png(base64.b64decode(data, validate=True))
        assert width > 100 and height > 50
    assert page.links == []   # nothing to fetch


def test_numbers_are_those_of_the_records_and_the_stored_roofline(tuned):
    page = make(tuned, "--model", tuned["model"])
    mm, sm = tuned["mm"], tuned["sm"]
    summary = dict(page.table("summary")[1:])
    assert summary["peak compute"] == "100.0 GFLOP/s (measured on the tuning machine after its tuning)"
    assert summary["memory bandwidth"] == "20.0 GB/s" and summary["devices"] == "board-1"
    assert (summary["tasks"], summary["records"], summary["errors"]) == ("2", "6", "1")   # 'other' is not in the model

    times = {row[0]: row for row in page.table("time-per-task")[1:]}
    assert times["matmul_relu"][1:] == ["2", "0.0100", "0.0200", f"{2e-5 / 2.2e-5:.1%}"]
    assert times["softmax"][1:] == ["1", "0.0020", "0.0020", f"{2e-6 / 2.2e-5:.1%}"]
    untuned = [name for name in model_tasks(tuned["model"]) if name not in ("matmul_relu", "softmax")]
    assert untuned and [times[n][2] for n in untuned] == ["not tuned"] * len(untuned)

    roof = {row[0]: row for row in page.table("roofline")[1:]}
    for task, best in ((mm, 1e-5), (sm, 2e-6)):
        nbytes = sum(b.size * 4 for b in task.kernel.params)
        intensity, achieved = task.flops / nbytes, task.flops / best
        bound = min(ROOF.flops, intensity * ROOF.bandwidth)
        assert roof[task.kernel.name][1:] == [f"{intensity:.2f}", f"{achieved / 1e9:.2f}", f"{bound / 1e9:.2f}",
                                              f"{achieved / bound:.1%}", "memory"]
    text = (tuned["folder"] / "report.html").read_text()
    # at the end of the 6 records of the model's tasks: 2 calls x 0.01 ms + 0.002 ms
    assert "model latency (sum of calls x best time): 0.0220 ms after 6 trials" in text


def test_best_schedules_as_ir_text(tuned):
    page = make(tuned)
    pres = [text for s, text in page.pres if s == "schedules"]
    kernel = parse_kernel(print_kernel(tuned["mm"].kernel))
    split = parse_pipeline("split(i1, 8); parallel(i0)")
    assert str(split) in pres and print_kernel(split.apply(kernel)) in pres
    assert print_kernel(tuned["sm"].kernel) in pres   # its best is the empty schedule
    assert any("kernel relu(" in p for p in pres)      # without --model, every task of the target
    assert page.sections == SECTIONS


def test_without_matplotlib_one_line_says_how_to_install_it(tuned, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # import fails as if not installed
    out = tuned["folder"] / "none.html"
    assert main(["report", tuned["db"], "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0] and "pip install 'nestor[report]'" in err[0]
    assert not out.exists()


def test_a_target_without_records_is_one_line(tuned, capsys):
    assert main(["report", tuned["db"], "--target", "cuda", "-o", str(tuned["folder"] / "x.html")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no records for target" in err[0] and "znver4" in err[0]


def test_records_timed_on_rpc_devices_get_no_roofline_of_this_host(tmp_path, monkeypatch):
    """Without a stored roofline, one is measured here only for records timed here; and a task
    with no correct record is named where the model estimate would be."""
    monkeypatch.setattr("nestor.report.measure_roofline", lambda: pytest.fail("this host probed"))
    relu = "kernel relu(X: f32[64]) -> (Y: f32[64]) {\n  for i0 in 0..64 { Y[i0] = max(X[i0], 0.0) }\n}\n"
    with Records(tmp_path / "db.sqlite") as db:
        for task in ("a", "b"):
            db.add_task(task, relu.replace("relu(", f"relu_{task}("), 64)
        db.add("a", TARGET, "[]", 1e-6, [1e-6], device="board-1@10.0.0.7:9090")
        db.add("b", TARGET, "[]", None, [], error="wrong result", device="board-1@10.0.0.7:9090")
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "db.sqlite"), "-o", str(out)]) == 0
    text = out.read_text()
    assert "No roofline for this target: one is measured for CPU targets timed on the tuning host only." in text
    assert "No estimate: no correct record of relu_b." in text


def test_roofline_probe_measures_once_and_stores(tmp_path):
    with Records(tmp_path / "r.sqlite") as db:
        first = ensure_roofline(db, "llvm")
        assert 1e8 < first.flops < 1e14 and 1e8 < first.bandwidth < 1e13   # plausible for any CPU
        assert ensure_roofline(db, "llvm") == first == stored_roofline(db, "llvm")   # not measured again
        assert stored_roofline(db, "cuda") is None


@pytest.mark.parametrize("text", ['{"flops": "1e11", "bandwidth": 2e10, "measured": 1.0}', "[1, 2, 3]",
                                  '{"flops": 1e11, "bandwidth": 0, "measured": 1.0}', '{"flops": 1e11}', "{",
                                  '{"flops": NaN, "bandwidth": 2e10, "measured": 1.0}'])
def test_a_damaged_stored_roofline_is_measured_again(tmp_path, text):
    with Records(tmp_path / "r.sqlite") as db:
        db.set_meta(meta_key("llvm"), text)
        assert stored_roofline(db, "llvm") is None
