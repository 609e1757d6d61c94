"""Measuring candidates on remote devices through TVM's RPC tracker (`tvm.rpc`), behind the same
interface as the local Measurer: the tuner cannot tell which it has.

Candidates are built here, in parallel (the Measurer's builders, for the target: its triple where
it names one), and each is timed there as soon as it is built here: uploaded to a device
registered under the key, run there once and checked against the reference outputs, then timed
there. One runner process per free device, so every device times a candidate at once.
A runner keeps its RPC session (and the kernel's inputs there) from one candidate to the next
until the batch ends, rather than one session per candidate as MetaSchedule's RPC runner: a new
session costs a request to the tracker, a process forked there and the device registering again,
many times a small kernel's timing. A session lasts SESSION_SPAN timeouts (a candidate starts in
it only while one whole timeout is left): the server ends it then, which is how a hung candidate
ends (so it holds its device up to SESSION_SPAN timeouts); one that finishes past its timeout is
still a timeout. A device that disappears costs the candidate it was running, and the candidates
after it go to the other devices (the next round of the batch). A candidate that crashes its
session (a segfault) takes TVM's rpc_server down with it: the server's listening thread dies of
the session's exit status, and the process lives on, unregistered, serving no one.
So a candidate no device took (all gone, or busy past QUEUE_WAIT) is not its fault: it is offered
again to the devices found then; when none is left it stays unmeasured (unrecorded), and the next
batch ends in one RPCError that names the devices lost. Between batches the runners follow the
devices: one more for a device that registered (a server restarted), one less for one gone.
Errors and times carry the device key (`KEY@HOST:PORT`), and so do the records.
"""
from __future__ import annotations

import os
import socket
import struct
import time

from ..ir.errors import NestorError
from .measure import BUDGET_ENDED, BUILD_TIMEOUT, FLUSH, Measurer, _Bench, _brief, _serve, _serve_stages, _Worker

CONNECT_TIMEOUT = 10.0  # seconds to reach the tracker
DEVICE_WAIT = 30.0      # seconds tuning waits for a free device under the key before it gives up
QUEUE_WAIT = 30.0       # seconds a runner waits for a device mid-batch (while another was lost)
SETTLE = 2.0            # seconds a device takes to register again after a session
POLL = 0.05             # seconds between two looks at the tracker's queue
SESSION_SPAN = 3        # a runner's session on a device lasts this many candidate timeouts
RETRIES = 3             # rounds a batch's candidates no device took are offered to the devices again
UNSERVED = "unserved"   # a runner's reply: no device took the candidate (never run: tried again)


class RPCError(NestorError):
    """A tracker that cannot be reached, or a key under which no device is free."""


def parse_tracker(address: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets: `[::1]:9190`) -> (host, port)."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
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
    session = rpc.connect_tracker(host, port)
    # TVM writes a message's length and its body in two sends: without this, each question to
    # the tracker waits out a delayed ACK (40 ms)
    session._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return session


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
        except (OSError, RuntimeError, struct.error, ValueError, KeyError, TypeError, AttributeError) as err:
            # it went away, or answers garbage (not JSON, or JSON of another shape)
            raise RPCError(f"RPC tracker {address} lost: {err or type(err).__name__}") from None
        if free >= want or (free and time.monotonic() >= deadline):
            return free
        if time.monotonic() >= deadline:
            why = f"{registered} registered, all busy" if registered else "none registered"
            raise RPCError(f"RPC tracker {address}: no free device under key '{key}' after {wait:g} s ({why})")
        time.sleep(POLL)


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
        self._made = 0
        self._session_timeout = timeout
        self._lost: list[str] = []  # devices whose session ended mid-run, for the error when none is left
        if options.get("build_workers") is None:
            options["build_workers"] = host_cores()
        self._tracker = tracker_session(*parse_tracker(tracker))
        try:
            self._free = wait_for_devices(self._tracker, tracker, key, device_wait)
            # a runner's own limit: it may first wait for a device (after one was lost), then upload
            # (a hang ends with the session it runs in: SESSION_SPAN timeouts after it opened)
            super().__init__(reference, target, timeout=SESSION_SPAN * timeout + QUEUE_WAIT + CONNECT_TIMEOUT,
                             **options)
        except BaseException:
            self._tracker.close()
            raise

    def close(self) -> None:
        super().close()
        self._tracker.close()

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
        """As the Measurer's, but each candidate is timed there as soon as it is built here
        (where no timing runs), so the devices wait for no slower build than their next one."""
        built, timed = _serve_stages([(self._builders, BUILD_TIMEOUT, "build failed: "),
                                      (self._runners, self.timeout, "")], [builds, runs], deadline)
        timed = self._offer_again(runs, timed, deadline)
        self._release()
        return list(zip(built, timed))

    def _release(self) -> None:
        """The runners end their sessions: the devices go back to the tracker (for counting, and
        for the tracker's other clients) until the next batch."""
        _serve(self._runners, [{"release": True}] * len(self._runners), self.timeout, "")

    def _offer_again(self, runs: list[dict], replies: list[dict | None], deadline: float | None) -> list:
        """The replies (None: not built), with the runs no device took (UNSERVED: every device
        gone or busy, or the runner's lost; not the candidate's fault) offered to the devices
        there are then, RETRIES rounds at most. One still left gets BUDGET_ENDED, the mark of a
        candidate the tuner does not record: a later batch measures it, or its _follow_devices
        says in one RPCError that no device is left (after this batch's results, the crash that
        took the device among them, are recorded)."""
        def note(reply: dict) -> dict:
            if reply.pop("lost", False):
                self._lost.append(reply["device"])
            return reply

        replies = [r and note(r) for r in replies]
        waiting = [n for n, r in enumerate(replies) if r and r.get(UNSERVED)]
        for _ in range(RETRIES):
            if not waiting:
                break
            self._release()
            try:
                self._follow_devices()
            except RPCError:
                break
            for n, reply in zip(waiting, _serve(self._runners, [runs[n] for n in waiting], self.timeout, "",
                                                deadline)):
                replies[n] = note(reply)
            waiting = [n for n in waiting if replies[n].get(UNSERVED)]
        for n in waiting:
            replies[n] = {"error": BUDGET_ENDED}
        return replies

    def _follow_devices(self) -> None:
        """One runner per free device: more for devices that registered since the last batch,
        fewer for devices gone (a runner without a device would wait for another's)."""
        want = len(self._runners)
        try:  # a device just released takes a moment to register again
            free = wait_for_devices(self._tracker, self._address, self._key, SETTLE, want)
        except RPCError:
            try:
                free = wait_for_devices(self._tracker, self._address, self._key, self._device_wait)
            except RPCError as err:
                if not self._lost:
                    raise
                raise RPCError(f"{err}; lost mid-run: {', '.join(dict.fromkeys(self._lost))} (TVM's "
                               f"rpc_server stops serving after a candidate crashes its session: restart it)") \
                    from None
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


