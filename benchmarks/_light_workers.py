#!/usr/bin/env python
"""Many lightweight workers in one process: K worker identities served by one poller.

Used by ``benchmarks/bench_scale.py`` and ``tests/integration/test_many_workers.py`` to
connect hundreds or thousands of workers to one broker on a 2-core machine, where as
many real worker processes (~30 MB and one interpreter each) would not fit.

Seen from the broker, each identity is a real worker (``src/impexec/_worker.py``)::

    main DEALER  (routing id = 16 random bytes)   READY → WELCOME → TASK… → RESULT…
    hb   DEALER  (routing id = worker id + b"h")  HEARTBEAT ⇄ HEARTBEAT every interval

Differences from the real worker, and why they do not matter to the broker:

- One thread waits on every main socket with epoll on their ZMQ_FD (zmq.Poller costs
  O(sockets) per call: ~220 µs for 250 sockets, more than a task). Tasks run inline,
  in arrival order per identity (the order the broker relies on). A long task would
  block the other identities and their heartbeats: use no-op or microsecond tasks only.
- Heartbeat sockets are not polled: every TICK_S a tenth of the identities send their
  HEARTBEAT after reading the broker's reply to their previous one, so the broker sees
  each identity once per interval, spread evenly over time (as independent processes
  would be), and the poller only watches the K main sockets.
- Broker silence is judged for the whole process: nothing heard on any socket for the
  heartbeat timeout (or the parent process gone) ends the process.

Run: ``python benchmarks/_light_workers.py CONNECTION_FILE -n K``; exits 0 when every
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
from collections import OrderedDict
from pathlib import Path
from typing import Any

import zmq

from impexec import __version__
from impexec._connection import ConnectionInfo
from impexec._errors import ProtocolError
from impexec._protocol import Flag, Kind, decode, encode, recv_frames, send_frames
from impexec._serialize import ExceptionWithTraceback, get_serializer

EXIT_OK, EXIT_NO_BROKER, EXIT_BROKER_GONE = 0, 3, 5
#: Seconds between heartbeat ticks; each tick serves 1/SLICES of the identities.
TICK_S = 0.1
#: Seconds to wait for every WELCOME before giving up (EXIT_NO_BROKER).
CONNECT_TIMEOUT_S = 60.0
#: Cached unpickled functions (by their pickled bytes), shared by the identities.
FUNCTION_CACHE_SIZE = 64
HB_SUFFIX = b"h"


class _Identity:
    """One worker as the broker sees it: two sockets, their counters, its contexts."""

    __slots__ = (
        "active",
        "broker_seq",
        "contexts",
        "hb",
        "hb_broker_seq",
        "hb_seq",
        "main",
        "seq",
        "welcomed",
        "wid",
    )

    def __init__(self, wid: bytes, main: zmq.Socket[Any]):
        self.wid = wid
        self.main = main
        self.hb: zmq.Socket[Any] | None = None
        self.seq = 0  # our messages on main (READY is 1)
        self.hb_seq = 0  # our messages on hb: the broker checks a counter per socket
        self.broker_seq = 0  # the broker's last accepted seq, per socket (replays)
        self.hb_broker_seq = 0
        self.welcomed = False
        self.contexts: OrderedDict[int, tuple[bool, Any]] = OrderedDict()
        self.active = 0.0  # last task in and result out on main (then no beat is due)


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
        self.session = b"\0" * 8
        self.hb_interval = 1.0
        self.hb_timeout = 10.0
        self.max_contexts = 8
        self._fn_cache: OrderedDict[bytes, Any] = OrderedDict()
        self._by_sock: dict[zmq.Socket[Any], _Identity] = {}
        self._by_fd: dict[int, _Identity] = {}
        self._epoll: select.epoll | None = None
        self.tasks_run = 0

    # -- sockets ----------------------------------------------------------------------
    def _socket(self, zctx: zmq.Context[Any], ident: bytes) -> zmq.Socket[Any]:
        # the same options as the real worker's sockets
        s = zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        if self.conn.server_key:
            s.setsockopt(zmq.CURVE_SERVERKEY, self.conn.server_key.encode())
            s.setsockopt(zmq.CURVE_PUBLICKEY, (self.conn.client_public or "").encode())
            s.setsockopt(zmq.CURVE_SECRETKEY, (self.conn.client_secret or "").encode())
        s.connect(self.conn.address)
        return s

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
        key = self.conn.key
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "tag": self.tag,
            "python": sys.version.split()[0],
            "impexec": __version__,
            "light": True,
        }
        for _ in range(self.n):
            wid = os.urandom(16)
            idn = _Identity(wid, self._socket(zctx, wid))
            self._by_sock[idn.main] = idn
            # ZMQ_FD is readable when the socket has commands to process, not exactly
            # when a message waits: level-triggered epoll, and a socket is always read
            # to EAGAIN after a wake-up (or after sending on it), so nothing is missed
            fd = idn.main.getsockopt(zmq.FD)
            self._by_fd[fd] = idn
            epoll.register(fd, select.EPOLLIN)
            # READY goes with a zero session: the broker tells it in WELCOME
            idn.seq = 1
            ready = json.dumps({**info, "worker": wid.hex()}).encode()
            zero = b"\0" * 8
            send_frames(idn.main, encode(key, Kind.READY, zero, 1, frames=[ready]))
            self._serve(zctx, idn)  # read to EAGAIN (see above) before epoll waits
        parent = os.getppid()
        started = time.monotonic()
        last_heard = started
        next_tick = started + TICK_S
        tick = 0
        while self._by_sock:
            now = time.monotonic()
            for fd, _ in epoll.poll(max(0.0, next_tick - now)):
                idn = self._by_fd.get(fd)
                if idn is not None and self._serve(zctx, idn):
                    last_heard = time.monotonic()
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick = now + TICK_S
            welcomed = [i for i in self._by_sock.values() if i.welcomed]
            waiting = len(self._by_sock) - len(welcomed)
            if waiting and now - started > self.connect_timeout:
                sys.stderr.write(
                    f"light workers: {waiting} of {self.n} got no WELCOME from "
                    f"{self.conn.address}\n"
                )
                return EXIT_NO_BROKER
            slices = max(1, round(self.hb_interval / TICK_S))
            tick += 1
            for idn in welcomed[tick % slices :: slices]:
                if now - idn.active < self.hb_interval:
                    # like impexec-worker: tasks and results flowed on main within the
                    # interval, so both sides know the other is alive; no beat
                    last_heard = max(last_heard, idn.active)
                elif self._heartbeat(idn):
                    last_heard = now
            if not waiting and now - last_heard > self.hb_timeout:
                sys.stderr.write(
                    f"light workers: no word from the broker in {self.hb_timeout:g} s\n"
                )
                return EXIT_BROKER_GONE
            if os.getppid() != parent:
                return EXIT_BROKER_GONE  # orphaned: our parent (the benchmark) is gone
        return EXIT_OK

    def _accept(self, idn: _Identity, frames: list[Any], hb: bool) -> list[Any]:
        """Verified, fresh messages of one receive (the worker's replay guard)."""
        out = []
        try:
            for msg in decode(
                self.conn.key, frames, None if not idn.welcomed else self.session
            ):
                last = idn.hb_broker_seq if hb else idn.broker_seq
                if msg.seq <= last:
                    continue
                if hb:
                    idn.hb_broker_seq = msg.seq
                else:
                    idn.broker_seq = msg.seq
                out.append(msg)
        except ProtocolError as exc:
            sys.stderr.write(f"light workers: dropped a message: {exc}\n")
        return out

    def _serve(self, zctx: zmq.Context[Any], idn: _Identity) -> bool:
        """Handle everything waiting on one main socket; True if anything came."""
        heard = False
        while True:
            try:
                frames = recv_frames(idn.main, zmq.NOBLOCK)
            except zmq.Again:
                return heard
            heard = True
            for msg in self._accept(idn, frames, hb=False):
                kind = msg.kind
                if kind == Kind.TASK:
                    send_frames(idn.main, self._run_task(idn, msg))
                    idn.active = time.monotonic()
                elif kind == Kind.WELCOME and not idn.welcomed:
                    data = msg.json()
                    if data.get("worker") != idn.wid.hex():
                        continue
                    self.session = bytes.fromhex(data["session"])
                    self.hb_interval = float(data.get("heartbeat_interval", 1.0))
                    self.hb_timeout = float(data.get("heartbeat_timeout", 10.0))
                    self.max_contexts = int(data.get("max_contexts", 8))
                    idn.welcomed = True
                    idn.hb = self._socket(zctx, idn.wid + HB_SUFFIX)
                    self._heartbeat(idn)
                    if msg.flags & Flag.HAS_SETUP:
                        # the executor's initializer, once per identity as per process;
                        # a main-socket HEARTBEAT then tells the broker it succeeded
                        fn, args = get_serializer(msg.serializer).loads(msg.frames[1:])
                        fn(*args)
                        idn.seq += 1
                        beat = encode(
                            self.conn.key, Kind.HEARTBEAT, self.session, idn.seq
                        )
                        send_frames(idn.main, beat)
                elif kind == Kind.SHUTDOWN:
                    self._close(idn)
                    return True
                elif kind == Kind.DROP_CONTEXT:
                    idn.contexts.pop(msg.ctx_id, None)
                # HEARTBEAT (after an initializer) and DRAIN need nothing: tasks never
                # wait here; the broker sends SHUTDOWN once a draining worker is empty

    def _heartbeat(self, idn: _Identity) -> bool:
        """Read the broker's answers on the heartbeat socket; send the next beat."""
        hb = idn.hb
        if hb is None:
            return False
        heard = False
        while True:
            try:
                frames = recv_frames(hb, zmq.NOBLOCK)
            except zmq.Again:
                break
            heard = True
            for msg in self._accept(idn, frames, hb=True):
                if msg.kind == Kind.SHUTDOWN:  # declared lost: leave like a real worker
                    self._close(idn)
                    return heard
        idn.hb_seq += 1
        send_frames(hb, encode(self.conn.key, Kind.HEARTBEAT, self.session, idn.hb_seq))
        return heard

    def _close(self, idn: _Identity) -> None:
        if self._by_sock.pop(idn.main, None) is None:
            return
        fd = idn.main.getsockopt(zmq.FD)
        self._by_fd.pop(fd, None)
        if self._epoll is not None:
            self._epoll.unregister(fd)
        idn.main.close(linger=1000)
        if idn.hb is not None:
            idn.hb.close(linger=0)

    # -- tasks ------------------------------------------------------------------------
    def _load_fn(self, ser: Any, frame: Any) -> Any:
        data = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
        fn = self._fn_cache.get(data)
        if fn is None:
            fn = ser.loads([data])
            self._fn_cache[data] = fn
            if len(self._fn_cache) > FUNCTION_CACHE_SIZE:
                self._fn_cache.popitem(last=False)
        return fn

    def _run_task(self, idn: _Identity, msg: Any) -> list[Any]:
        started = time.perf_counter()
        self.tasks_run += 1
        ser = get_serializer(msg.serializer)
        first = 1 if msg.flags & Flag.HAS_SETUP else 0
        ok, value = True, None
        idn.seq += 1
        try:
            prefix: tuple[Any, ...] = ()
            if msg.ctx_id:
                entry = idn.contexts.get(msg.ctx_id)
                if entry is None:
                    if not first:
                        return encode(
                            self.conn.key,
                            Kind.RESULT,
                            self.session,
                            idn.seq,
                            task_id=msg.task_id,
                            flags=Flag.NEED_SETUP,
                            serializer=msg.serializer,
                        )
                    try:
                        setup, sargs, skw = ser.loads([msg.frames[0]])
                        entry = (True, setup(*sargs, **skw))
                    except Exception as exc:
                        entry = (
                            False,
                            ExceptionWithTraceback(exc, "(in the context's setup)\n"),
                        )
                    idn.contexts[msg.ctx_id] = entry
                    while len(idn.contexts) > self.max_contexts:
                        idn.contexts.popitem(last=False)
                if not entry[0]:
                    ok, value = False, entry[1]
                    raise _Done
                prefix = (entry[1],)
            fn = self._load_fn(ser, msg.frames[first])
            call = ser.loads(msg.frames[first + 1 :])
            if msg.flags & Flag.CHUNK and msg.flags & Flag.BARE:  # map over one input
                value = [fn(*prefix, arg) for arg in call]
            elif msg.flags & Flag.CHUNK:
                value = [fn(*prefix, *args) for args in call]
            else:
                args, kwargs = call
                value = fn(*prefix, *args, **kwargs)
        except _Done:
            pass
        except Exception as exc:
            ok, value = False, ExceptionWithTraceback(exc)
        run_us = int((time.perf_counter() - started) * 1e6)
        return encode(
            self.conn.key,
            Kind.RESULT,
            self.session,
            idn.seq,
            task_id=msg.task_id,
            flags=Flag.OK if ok else 0,
            aux=run_us,
            serializer=msg.serializer,
            frames=ser.dumps(value),
        )


class _Done(Exception):
    """The task's outcome is already decided (its context's setup failed)."""


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
    script = str(Path(__file__).resolve())
    return [
        subprocess.Popen(
            [sys.executable, script, str(connection_file), "-n", str(k)],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        for k in split(total, procs)
    ]


def reap(
    procs: list[subprocess.Popen[bytes]], timeout: float = 15.0
) -> list[int | None]:
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
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("connection_file")
    parser.add_argument(
        "-n", type=int, default=100, help="worker identities in this process"
    )
    parser.add_argument("--tag", default="")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S)
    args = parser.parse_args(argv)
    raise_fd_limit()
    conn = ConnectionInfo.read(args.connection_file)
    return LightWorkerHost(
        conn, args.n, tag=args.tag, connect_timeout=args.connect_timeout
    ).run()


if __name__ == "__main__":
    sys.exit(main())
