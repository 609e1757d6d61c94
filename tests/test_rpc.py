"""Measurement on remote devices through TVM's RPC tracker: a tracker and RPC servers on
loopback (python -m tvm.exec.rpc_tracker / rpc_server), tuned through, one killed mid-run."""
import os
import re
import shutil
import signal
import struct
import socket
import subprocess
import sys
import threading
import time

import pytest

from nestor.autotune.measure import BUDGET_ENDED, Measurer
from nestor.autotune.records import Records
from nestor.autotune.rpc_measure import RPCError, RPCMeasurer, free_devices, parse_tracker, tracker_session
from nestor.cli import main
from nestor.autotune.search import Tuner
from nestor.codegen import build, host_target, machine_params
from nestor.ir import print_kernel
from nestor.passes import parse_pipeline

from .test_measure import BAD, GOOD, MATMUL, parse_kernel

pytest.importorskip("tornado")  # TVM's tracker needs it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """A tracker and the RPC servers started under it, each in its own process group."""

    def __init__(self, tmp):
        self.tmp, self.procs, self.servers = tmp, [], {}
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._start("tracker", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                    "--port-end", str(port + 1))
        deadline = time.monotonic() + 60
        while True:  # up once it answers as a tracker
            try:
                self.tracker = tracker_session("127.0.0.1", port)
                break
            except RPCError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _start(self, name, module, *args) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def serve(self, key: str, n: int) -> list[str]:
        """Start n servers under `key`, wait until all are free; their device keys."""
        names = []
        for _ in range(n):
            port = free_port()
            name = f"{key}@127.0.0.1:{port}"
            self.servers[name] = self._start(name, "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                             "--port", str(port), "--port-end", str(port + 1),
                                             "--tracker", self.address, "--key", key)
            names.append(name)
        deadline = time.monotonic() + 60
        while free_devices(self.tracker, key)[0] < n:
            assert time.monotonic() < deadline, "RPC servers did not register"
            time.sleep(0.2)
        return names

    def log(self, name: str) -> str:
        with open(os.path.join(self.tmp, f"{name}.log")) as f:
            return f.read()

    def kill(self, name: str) -> None:
        os.killpg(self.servers[name].pid, signal.SIGKILL)

    def close(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    lb = Loopback(str(tmp_path_factory.mktemp("rpc")))
    try:
        yield lb
    finally:
        lb.close()


@pytest.fixture(scope="module")
def pair(loopback):
    """Two devices under the key 'pair'."""
    return loopback.serve("pair", 2)


@pytest.mark.slow
def test_tune_through_the_tracker_uses_every_device(loopback, pair, tmp_path):
    path, db = tmp_path / "mm.ir", tmp_path / "r.sqlite"
    path.write_text(print_kernel(MATMUL))
    assert main(["tune", str(path), "--records", str(db), "--trials", "8",
                 "--rpc-tracker", loopback.address, "--rpc-key", "pair"]) == 0
    with Records(db) as records:
        done = records.records()
        assert records.meta_items() == {}  # no roofline: this host timed none of them
    assert len(done) == 8 and sum(r.ok for r in done) >= 6
    assert {r.device for r in done} == set(pair)  # both devices measured, and the records say which


WRONG = parse_kernel(BAD["wrong"][0])


def test_remote_checks_records_and_a_killed_device(loopback, pair, tmp_path):
    """(Last of the tests on `pair`: it kills one of them.)"""
    doomed, survivor = pair
    # 1000 runs a repeat: the unscheduled matmul takes about half a second on its device
    with RPCMeasurer(MATMUL, loopback.address, "pair", repeats=2, number=1000, timeout=60) as m:
        assert len(m._runners) == 2  # one per device
        checked = m.measure([GOOD, WRONG, MATMUL, GOOD])
        # as a local measurement judges them (test_measure): the wrong one caught there
        assert [r.ok for r in checked] == [True, False, True, True]
        assert checked[1].error.startswith("wrong result: max abs err")
        assert all(len(r.repeats) == 2 and r.median > 0 for r in checked if r.ok)
        assert {r.device for r in checked} == set(pair)
        with Records(tmp_path / "r.sqlite") as records:  # a tuner's round: its records say where
            Tuner(MATMUL, m, records, None, "t", machine_params(host_target()), batch=4).round()
            assert {r.device for r in records.records()} == set(pair) and len(records.records()) == 4

        def kill_when_serving():  # the doomed server's next session is a candidate in flight
            sessions = loopback.log(doomed).count("start serving")
            deadline = time.monotonic() + 120
            while loopback.log(doomed).count("start serving") == sessions and time.monotonic() < deadline:
                time.sleep(0.01)
            loopback.kill(doomed)

        killer = threading.Thread(target=kill_when_serving)
        killer.start()
        results = m.measure([MATMUL] * 5)
        killer.join()
        lost = [r for r in results if not r.ok]
        assert len(lost) == 1 and lost[0].error.startswith(f"run failed on {doomed}: the session ended mid-run")
        assert m._lost == [doomed]  # known lost at once: its runner waits for no other device
        assert len(results) == 5 and all(r.device == survivor for r in results if r.ok)
        again = m.measure([GOOD, MATMUL])  # the next batch: one runner for the one device left
        assert len(m._runners) == 1 and all(r.ok and r.device == survivor for r in again)


def test_a_runner_keeps_its_session_for_the_batch_then_gives_the_device_back(loopback):
    """A session per batch, not per candidate: one fork there, one registration with the tracker."""
    (device,) = loopback.serve("keep", 1)
    with RPCMeasurer(MATMUL, loopback.address, "keep", repeats=2) as m:
        results = m.measure([GOOD, WRONG, GOOD, MATMUL, GOOD])
        assert [r.ok for r in results] == [True, False, True, True, True]
        assert loopback.log(device).count("start serving") == 1
        deadline = time.monotonic() + 10  # given back when the batch ended (the server logs it after)
        while "finish serving" not in loopback.log(device):
            assert time.monotonic() < deadline, "the session outlived its batch"
            time.sleep(0.05)
        assert all(r.ok for r in m.measure([GOOD, GOOD]))  # the next batch: a session of its own
        assert loopback.log(device).count("start serving") == 2


def test_a_candidate_is_timed_as_soon_as_it_is_built(loopback):
    """The device does not wait for a slow build of another candidate (several seconds: 8,192
    statements unrolled) to time the ones built before it."""
    (device,) = loopback.serve("stream", 1)
    slow = parse_pipeline("split(i2, 2); reorder(i2_o, i2_i, i3, r0); unroll(i2_i); unroll(i3); unroll(r0)"
                          ).apply(MATMUL)
    with RPCMeasurer(MATMUL, loopback.address, "stream", repeats=2, build_workers=2) as m:
        results = m.measure([slow, GOOD, GOOD, GOOD])
    assert all(r.ok for r in results)
    loaded = [int(n) for n in re.findall(r"load_module \S*candidate(\d+)\.so", loopback.log(device))]
    assert loaded[-1] == min(loaded), loaded  # the first candidate, the slow one, timed last


@pytest.mark.slow
def test_remote_results_equal_local_ones(loopback):
    loopback.serve("equal", 2)
    kernels = [GOOD, WRONG, MATMUL, parse_kernel(BAD["unbuildable"][0])]
    with RPCMeasurer(MATMUL, loopback.address, "equal", repeats=2) as m:
        remote = m.measure(kernels)
    with Measurer(MATMUL, repeats=2, build_workers=1) as local:
        here = local.measure(kernels)
    assert [r.ok for r in remote] == [r.ok for r in here] == [True, False, True, False]
    assert [r.error.split(":")[0] for r in remote if r.error] == [r.error.split(":")[0] for r in here if r.error]
    assert {r.device for r in here} == {"local"}


@pytest.mark.slow
def test_a_hang_and_a_crash_cost_their_candidates(loopback):
    devices = loopback.serve("hc", 2)
    with RPCMeasurer(MATMUL, loopback.address, "hc", repeats=2, timeout=4) as m:
        hang, *good = m.measure([parse_kernel(BAD["hang"][0]), GOOD, GOOD])
        assert re.fullmatch(r"timeout after 4 s on hc@127\.0\.0\.1:\d+", hang.error) and all(r.ok for r in good)
        crash, *good = m.measure([parse_kernel(BAD["crash"][0]), GOOD, GOOD])
        assert crash.error.startswith(f"run failed on {crash.device}") and all(r.ok for r in good)
        # TVM's rpc_server stops serving after a session crashed; the other device goes on
        again = m.measure([GOOD, GOOD])
        assert all(r.ok for r in again) and {r.device for r in again} == set(devices) - {crash.device}
        (restarted,) = loopback.serve("hc", 1)  # and a server started again under the key is used
        deadline = time.monotonic() + 60
        while free_devices(loopback.tracker, "hc")[0] < 2:
            assert time.monotonic() < deadline, "the restarted server did not register"
            time.sleep(0.2)
        results = m.measure([GOOD] * 4)
        assert len(m._runners) == 2 and all(r.ok for r in results) and restarted in {r.device for r in results}


def test_a_crash_that_takes_the_only_device_down_is_its_error_then_one_line(loopback):
    """TVM's rpc_server stops serving once a session dies of a signal (its listening thread raises
    on the exit status, the process lives on unregistered). The crash is that candidate's error;
    the candidate after it, which no device took, is not measured (the tuner does not record it);
    the next batch says in one line which device was lost. (A server started again is used:
    test_a_hang_and_a_crash_cost_their_candidates.)"""
    (device,) = loopback.serve("solo", 1)
    # one builder: the crash is built, so timed, first (a candidate is timed once built)
    with RPCMeasurer(MATMUL, loopback.address, "solo", repeats=2, device_wait=1, build_workers=1) as m:
        crash, after = m.measure([parse_kernel(BAD["crash"][0]), GOOD])
        assert crash.error.startswith(f"run failed on {device}: the session ended mid-run (the candidate crashed")
        assert after.error == BUDGET_ENDED
        with pytest.raises(RPCError, match=rf"no free device under key 'solo' after 1 s \(none registered\); "
                                           rf"lost mid-run: {re.escape(device)} \(TVM's rpc_server stops serving"):
            m.measure([GOOD])


@pytest.mark.parametrize("address, parsed", [("10.0.0.2:9190", ("10.0.0.2", 9190)), ("[::1]:9190", ("::1", 9190)),
                                             ("localhost", None), ("h:0", None), ("h:70000", None), (":9190", None)])
def test_tracker_addresses(address, parsed):
    if parsed:
        assert parse_tracker(address) == parsed
    else:
        with pytest.raises(RPCError, match=f"--rpc-tracker '{re.escape(address)}' is not HOST:PORT"):
            parse_tracker(address)


def test_unreachable_tracker_is_one_line(tmp_path, capsys):
    port = free_port()  # nothing listens there
    path = tmp_path / "mm.ir"
    path.write_text(print_kernel(MATMUL))
    assert main(["tune", str(path), "--records", str(tmp_path / "r.sqlite"),
                 "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "k"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nestor: error: RPC tracker 127.0.0.1:{port} cannot be reached") and "\n" not in err
    with pytest.raises(RPCError, match="is not HOST:PORT"):
        RPCMeasurer(MATMUL, "localhost", "k")
    assert main(["tune", str(path), "--rpc-key", "k"]) == 1
    assert capsys.readouterr().err.strip() == "nestor: error: --rpc-tracker and --rpc-key go together"


@pytest.mark.parametrize("summary", [None, {"queue_info": 5}], ids=["gone", "garbage"])
def test_a_tracker_lost_is_one_line(summary):
    """A peer that answers the tracker's handshake, then goes away (or answers the summary with
    JSON of another shape)."""
    import json
    from tvm.rpc.base import RPC_TRACKER_MAGIC, TrackerCode, recvall
    listener = socket.create_server(("127.0.0.1", 0))

    def handshake_then_fail():
        for n in range(2):  # the probe, then the session
            conn, _ = listener.accept()
            conn.recv(4)
            conn.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            if n and summary is not None:
                recvall(conn, struct.unpack("<i", recvall(conn, 4))[0])  # the summary request
                answer = json.dumps([int(TrackerCode.SUCCESS), summary]).encode()
                conn.sendall(struct.pack("<i", len(answer)) + answer)
            conn.close()

    thread = threading.Thread(target=handshake_then_fail)
    thread.start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    with pytest.raises(RPCError, match=rf"RPC tracker {address} lost: "):
        RPCMeasurer(MATMUL, address, "k")
    thread.join()
    listener.close()


def test_key_without_devices_is_an_error_after_the_wait(loopback):
    start = time.monotonic()
    with pytest.raises(RPCError, match=r"no free device under key 'nobody' after 1 s \(none registered\)"):
        RPCMeasurer(MATMUL, loopback.address, "nobody", device_wait=1)
    assert time.monotonic() - start < 10


def test_a_target_of_another_architecture_is_cross_linked(tmp_path):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("no aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)")
    path = build([GOOD], {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}).export(str(tmp_path / "k.so"))
    with open(path, "rb") as f:
        assert struct.unpack("<H", f.read(20)[18:20])[0] == 183  # ELF e_machine: AArch64


def test_a_missing_cross_compiler_is_named_before_tuning():
    with pytest.raises(RPCError, match=r"target triple riscv64-linux-gnu needs the cross compiler "
                                       r"riscv64-linux-gnu-g\+\+ on PATH"):
        RPCMeasurer(MATMUL, "127.0.0.1:1", "k", target={"kind": "llvm", "mtriple": "riscv64-linux-gnu"})


def test_the_wait_for_a_device_is_not_the_candidates_time(loopback, monkeypatch, tmp_path):
    """A runner that waited for a device longer than the timeout (a busy tracker, a device coming
    back) still gives its candidate the whole timeout there."""
    from nestor.autotune import rpc_measure
    loopback.serve("late", 1)
    path = str(tmp_path / "good.so")
    build([GOOD], host_target()).export(path)
    slow_tracker = rpc_measure.tracker_session

    def late(host, port):
        time.sleep(2.5)
        return slow_tracker(host, port)
    with RPCMeasurer(MATMUL, loopback.address, "late", repeats=2, timeout=2.0) as m:
        assert m.measure([GOOD])[0].ok  # configured: the runner's config names the kernel's arrays
        monkeypatch.setattr(rpc_measure, "tracker_session", late)
        serve = rpc_measure.remote_runner(**m._runners[0].config)  # in this process, as a runner runs it
        try:
            reply = serve({"path": path, "name": GOOD.name, "repeats": 2, "number": None})
        finally:
            serve({"release": True})
    assert "error" not in reply and len(reply["repeats"]) == 2, reply
