"""A `.nestor` artifact is written whole, and read checked: a damaged one is one line naming the
file, found before any native code is loaded."""
import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

import nestor
from nestor.codegen import build
from nestor.ir import parse_kernel
from nestor.ir.errors import ModelError
from tests.test_gpu_runtime import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A compiled tiny model, and its artifact's bytes."""
    compiled = nestor.compile(tiny_model())
    path = tmp_path_factory.mktemp("artifact") / "tiny.nestor"
    compiled.save(str(path))
    return compiled, path.read_bytes()


@pytest.fixture
def no_dlopen(monkeypatch):
    def must_not_load(path):
        raise AssertionError("the kernels' library was loaded")
    monkeypatch.setattr("nestor.codegen.model.load_module", must_not_load)


def _entries(data: bytes, path) -> dict[str, bytes]:
    path.write_bytes(data)
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _one_line_error(path, match: str = "") -> str:
    with pytest.raises(ModelError) as err:
        nestor.load(str(path))
    message = str(err.value)
    assert "\n" not in message and os.path.basename(path) in message, message
    assert match in message, message
    return message


def test_saved_artifact_loads_and_records_the_library_hash(saved, tmp_path):
    compiled, data = saved
    entries = _entries(data, tmp_path / "m.nestor")
    plan = json.loads(entries["plan.json"])
    assert plan["kernels_sha256"] == hashlib.sha256(entries["kernels.so"]).hexdigest()
    loaded = nestor.load(str(tmp_path / "m.nestor"))
    x = compiled.random_inputs(seed=1)
    np.testing.assert_array_equal(loaded.run(x)[0], compiled.run(x)[0])


def test_a_flipped_byte_anywhere_never_reaches_the_loader(saved, tmp_path, monkeypatch):
    """Each flipped byte is an error or harmless (a field the reader does not use): the library
    that gets loaded is always the original, byte for byte."""
    compiled, data = saved
    original = _entries(data, tmp_path / "orig.nestor")["kernels.so"]
    real_load = nestor.codegen.model.load_module

    def checked_load(path):
        with open(path, "rb") as f:
            assert f.read() == original, "a damaged library was loaded"
        return real_load(path)
    monkeypatch.setattr("nestor.codegen.model.load_module", checked_load)
    path = tmp_path / "flipped.nestor"
    errors = 0
    for at in range(0, len(data), max(1, len(data) // 150)):
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
        try:
            nestor.load(str(path))
        except ModelError as err:
            assert "\n" not in str(err) and "flipped.nestor" in str(err)
            errors += 1
    assert errors > 100


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, -1])
def test_a_truncated_artifact_is_one_line(saved, tmp_path, no_dlopen, keep):
    _, data = saved
    path = tmp_path / "cut.nestor"
    path.write_bytes(data[:int(keep * len(data)) if isinstance(keep, float) else keep])
    _one_line_error(path)


@pytest.mark.parametrize("change, match", [
    (lambda p: p.pop("steps"), "the plan has no 'steps'"),
    (lambda p: p.update(steps="add"), "the plan's 'steps' is a str"),
    (lambda p: p["steps"][0].pop("func"), "step 0 has no 'func'"),
    (lambda p: p["steps"][0].update(func="nowhere"), "['nowhere'], which kernels.so does not export"),
    (lambda p: p["steps"][0]["args"].append("ghost"), "tensor 'ghost' is used but not described"),
    (lambda p: p["tensors"]["R"].update(dtype="float128"), "tensor 'R' has dtype 'float128'"),
    (lambda p: p["tensors"]["R"].update(shape=[4, -16]), "tensor 'R' has shape [4, -16]"),
    (lambda p: p["tensors"]["R"].update(key=p["arena_bytes"]), "does not fit in its arena place"),
    (lambda p: p["tensors"]["X"].update(key=5), "does not fit in its input place 5"),
    (lambda p: p["tensors"]["W"].update(shape=[17, 8]), "does not fit in its constant place 'W'"),
    (lambda p: p.update(constant_names=[]), "constants.npz holds 1 arrays, the plan names 0"),
    (lambda p: p.pop("kernels_sha256"), "SHA-256 mismatch"),
])
def test_a_plan_that_does_not_hold_is_one_line(saved, tmp_path, no_dlopen, change, match):
    _, data = saved
    path = tmp_path / "plan.nestor"
    entries = _entries(data, path)
    plan = json.loads(entries["plan.json"])
    change(plan)
    entries["plan.json"] = json.dumps(plan).encode()
    _write(path, entries)
    _one_line_error(path, match)


