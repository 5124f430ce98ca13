"""Many lightweight workers in one process: K worker identities served by one poller.

Used by ``benchmarks/bench_scale.py`` and ``tests/integration/test_many_workers.py`` to
connect hundreds or thousands of workers to one broker on a 2-core machine, where as
many real worker processes (~30 MB and one interpreter each) would not fit. It is not
part of the public API: it lives in the package so that both import it as
``impexec._light_workers`` and its host processes start wherever impexec imports.

Seen from the broker, each identity is a real worker (``src/impexec/_worker.py``)::

    main DEALER  (routing id = 16 random bytes)   READY → WELCOME → TASK… → RESULT…
    hb   DEALER  (routing id = worker id + b"h")  HEARTBEAT ⇄ HEARTBEAT every interval;
                                                  RECALL; resends of unacknowledged results

Each identity holds a real :class:`impexec._worker.Worker` that never runs its loops: its
keys (bound to the worker and the direction), its main link's numbering, acknowledgements
and in-order delivery, and its task runner come from there, so the wire is the real
worker's. Only the sockets and the waiting differ, and that does not matter to the broker:

- One thread waits on every main socket with epoll on their ZMQ_FD (zmq.Poller costs
  O(sockets) per call: ~220 µs for 250 sockets, more than a task). Tasks run inline as
  they arrive, in the broker's order per identity (the order it relies on); so nothing
  ever waits queued, a RECALL finds nothing to give back, and a long task would block
  the other identities and their heartbeats: use no-op or microsecond tasks only.
- Heartbeat sockets are not polled: every TICK_S a tenth of the identities read the
  broker's heartbeat-link messages and send their HEARTBEAT (or skip it, like the real
  worker, while tasks and results flow on main), so the broker sees each identity once
  per interval, spread evenly over time (as independent processes would be), and the
  poller only watches the K main sockets.
- Broker silence is judged for the whole process: nothing heard on any socket for the
  heartbeat timeout (or the parent process gone) ends the process.

Run: ``python -m impexec._light_workers CONNECTION_FILE -n K``; exits 0 when every
identity got SHUTDOWN, 3 with no WELCOME in time, 5 when the broker went silent.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from typing import Any

import zmq

from ._connection import ConnectionInfo
from ._errors import ProtocolError
from ._heartbeat import beat
from ._protocol import Flag, Kind, decode, join, recv_frames, send_frames
from ._version import __version__
from ._worker import READY_RESEND_S, Worker

EXIT_OK, EXIT_NO_BROKER, EXIT_BROKER_GONE = 0, 3, 5
#: Seconds between heartbeat ticks; each tick serves 1/SLICES of the identities.
TICK_S = 0.1
#: Seconds to wait for every WELCOME before giving up (EXIT_NO_BROKER).
CONNECT_TIMEOUT_S = 60.0
HB_SUFFIX = b"h"
_NOBLOCK = int(zmq.NOBLOCK)


class _Identity:
    """One worker as the broker sees it: a real Worker's state, and two sockets."""

    __slots__ = ("active", "hb", "hb_broker_seq", "hb_seq", "main", "ready", "ready_at", "welcomed", "worker")

    def __init__(self, worker: Worker, main: zmq.Socket[Any]):
        self.worker = worker  # keys, main-link channel, caches and task runner
        self.main = main
        self.hb: zmq.Socket[Any] | None = None
        self.hb_seq = 0  # our numbers on the heartbeat link (strictly increasing)
        self.hb_broker_seq = 0  # the broker's there: above WELCOME's hb_floor, increasing
        self.welcomed = False
        self.ready: list[Any] = []  # READY, sent again every READY_RESEND_S until WELCOME
        self.ready_at = 0.0
        self.active = 0.0  # last task in and result out on main (then no beat is due)


def _send(sock: zmq.Socket[Any], frames: list[Any]) -> None:
    """Send without blocking: a DEALER whose connection is gone blocks in send, and one
    identity must not stall the others (a lost message is what resends are for)."""
    try:
        send_frames(sock, frames, _NOBLOCK)
    except zmq.Again:
        pass


