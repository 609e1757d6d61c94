"""Measuring candidates on remote devices through TVM's RPC tracker (`tvm.rpc`), behind the same
interface as the local Measurer: the tuner cannot tell which it has.

Candidates are built here, in parallel (the Measurer's builders, for the target: its triple where
it names one), and a slice of them is timed there while the next slice builds here, each in an
RPC session of its own on a device registered under the key: the module is uploaded, run there
once and checked against the reference outputs, then timed there. One runner process per free
device, so every device times a candidate at once.
A session per candidate, as MetaSchedule's RPC runner: the server ends a session that runs past
the timeout (a hung candidate) and the device serves the next; a device that disappears costs the
candidate it was running, and the candidates after it go to the other devices. Between batches
the runners follow the devices: one more for a device that registered, one less for one gone.
Errors and times carry the device key (`KEY@HOST:PORT`), and so do the records.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

from ..ir.errors import NestorError
from .measure import BUILD_TIMEOUT, FLUSH, Measurer, _Bench, _brief, _serve, _Worker

CONNECT_TIMEOUT = 10.0  # seconds to reach the tracker
DEVICE_WAIT = 30.0      # seconds tuning waits for a free device under the key before it gives up
QUEUE_WAIT = 30.0       # seconds a runner waits for a device mid-batch (while another was lost)
SETTLE = 2.0            # seconds a device takes to register again after a session


class RPCError(NestorError):
    """A tracker that cannot be reached, or a key under which no device is free."""


def parse_tracker(address: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RPCError(f"--rpc-tracker '{address}' is not HOST:PORT")
    return host, int(port)


def tracker_session(host: str, port: int):
    """A tvm.rpc TrackerSession, once the address is known to answer as a tracker (TVM's own
    connect retries a refused connection for a minute, and waits forever on a silent peer)."""
    from tvm import rpc
    from tvm.rpc.base import RPC_TRACKER_MAGIC, recvall
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as probe:
            probe.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", recvall(probe, 4))[0]
    except (OSError, RuntimeError) as err:  # refused, unreachable, timed out, closed
        raise RPCError(f"RPC tracker {host}:{port} cannot be reached: {err}") from None
    if magic != RPC_TRACKER_MAGIC:
        raise RPCError(f"{host}:{port} is not an RPC tracker")
    return rpc.connect_tracker(host, port)


def free_devices(tracker, key: str) -> tuple[int, int]:
    """(free, registered) devices under `key` now."""
    summary = tracker.summary()
    registered = sum(1 for s in summary["server_info"] if s.get("key") == f"server:{key}")
    return summary["queue_info"].get(key, {}).get("free", 0), registered


def wait_for_devices(tracker, address: str, key: str, wait: float, want: int = 1) -> int:
    """The free devices under `key` once there are `want` (or, after `wait` seconds, at least one)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            free, registered = free_devices(tracker, key)
        except (OSError, RuntimeError, struct.error) as err:  # it went away, or answers garbage
            raise RPCError(f"RPC tracker {address} lost: {err or type(err).__name__}") from None
        if free >= want or (free and time.monotonic() >= deadline):
            return free
        if time.monotonic() >= deadline:
            why = f"{registered} registered, all busy" if registered else "none registered"
            raise RPCError(f"RPC tracker {address}: no free device under key '{key}' after {wait:g} s ({why})")
        time.sleep(0.2)


