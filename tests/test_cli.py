"""The CLI end to end: compile, run (with inputs and saved outputs), ir."""
import shutil

import numpy as np
import onnx
import pytest

from nestor.cli import main
from nestor.zoo import encoder_block


def test_compile_run_save_outputs(tmp_path, capsys):
    model = encoder_block(seq=8, hidden=32, heads=2, ffn=64)
    path = tmp_path / "enc.onnx"
    onnx.save(model, str(path))
    assert main(["compile", str(path)]) == 0
    art = tmp_path / "enc.nestor"
    assert art.exists()
    x = np.random.default_rng(0).standard_normal((1, 8, 32)).astype(np.float32)
    mask = np.zeros((1, 1, 1, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mask.npy", mask)
    capsys.readouterr()
    assert main(["run", str(art), "--input", f"hidden_states={tmp_path / 'x.npy'}",
                 "--input", f"attention_mask={tmp_path / 'mask.npy'}",
                 "--save-outputs", str(tmp_path / "out.npz"), "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert "output output: shape (1, 8, 32) float32" in out
    assert "median latency" in out
    saved = np.load(tmp_path / "out.npz")["output"]
    from nestor.bench import ort_session
    want = ort_session(model).run(None, {"hidden_states": x, "attention_mask": mask})[0]
    np.testing.assert_allclose(saved, want, rtol=1e-4, atol=1e-4)


def test_ir_prints_parseable_kernels(tmp_path, capsys):
    from nestor.ir import parse_kernel
    model = encoder_block(seq=8, hidden=32, heads=2, ffn=64)
    path = tmp_path / "enc.onnx"
    onnx.save(model, str(path))
    assert main(["ir", str(path)]) == 0
    text = capsys.readouterr().out
    kernels = [chunk for chunk in text.split("# node ") if chunk.strip()]
    assert len(kernels) > 5
    for chunk in kernels:
        parse_kernel(chunk.split("\n", 1)[1])


def test_bench_models_without_a_budget_needs_an_existing_records_file(tmp_path):
    from nestor.bench import bench_models
    from nestor.ir.errors import NestorError
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(NestorError, match="nope.sqlite: no such records file"):
        bench_models(["resnet50"], records=str(missing), out=lambda line: None)
    assert not missing.exists()  # not created empty on the way


def test_tune_a_kernel_file_within_a_time_budget_only(tmp_path, capsys):
    import re
    from nestor.autotune.records import Records
    from nestor.ir import print_kernel
    from tests.test_passes import _onnx
    path = tmp_path / "mm.ir"
    path.write_text(print_kernel(_onnx("MatMul", {"X": [16, 32], "W": [32, 16]}, [16, 16])))
    records = tmp_path / "r.sqlite"
    # long enough for a first batch on a slow machine: what the budget cuts is not recorded
    assert main(["tune", str(path), "--time-budget", "8s", "--records", str(records)]) == 0
    captured = capsys.readouterr()
    assert "(8 s)" in captured.out and "estimated latency" in captured.out
    last = captured.err.strip().split("\r")[-1]  # the progress line, as last drawn
    assert re.search(r"\[tune\] [#-]+ +\d+ trials +\d+/8 s ", last), last
    assert "ms" in last and "GFLOP/s" in last
    assert "/1000000000" not in captured.err  # no trial count stands in for "no limit"
    from nestor.autotune.roofline import stored_roofline
    from nestor.autotune.tune import target_key
    with Records(records) as db:
        assert db.count() > 0
        roof = stored_roofline(db, target_key())   # the host's, measured after the tuning
        assert roof is not None and roof.flops > 1e8 and roof.bandwidth > 1e8


def test_tune_pretrained_from_other_records_and_an_old_cost_model_refused(tmp_path, capsys):
    """--pretrained seeds the cost model with another tuning's records (kept in --cost-model);
    a cost model file of another format is one clear line, exit 1."""
    import json
    import numpy as np
    from nestor.costmodel import CostModel
    from nestor.ir import print_kernel, structural_hash
    from tests.test_passes import _onnx
    paths = []
    for n, shape in enumerate(((16, 32, 16), (32, 16, 24))):
        m, k, n_ = shape
        kernel = _onnx("MatMul", {"X": [m, k], "W": [k, n_]}, [m, n_])
        paths.append((tmp_path / f"mm{n}.ir", structural_hash(kernel)))
        paths[-1][0].write_text(print_kernel(kernel))
    other, model = tmp_path / "other.sqlite", tmp_path / "model.npz"
    assert main(["tune", str(paths[0][0]), "--trials", "4", "--records", str(other)]) == 0
    assert main(["tune", str(paths[1][0]), "--trials", "4", "--records", str(tmp_path / "r.sqlite"),
                 "--pretrained", str(other), "--cost-model", str(model)]) == 0
    groups = set(CostModel.load(str(model)).training_data()[2])
    assert paths[0][1] in groups  # learned from the other tuning's records
    with np.load(model) as f:
        saved = dict(f)
    np.savez(model, **{**saved, "meta": np.array(json.dumps({**json.loads(str(saved["meta"])), "format": 1}))})
    capsys.readouterr()
    assert main(["tune", str(paths[1][0]), "--trials", "1", "--records", str(tmp_path / "r.sqlite"),
                 "--cost-model", str(model)]) == 1
    err = capsys.readouterr().err
    assert "saved by another Nestor (format 1" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["tune", "compile"])
def test_tune_seed_reaches_the_tuner(tmp_path, monkeypatch, command):
    import nestor.autotune.tune as tune
    seeds = []

    def tune_graph(graph, budget, records, seed=0, **kwargs):
        from nestor.autotune.records import Records
        with Records(records):   # compile --tune then compiles from it
            seeds.append(seed)
        return []
    monkeypatch.setattr(tune, "tune_graph", tune_graph)
    model = _tiny_onnx(tmp_path)
    extra = ["--tune", "-o", str(tmp_path / "tiny.nestor")] if command == "compile" else []
    for args in (["--seed", "3"], []):
        assert main([command, model, *extra, "--trials", "1", "--records", str(tmp_path / "r.sqlite"), *args]) == 0
    assert seeds == [3, 0]


# --- --target ----------------------------------------------------------------------------------

def _tiny_onnx(tmp_path) -> str:
    from tests.test_gpu_runtime import tiny_model
    path = str(tmp_path / "tiny.onnx")
    onnx.save(tiny_model(), path)
    return path


@pytest.mark.parametrize("command", ["compile", "run", "tune", "ir"])
def test_a_bad_target_is_one_line(tmp_path, capsys, command):
    path = _tiny_onnx(tmp_path)
    assert main([command, path, "--target", "cuda2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nestor: error: unknown target 'cuda2'")
    assert main([command, path, "--target", '{"kind": "llvm"']) == 1
    assert "is not valid JSON" in capsys.readouterr().err


def test_compile_with_records_that_do_not_exist_is_one_line(tmp_path, capsys):
    typo = tmp_path / "typo.sqlite"
    assert main(["compile", _tiny_onnx(tmp_path), "--records", str(typo)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"records file '{typo}' does not exist" in err
    assert not typo.exists()   # not created empty


def test_bench_with_a_bad_target_is_one_line(capsys):
    assert main(["bench", "models", "--target", "tpu"]) == 1
    assert capsys.readouterr().err.startswith("nestor: error: unknown target 'tpu'")


def test_compile_prints_its_target_and_run_keeps_the_artifacts(tmp_path, capsys):
    path = _tiny_onnx(tmp_path)
    assert main(["compile", path, "--target", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "compiling for llvm" in out and "for llvm" in out.splitlines()[-1]
    art = str(tmp_path / "tiny.nestor")
    assert main(["run", art, "--repeat", "1"]) == 0
    assert main(["run", art, "--target", "cpu", "--repeat", "1"]) == 0
    capsys.readouterr()
    assert main(["run", art, "--target", "cuda"]) == 1   # whether or not a GPU is here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compiled for llvm" in err and "--target cuda" in err


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to build CUDA code")
def test_compile_for_cuda_and_run_here(tmp_path, capsys):
    from nestor.codegen import gpu_present
    path = _tiny_onnx(tmp_path)
    assert main(["compile", path, "--target", "cuda", "--schedule",
                 "bind(i0, blockIdx.x); bind(i1, threadIdx.x)"]) == 0
    assert "compiling for cuda sm_" in capsys.readouterr().out
    code = main(["run", str(tmp_path / "tiny.nestor"), "--repeat", "2"])
    captured = capsys.readouterr()
    if gpu_present():
        assert code == 0 and "median latency" in captured.out
    else:
        assert code == 1 and captured.err.count("\n") == 1
        assert "compiled for an NVIDIA GPU" in captured.err and "no GPU is present" in captured.err


def _matmul_softmax(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["H"], name="mm"), helper.make_node("Softmax", ["H"], ["Y"], name="sm")],
        "mm_softmax", [helper.make_tensor_value_info("X", TensorProto.FLOAT, (256, 256))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, (256, 256))], [w])
    path = tmp_path / "mm_softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_run_profile_lists_the_kernels_slowest_first(tmp_path, capsys):
    path = _matmul_softmax(tmp_path)
    assert main(["run", str(path), "--repeat", "3", "--profile", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("kernels timed alone:"))
    rows = [line.split() for line in out[start + 2:]]
    assert "the 2 slowest of 2" in out[start]
    assert sorted((r[3], r[4]) for r in rows) == [("MatMul", "mm"), ("Softmax", "sm")]
    assert float(rows[0][0]) >= float(rows[1][0]) > 0  # slowest first (which one is, a loaded machine decides)


def test_profile_accounts_for_every_node_of_the_model():
    import nestor
    model = encoder_block(seq=8, hidden=32, heads=2, ffn=64)
    compiled = nestor.compile(model)
    rows = compiled.profile(compiled.random_inputs(), repeat=2)
    nodes = sorted(n for r in rows for n in r["nodes"])
    assert nodes == sorted(s["node"] for s in compiled.plan["steps"])
    assert [r["seconds"] for r in rows] == sorted((r["seconds"] for r in rows), reverse=True)