class LightWorkerHost:
    """K worker identities in this process; :meth:`run` serves them until SHUTDOWN."""

    def __init__(
        self,
        conn: ConnectionInfo,
        n: int,
        *,
        tag: str = "",
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ):
        if n < 1:
            raise ValueError("need at least one identity")
        self.conn = conn
        self.n = n
        self.tag = tag
        self.connect_timeout = connect_timeout
        self.hb_interval = 1.0
        self.hb_timeout = 10.0
        self._by_sock: dict[zmq.Socket[Any], _Identity] = {}
        self._by_fd: dict[int, _Identity] = {}
        self._epoll: select.epoll | None = None
        self._last_heard = 0.0  # when any socket last brought word from the broker
        self._ticks = 0
        self.tasks_run = 0

    # -- main loop --------------------------------------------------------------------
    def run(self) -> int:
        zctx = zmq.Context()
        # libzmq's default is 1023 sockets per context; each identity needs two
        zctx.set(zmq.MAX_SOCKETS, max(1023, 2 * self.n + 16))
        self._epoll = select.epoll()
        try:
            return self._run(zctx)
        finally:
            self._epoll.close()
            for s in list(self._by_sock):
                s.close(linger=0)
            for idn in self._by_sock.values():
                if idn.hb is not None:
                    idn.hb.close(linger=0)
            zctx.term()

    def _run(self, zctx: zmq.Context[Any]) -> int:
        epoll = self._epoll
        assert epoll is not None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "tag": self.tag,
            "python": sys.version.split()[0],
            "impexec": __version__,
            "light": True,
        }
        for _ in range(self.n):
            self._join(zctx, epoll, info)
        parent = os.getppid()
        started = self._last_heard = time.monotonic()
        next_tick = started + TICK_S
        while self._by_sock:
            now = time.monotonic()
            for fd, _ in epoll.poll(max(0.0, next_tick - now)):
                ready = self._by_fd.get(fd)
                if ready is not None and self._serve(zctx, ready):
                    self._last_heard = time.monotonic()
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick = now + TICK_S
            code = self._tick(zctx, now, started)
            if code is not None:
                return code
            if os.getppid() != parent:
                return EXIT_BROKER_GONE  # orphaned: our parent (the benchmark) is gone
        return EXIT_OK

    def _join(self, zctx: zmq.Context[Any], epoll: select.epoll, info: dict[str, Any]) -> None:
        """One more identity: its Worker, its main socket, watched by *epoll*; READY sent."""
        worker = Worker(self.conn, tag=self.tag)
        # tasks run as they arrive: between reads nothing waits here (HB_IDLE)
        worker._idle = True
        idn = _Identity(worker, worker._socket(zctx, worker.wid))  # the real worker's options
        self._by_sock[idn.main] = idn
        # ZMQ_FD is readable when the socket has commands to process, not exactly
        # when a message waits: level-triggered epoll, and a socket is always read
        # to EAGAIN after a wake-up (or after sending on it), so nothing is missed
        fd = idn.main.fileno()
        self._by_fd[fd] = idn
        epoll.register(fd, select.EPOLLIN)
        # READY: main-link number 1, with a zero session (WELCOME tells it)
        ready = json.dumps({**info, "worker": worker.wid.hex(), "local": worker._local})
        idn.ready = worker._encode(Kind.READY, frames=[ready.encode()])
        idn.ready_at = time.monotonic()
        _send(idn.main, idn.ready)
        self._serve(zctx, idn)  # read to EAGAIN (see above) before epoll waits

    def _tick(self, zctx: zmq.Context[Any], now: float, started: float) -> int | None:
        """Every TICK_S: READY again where no WELCOME came, a slice of the heartbeats, and
        the checks that end the process (an exit status then)."""
        welcomed = [i for i in self._by_sock.values() if i.welcomed]
        waiting = len(self._by_sock) - len(welcomed)
        if waiting:
            if now - started > self.connect_timeout:
                sys.stderr.write(
                    f"light workers: {waiting} of {self.n} got no WELCOME from {self.conn.address}\n"
                )
                return EXIT_NO_BROKER
            for idn in list(self._by_sock.values()):
                if not idn.welcomed and now - idn.ready_at >= READY_RESEND_S:
                    # lost on a reset link? the broker takes it once
                    idn.ready_at = now
                    _send(idn.main, idn.ready)
                    # the send may have taken the socket's wake-up for a WELCOME that
                    # came meanwhile: read to EAGAIN, or epoll never wakes for it again
                    self._serve(zctx, idn)
        slices = max(1, round(self.hb_interval / TICK_S))
        self._ticks += 1
        for idn in welcomed[self._ticks % slices :: slices]:
            if self._heartbeat(idn, now):
                self._last_heard = now
            if now - idn.active < self.hb_interval:
                self._last_heard = max(self._last_heard, idn.active)
        if not waiting and now - self._last_heard > self.hb_timeout:
            sys.stderr.write(f"light workers: no word from the broker in {self.hb_timeout:g} s\n")
            return EXIT_BROKER_GONE
        return None

    def _welcome(self, zctx: zmq.Context[Any], idn: _Identity, frames: list[Any]) -> bool:
        """Before WELCOME: look for ours in *frames* and take its settings (as the real
        worker's ``_wait_welcome``). True once welcomed."""
        w = idn.worker
        msg = w._welcome_in(frames)
        if msg is None:
            return False
        self.hb_interval, self.hb_timeout = w.hb_interval, w.hb_timeout
        idn.hb_broker_seq = w._hb_floor
        idn.welcomed = True
        idn.hb = w._socket(zctx, w.wid + HB_SUFFIX)
        self._heartbeat(idn, time.monotonic())
        if msg.flags & Flag.HAS_SETUP:
            # the executor's initializer, once per identity as per process; STARTED
            # then tells the broker it succeeded
            text = w._initialize(msg)
            if text is not None:
                _send(idn.main, w._encode(Kind.START_FAILED, frames=[json.dumps({"error": text}).encode()]))
                self._close(idn)
                return True
            _send(idn.main, w._encode(Kind.STARTED))
        return True

    def _serve(self, zctx: zmq.Context[Any], idn: _Identity) -> bool:
        """Handle everything waiting on one main socket; True if anything came."""
        heard = False
        w = idn.worker
        while True:
            try:
                frames = recv_frames(idn.main, _NOBLOCK)
            except zmq.Again:
                return heard
            heard = True
            if not idn.welcomed:
                self._welcome(zctx, idn, frames)
                if idn.main not in self._by_sock:
                    return True  # its initializer raised: closed
                continue
            # verified, each number once, in the broker's order (held past a gap)
            for msg in w._accept(frames):
                kind = msg.kind
                if kind == Kind.TASK:
                    self.tasks_run += 1
                    _send(idn.main, w._run_task(msg))
                    idn.active = time.monotonic()
                elif kind == Kind.SHUTDOWN:
                    self._close(idn)
                    return True
                elif kind == Kind.DROP_CONTEXT:
                    w._setups.drop(msg.ctx_id)
                # DRAIN needs nothing: tasks never wait here; the broker sends SHUTDOWN
                # once a draining worker holds nothing

    def _heartbeat(self, idn: _Identity, now: float) -> bool:
        """The heartbeat link: read the broker's messages there, send the next beat (if
        main was quiet) and what the broker has not acknowledged for a while."""
        hb = idn.hb
        if hb is None:
            return False
        w = idn.worker
        heard = False
        while True:
            try:
                frames = recv_frames(hb, _NOBLOCK)
            except zmq.Again:
                break
            try:
                msgs = list(decode(w._rx_key, frames, w._session))
            except ProtocolError as exc:
                w._drop_log("the broker's heartbeat socket", str(exc))
                continue
            for msg in msgs:
                if msg.seq <= idn.hb_broker_seq:
                    w._drop_log("the broker's heartbeat socket", f"replayed message (seq {msg.seq})")
                    continue
                idn.hb_broker_seq = msg.seq
                heard = True
                w._chan.on_ack(msg.ack)
                if msg.kind == Kind.RECALL:
                    released = w._release(msg.aux)  # nothing waits here: usually none
                    if released:
                        _send(hb, join(released))
                elif msg.kind == Kind.SHUTDOWN:  # declared lost: leave like a real worker
                    self._close(idn)
                    return heard
        if now - idn.active >= self.hb_interval:
            # like impexec-worker: no beat while tasks and results flow on main
            idn.hb_seq += 1
            _send(hb, beat(w, idn.hb_seq, idn.hb_broker_seq))  # the real worker's beat
        due = w._chan.due(now, max(2 * self.hb_interval, 0.2), self.hb_timeout)
        if due:
            _send(hb, join(due))
        return heard

    def _close(self, idn: _Identity) -> None:
        if self._by_sock.pop(idn.main, None) is None:
            return
        fd = idn.main.fileno()
        self._by_fd.pop(fd, None)
        if self._epoll is not None:
            self._epoll.unregister(fd)
        idn.main.close(linger=1000)
        if idn.hb is not None:
            idn.hb.close(linger=0)