class RPCMeasurer(Measurer):
    """A Measurer (same arguments, same results) whose candidates run on the devices registered
    under `key` at the tracker `tracker` (`HOST:PORT`), one candidate per device at a time.
    `timeout` bounds a candidate's session (upload, checked run, timing); `device_wait` how long
    to wait for a free device when there is none (then RPCError). `build_workers` (None): one
    per core here, where no timing runs for builds to disturb."""

    def __init__(self, reference, tracker: str, key: str, target=None, timeout: float = 10.0,
                 device_wait: float = DEVICE_WAIT, **options):
        from ..codegen import as_target, host_cores, is_gpu
        from ..codegen.build import cross_linker
        if is_gpu(as_target(target)):
            raise RPCError("remote measurement times CPU (llvm) targets; a CUDA target is timed here")
        try:  # before any candidate: without it every build would fail
            cross_linker(as_target(target))
        except RuntimeError as err:
            raise RPCError(str(err)) from None
        self._address, self._key, self._device_wait = tracker, key, device_wait
        self._tracker = tracker_session(*parse_tracker(tracker))
        self._free = wait_for_devices(self._tracker, tracker, key, device_wait)
        self._made = 0
        self._session_timeout = timeout
        if options.get("build_workers") is None:
            options["build_workers"] = host_cores()
        # a runner's own limit: it may first wait for a device (after one was lost), then upload
        super().__init__(reference, target, timeout=timeout + QUEUE_WAIT + CONNECT_TIMEOUT, **options)

    def _new_runners(self) -> list[_Worker]:
        return [self._new_runner() for _ in range(self._free)]

    def _new_runner(self, config: dict | None = None) -> _Worker:
        self._made += 1
        base = {"tracker": parse_tracker(self._address), "key": self._key, "timeout": self._session_timeout}
        return _Worker("remote runner", {**(config or {}), **base},
                       os.path.join(self._dir, f"remote_runner{self._made}.log"))

    def measure(self, candidates):
        self._follow_devices()
        return super().measure(candidates)

    def _build_and_time(self, builds, runs, deadline):
        """As the Measurer's, but in slices (as many jobs as builders or devices, whichever are
        more): a slice is timed there while the next one builds here, where no timing runs."""
        size = max(len(self._builders), len(self._runners))
        slices = [range(start, min(start + size, len(builds))) for start in range(0, len(builds), size)]
        done = []
        with ThreadPoolExecutor(1) as background:  # the builders' pipes, the main thread the runners'
            def build(part):
                return background.submit(_serve, self._builders, [builds[n] for n in part], BUILD_TIMEOUT,
                                         "build failed: ", deadline)
            pending = build(slices[0]) if slices else None
            for k, part in enumerate(slices):
                built = pending.result()
                if k + 1 < len(slices):
                    pending = build(slices[k + 1])
                ok = [n for n, b in zip(part, built) if "error" not in b]
                timed = dict(zip(ok, _serve(self._runners, [runs[n] for n in ok], self.timeout, "", deadline)))
                done += [(b, timed.get(n)) for n, b in zip(part, built)]
        return done

    def _follow_devices(self) -> None:
        """One runner per free device: more for devices that registered since the last batch,
        fewer for devices gone (a runner without a device would wait for another's)."""
        want = len(self._runners)
        try:  # a device just released takes a moment to register again
            free = wait_for_devices(self._tracker, self._address, self._key, SETTLE, want)
        except RPCError:
            free = wait_for_devices(self._tracker, self._address, self._key, self._device_wait)
        while len(self._runners) > free:
            w = self._runners.pop()
            w.stop()
            self._workers.remove(w)
        added = [self._new_runner(self._runners[0].config if self._runners else None)
                 for _ in range(free - len(self._runners))]
        for w in added:
            w.start()
        for w in added:
            w.ready()
        self._runners += added
        self._workers += added


def remote_runner(tracker: tuple[str, int], key: str, timeout: float, **config):
    """A runner process's serve(request): each candidate in a session of its own on a device
    under `key`, its result tagged with the device key."""
    from tvm import rpc
    from tvm.rpc.base import TrackerCode, recvjson, sendjson
    kernel = dict(config)
    trackers = []  # the connection to the tracker, made again after a failure

    def next_device() -> tuple[str, int, str]:
        """The address and match key of the next free device (waiting QUEUE_WAIT at most)."""
        if not trackers:
            trackers.append(rpc.connect_tracker(*tracker))
        conn = trackers[0]
        # TrackerSession.request waits without bound and does not say which device it gave:
        # its protocol, on its socket, with a bound
        try:
            conn._sock.settimeout(QUEUE_WAIT)
            sendjson(conn._sock, [TrackerCode.REQUEST, key, "", 1])
            answer = recvjson(conn._sock)
            conn._sock.settimeout(None)
        except BaseException:
            conn.close()  # the tracker then gives the device it would have sent us to another
            trackers.clear()
            raise
        if answer[0] != TrackerCode.SUCCESS:
            raise RuntimeError(f"the tracker answered {answer}")
        url, port, matchkey = answer[1]
        return url, port, matchkey

    def serve(request) -> dict:
        if "configure" in request:
            kernel.clear()
            kernel.update(request["configure"])
            return {}
        try:
            url, port, matchkey = next_device()
        except Exception as err:
            return {"error": f"no device under key '{key}' within {QUEUE_WAIT:g} s: {_brief(err)}"}
        device = f"{key}@{url}:{port}"
        try:
            remote = rpc.connect(url, port, matchkey, session_timeout=timeout)
            remote.upload(request["path"])
            module = remote.load_module(os.path.basename(request["path"]))
            reply = _Bench(kernel, remote.cpu(), FLUSH, remote=True).run(module, request)
        except Exception as err:  # the candidate failed there, or the device was lost mid-run
            if "RPCSessionTimeoutError" in str(err):  # the server ended the session (a hang)
                reply = {"error": f"timeout after {timeout:g} s on {device}"}
            else:
                reply = {"error": f"run failed on {device}: {_brief(err)}"}
        reply["device"] = device
        return reply
    return serve