def _session_gone(err: BaseException) -> bool:
    """Whether the session's process is gone: it exited (a crash: kShutdown) or its socket
    closed under the call (a device killed or unplugged: TVM's SockChannel error). Not the
    candidate's device to wait for: the batch's other candidates go to the devices left."""
    text = str(err)
    return isinstance(err, ConnectionError) or "kShutdown" in text or "SockChannel" in text


def remote_runner(tracker: tuple[str, int], key: str, timeout: float, **config):
    """A runner process's serve(request): candidates timed on a device under `key` in a session
    it keeps for the next ones (while SESSION_SPAN timeouts last), each result tagged with the
    device key. `{"release": True}` ends the session (the device goes back to the tracker)."""
    from tvm import rpc
    from tvm.rpc.base import TrackerCode, recvjson, sendjson
    kernel = dict(config)
    trackers = []  # the connection to the tracker, made again after a failure
    held = {}      # the open session: remote, device, until (time.monotonic), bench (the kernel's arrays there)
    lost = []      # the device lost mid-round: the round's next candidates are for the other runners

    def next_device() -> tuple[str, int, str] | None:
        """The address and match key of the next free device, waiting QUEUE_WAIT at most; None
        at once when no device is registered under the key (all gone: none will come free)."""
        if not trackers:
            trackers.append(tracker_session(*tracker))
        conn = trackers[0]
        deadline = time.monotonic() + QUEUE_WAIT
        try:
            # until one is free: the tracker's queue does not tell a request that the devices left
            while True:
                free, registered = free_devices(conn, key)
                if not registered:
                    return None
                if free or time.monotonic() >= deadline:
                    break
                time.sleep(POLL)
            # TrackerSession.request waits without bound and does not say which device it gave:
            # its protocol, on its socket, with a bound
            conn._sock.settimeout(max(deadline - time.monotonic(), POLL))
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

    def open_session() -> dict | None:
        """A session on the next free device (held), or the reply when there is none."""
        try:
            found = next_device()
        except Exception as err:
            found, why = None, _brief(err)
        else:
            why = "none registered"
        if found is None:
            return {"error": f"not measured: no device under key '{key}' ({why})", UNSERVED: True}
        url, port, matchkey = found
        span = SESSION_SPAN * timeout
        held.update(device=f"{key}@{url}:{port}", until=time.monotonic() + span)
        held["remote"] = rpc.connect(url, port, matchkey, session_timeout=span)
        return None

    def serve(request) -> dict:
        if "configure" in request:
            kernel.clear()
            kernel.update(request["configure"])
            held.pop("bench", None)
            return {}
        if request.get("release"):
            held.clear()  # the last reference to the session: it ends, the device registers again
            lost.clear()
            return {}
        if held and time.monotonic() + timeout > held["until"]:  # too little left of it for a whole candidate
            held.clear()
        if not held and lost:
            return {"error": f"not measured: {lost[0]} was lost", UNSERVED: True}
        try:
            if not held and (unserved := open_session()):
                return unserved
            start = time.monotonic()  # the candidate's time starts once it has a device
            remote = held["remote"]
            remote.upload(request["path"])
            module = remote.load_module(os.path.basename(request["path"]))
            if "bench" not in held:
                held["bench"] = _Bench(kernel, remote.cpu(), FLUSH, remote=True)
            reply = held["bench"].run(module, request)
            if time.monotonic() - start > timeout:  # it ended, but later than a session of its own would have
                reply = {"error": f"timeout after {timeout:g} s on {held['device']}"}
        except Exception as err:  # the candidate failed there, or the device was lost mid-run
            device = held.get("device", f"{key}@?")
            held.clear()
            if "RPCSessionTimeoutError" in str(err):  # the server ended the session (a hang)
                reply = {"error": f"timeout after {timeout:g} s on {device}"}
            elif _session_gone(err):
                reply = {"error": f"run failed on {device}: the session ended mid-run (the candidate crashed "
                                  f"it, or the device went away): {_brief(err)}", "lost": True}
                lost.append(device)
            else:
                reply = {"error": f"run failed on {device}: {_brief(err)}"}
            reply["device"] = device
            return reply
        reply["device"] = held["device"]
        return reply
    return serve