# -- helpers for the benchmark and the test --------------------------------------------
def raise_fd_limit(want: int = 65536) -> int:
    """Raise the open-file soft limit towards *want*; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def split(total: int, procs: int) -> list[int]:
    """Identities per process: *total* spread over at most *procs* processes."""
    procs = max(1, min(procs, total))
    base, extra = divmod(total, procs)
    return [base + (i < extra) for i in range(procs)]


def spawn(
    connection_file: str | os.PathLike[str],
    total: int,
    procs: int,
    *,
    env: dict[str, str] | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Start *total* identities in up to *procs* host processes (our children)."""
    raise_fd_limit()  # children inherit the raised soft limit
    return [
        subprocess.Popen(
            [sys.executable, "-m", "impexec._light_workers", str(connection_file), "-n", str(k)],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        for k in split(total, procs)
    ]


def reap(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> list[int | None]:
    """Wait for the host processes to exit; kill those still running after *timeout*.

    Returns each one's exit code (None: it had to be killed).
    """
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5.0)
            codes.append(None)
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("connection_file")
    parser.add_argument("-n", type=int, default=100, help="worker identities in this process")
    parser.add_argument("--tag", default="")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S)
    args = parser.parse_args(argv)
    raise_fd_limit()
    conn = ConnectionInfo.read(args.connection_file)
    return LightWorkerHost(conn, args.n, tag=args.tag, connect_timeout=args.connect_timeout).run()


if __name__ == "__main__":
    sys.exit(main())