def test_plan_json_that_is_not_json_is_one_line(saved, tmp_path, no_dlopen):
    _, data = saved
    path = tmp_path / "text.nestor"
    entries = _entries(data, path)
    _write(path, {**entries, "plan.json": b"{not json"})
    _one_line_error(path, "plan.json is not JSON")
    del entries["plan.json"]
    _write(path, entries)
    _one_line_error(path, "it has no plan.json")


def _with_library(data: bytes, path, library: bytes, rehash: bool) -> None:
    entries = _entries(data, path)
    plan = json.loads(entries["plan.json"])
    if rehash:
        plan["kernels_sha256"] = hashlib.sha256(library).hexdigest()
    _write(path, {**entries, "plan.json": json.dumps(plan).encode(), "kernels.so": library})


def test_another_library_is_a_hash_mismatch(saved, tmp_path, no_dlopen):
    _, data = saved
    other = build([parse_kernel("kernel k(A: f32[4]) -> (B: f32[4]) { for i in 0..4 { B[i] = A[i] } }")])
    other_so = tmp_path / "other.so"
    other.export(str(other_so))
    path = tmp_path / "swapped.nestor"
    _with_library(data, path, other_so.read_bytes(), rehash=False)
    _one_line_error(path, "kernels.so is not the library saved with its plan")
    _with_library(data, path, other_so.read_bytes(), rehash=True)   # a plan rewritten to match
    _one_line_error(path, "which kernels.so does not export")


def test_a_library_that_is_not_one_is_one_line(saved, tmp_path, no_dlopen):
    _, data = saved
    path = tmp_path / "text.nestor"
    _with_library(data, path, b"#!/bin/sh\necho not a library\n", rehash=True)
    _one_line_error(path, "kernels.so is not a shared library")


def test_a_library_the_loader_refuses_is_one_line(saved, tmp_path):
    compiled, data = saved
    path = tmp_path / "elf.nestor"
    library = _entries(data, path)["kernels.so"]
    names = b"".join(f"__tvm_ffi_{s['func']}\0".encode() for s in compiled.plan["steps"])
    _with_library(data, path, library[:64] + bytes(4096) + names, rehash=True)  # a header, no body
    _one_line_error(path, "cannot load the kernels of")


def test_a_version_2_artifact_without_the_hash_still_loads(saved, tmp_path):
    compiled, data = saved
    path = tmp_path / "v2.nestor"
    entries = _entries(data, path)
    plan = json.loads(entries["plan.json"])
    plan["version"] = 2
    del plan["kernels_sha256"]
    _write(path, {**entries, "plan.json": json.dumps(plan).encode()})
    x = compiled.random_inputs(seed=3)
    np.testing.assert_array_equal(nestor.load(str(path)).run(x)[0], compiled.run(x)[0])


def test_a_save_that_fails_midway_leaves_the_old_artifact(saved, tmp_path, monkeypatch):
    compiled, data = saved
    path = tmp_path / "model.nestor"
    path.write_bytes(data)
    real = zipfile.ZipFile.writestr

    def fail_on_constants(self, name, payload, *args, **kwargs):
        if getattr(name, "filename", name) == "constants.npz":
            raise OSError(28, "No space left on device")
        return real(self, name, payload, *args, **kwargs)
    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_on_constants)
    with pytest.raises(OSError, match="No space left"):
        compiled.save(str(path))
    assert path.read_bytes() == data
    assert os.listdir(tmp_path) == ["model.nestor"]   # no temporary file left behind
