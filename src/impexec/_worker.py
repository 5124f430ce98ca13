"""The worker process: connect, run tasks in order, answer, and leave when told or orphaned.

::

    main thread  DEALER (id = worker id)     READY → WELCOME → [initializer] → TASK… → RESULT…
    heartbeat    DEALER (id = worker id + h) HEARTBEAT ⇄ HEARTBEAT every interval; RECALL;
    thread                                   resends what the broker has not acknowledged;
                                             exits the process when the broker is silent

Tasks run in the main thread, in the order the broker numbered them (it relies on it: the
first task it sent and has no answer for is the one running); messages that arrive past
a gap wait for the missing one (:class:`._peers.InOrder`). Every message on the main link
is kept until the broker acknowledges it, and sent again if it was lost (:mod:`._peers`).
The heartbeat thread has a socket of its own, so a task that runs for hours still proves
the process alive, queued tasks can be given back while it runs, and the hot path has no
thread hop. The two threads share the main link's numbering and the task queue under
``Worker._lock``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, NoReturn

import zmq

from ._connection import ConnectionInfo, remove_orphaned_private_dir
from ._errors import ProtocolError
from ._heartbeat import Heartbeat
from ._mainlink import DealerLink, MainLink, WorkerPipe, inherited
from ._peers import Channel, InOrder, LinkBroken
from ._protocol import Flag, Kind, Message, decode, encode, worker_keys
from ._running import TaskRunner, _SetupCache
from ._scheduler import MAX_BLOBS
from ._security import DropLog
from ._serialize import get_serializer
from ._version import __version__

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NO_BROKER = 3  # no WELCOME within the connect timeout
EXIT_INIT_FAILED = 4  # the executor's initializer raised
EXIT_BROKER_GONE = 5  # the broker stopped answering heartbeats
EXIT_DISMISSED = 6  # the broker said SHUTDOWN without our asking to leave (e.g. we were
#                     declared lost): a launcher replaces such a worker
#: Seconds a new worker waits for the broker's WELCOME before giving up.
CONNECT_TIMEOUT = 60.0
#: Seconds between READY messages while no WELCOME has come (a reset link drops them).
READY_RESEND_S = 1.0

#: Microseconds a worker whose queue ran dry keeps polling (yielding the CPU between
#: polls) before it blocks: a task that arrives meanwhile is taken without the wake-up
#: of a sleeping process, a third of a short task's round trip on a VM (docs/benchmarks.md).
SPIN_US = 300


def say(text: str) -> None:
    """Write to stderr if it can still be written: its reader may have died with the
    client (a broken pipe), and no way out of a worker may depend on a write."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def exit_now(code: int, text: str = "", connection_file: str | None = None) -> NoReturn:
    """End the process at once, whatever the other threads do: say why (if stderr still
    takes it) and, when the broker is gone, remove its leftovers on this machine."""
    try:
        if text:
            say(text)
        if connection_file is not None:
            remove_orphaned_private_dir(connection_file)
    finally:
        os._exit(code)


def _spin_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("IMPEXEC_WORKER_SPIN_US", SPIN_US))) / 1e6
    except ValueError:
        return SPIN_US / 1e6


class Worker(TaskRunner):
    """One worker process's state and loops (see the module docstring)."""

    def __init__(
        self,
        conn: ConnectionInfo,
        *,
        tag: str = "",
        runtime: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        connection_file: str | None = None,
    ):
        self.conn = conn
        # the file the connection came from: when the broker vanishes, the executor on
        # this machine was killed and this worker removes its private directory
        self.connection_file = connection_file
        self.tag = tag
        self.runtime = runtime
        self.connect_timeout = connect_timeout
        self.wid = os.urandom(16)
        # On a Unix socket the kernel vouches for the bytes of each connection: large
        # payloads then enter the MAC by length only (Flag.LOCAL; docs/security.md)
        self._local = conn.address.startswith("ipc://")
        # signing and verifying keys bound to this worker and the direction
        self._tx_key, self._rx_key = worker_keys(conn.key, self.wid)
        self._chan = Channel()  # the main link: numbers, acknowledgements, resends
        self._inorder = InOrder(self._chan)
        self._lock = threading.Lock()  # the main link's channel and the task queue
        self._idle = False  # the main thread waits for work with nothing queued or unread
        self._session = b"\0" * 8
        self._hb_floor = 0
        self._fn_cache: OrderedDict[bytes, Any] = OrderedDict()
        self._setups = _SetupCache(8)
        self._blobs = _SetupCache(MAX_BLOBS)  # large repeated payloads, by SHA-256 digest
        self._queue: deque[Message] = deque()  # tasks (and DROP_CONTEXTs) in order
        self._control: deque[Message] = deque()  # SHUTDOWN, DRAIN: for the main thread
        self._sock_lock = threading.Lock()  # the main socket: its user, main or heartbeat
        self._main_sock: MainLink | None = None  # a pipe from the client, or a DEALER
        self._leaving = False
        self._stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._drop_log = DropLog(logger, "a message")  # main thread only
        self._max_frame = 0  # the broker's MAXMSGSIZE (from WELCOME); 0: no limit
        self._dismissed = False  # set by the heartbeat thread on SHUTDOWN
        # monotonic times of the main socket's last verified receive and last send: while
        # both are recent the broker and we each know the other is alive, and the
        # heartbeat thread skips its beat (1,000 busy workers: no heartbeat traffic)
        self._main_rx = 0.0
        self._main_tx = 0.0
        self.hb_interval = 1.0
        self.hb_timeout = 10.0

    # -- sockets -----------------------------------------------------------------------
    def _socket(self, zctx: zmq.Context[Any], ident: bytes) -> zmq.Socket[Any]:
        s: zmq.Socket[Any] = zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        if self.conn.server_key:
            s.setsockopt(zmq.CURVE_SERVERKEY, self.conn.server_key.encode())
            s.setsockopt(zmq.CURVE_PUBLICKEY, (self.conn.client_public or "").encode())
            s.setsockopt(zmq.CURVE_SECRETKEY, (self.conn.client_secret or "").encode())
        s.connect(self.conn.address)
        return s

    def _encode(self, kind: Kind, **kw: Any) -> list[Any]:
        """A main-link message, numbered and kept until the broker acknowledges it."""
        with self._lock:
            chan = self._chan
            seq = chan.stamp()
            frames = encode(self._tx_key, kind, self._session, seq, ack=chan.upto, local=self._local, **kw)
            chan.keep(seq, frames, time.monotonic())
        return frames

    def _accept(self, frames: list[Any]) -> list[Message]:
        """Verified main-link messages, in the broker's order; the rest is dropped and logged."""
        out: list[Message] = []
        try:
            for msg in decode(self._rx_key, frames, self._session, self._local):
                with self._lock:
                    self._chan.on_ack(msg.ack)
                    out += self._inorder.push(msg.seq, msg)
        except (ProtocolError, LinkBroken) as exc:
            self._drop_log("the broker's socket", str(exc))  # rate-limited: floods stay cheap
        if out:
            self._main_rx = time.monotonic()
        return out

    def _take(self, frames: list[Any]) -> None:
        """Verify one receive and file its messages, in order, under one lock (the hot
        path: a task arrives): tasks (and DROP_CONTEXTs) to the queue, the rest to control."""
        try:
            msgs = list(decode(self._rx_key, frames, self._session, self._local))
        except ProtocolError as exc:
            self._drop_log("the broker's socket", str(exc))  # rate-limited: floods stay cheap
            return
        chan, inorder, queue = self._chan, self._inorder, self._queue
        try:
            with self._lock:
                for msg in msgs:
                    chan.on_ack(msg.ack)
                    for m in inorder.push(msg.seq, msg):
                        if m.kind == Kind.TASK or m.kind == Kind.DROP_CONTEXT:
                            queue.append(m)
                        else:
                            self._control.append(m)
        except LinkBroken as exc:
            self._drop_log("the broker's socket", str(exc))
        self._main_rx = time.monotonic()

    # -- main ----------------------------------------------------------------------------
    def run(self) -> int:
        zctx = zmq.Context()
        pipe = inherited()  # a local worker's main link: a pipe from its client (_pipe)
        link: MainLink
        link = WorkerPipe(pipe, self.wid) if pipe is not None else DealerLink(self._socket(zctx, self.wid))
        self._main_sock = link
        try:
            return self._run(zctx, link)
        except EOFError:  # the client closed its end of the pipe: as at the end of stdin,
            # leave at once and remove what a killed client left on this machine
            text = "impexec worker: the client's pipe closed: exiting\n"
            exit_now(EXIT_BROKER_GONE, text, self.connection_file)
        finally:
            self._stop.set()
            if self._hb_thread is not None:
                self._hb_thread.join(2.0)
            link.close()
            zctx.term()

    def _run(self, zctx: zmq.Context[Any], sock: MainLink) -> int:
        info = {
            "worker": self.wid.hex(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "tag": self.tag,
            "python": sys.version.split()[0],
            "impexec": __version__,
            "local": self._local,
        }
        ready = self._encode(Kind.READY, frames=[json.dumps(info).encode()])
        welcome = self._wait_welcome(sock, ready)
        if welcome is None:
            say(
                f"impexec worker: no answer from the broker at {self.conn.address} "
                f"within {self.connect_timeout:g} s (wrong address or key?)\n"
            )
            return EXIT_NO_BROKER
        self._hb_thread = threading.Thread(
            target=self._heartbeat, args=(zctx,), name="impexec-heartbeat", daemon=True
        )
        self._hb_thread.start()
        if welcome.flags & Flag.HAS_SETUP:
            text = self._initialize(welcome)
            if text is not None:
                say(f"impexec worker: the initializer raised:\n{text}")
                sock.send(self._encode(Kind.START_FAILED, frames=[json.dumps({"error": text}).encode()]))
                return EXIT_INIT_FAILED
            # STARTED says "initialized": only now does the broker
            # count this worker as started (else a failing initializer looks like a worker
            # that connected and died, and launchers restart it forever)
            sock.send(self._encode(Kind.STARTED))
        return self._serve(sock)

    def _wait_welcome(self, sock: MainLink, ready: list[Any]) -> Message | None:
        sock.send(ready)
        deadline = time.monotonic() + self.connect_timeout
        again = time.monotonic() + READY_RESEND_S
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(min(left, max(0.0, again - time.monotonic())) * 1000)):
                if time.monotonic() >= again:  # lost on a reset link? the broker takes it once
                    sock.send(ready)
                    again = time.monotonic() + READY_RESEND_S
                continue
            welcome = self._welcome_in(sock.recv())
            if welcome is not None:
                return welcome
        return None

    def _welcome_in(self, frames: list[Any]) -> Message | None:
        """Our WELCOME among the messages of one receive, its settings taken; else None."""
        try:
            msgs = list(decode(self._rx_key, frames, None, self._local))
        except ProtocolError as exc:
            self._drop_log("the broker's socket", f"{exc} (while connecting)")
            return None
        for msg in msgs:
            if msg.kind != Kind.WELCOME:
                continue
            try:
                data = msg.json()
            except ProtocolError as exc:
                self._drop_log("the broker's socket", str(exc))
                continue
            if data.get("worker") != self.wid.hex():
                self._drop_log("the broker's socket", "a WELCOME meant for another worker (replay?)")
                continue
            self._session = bytes.fromhex(data["session"])
            with self._lock:
                self._chan.on_ack(msg.ack)
                self._inorder.push(msg.seq, msg)
            self.hb_interval = float(data.get("heartbeat_interval", 1.0))
            self.hb_timeout = float(data.get("heartbeat_timeout", 10.0))
            self._setups = _SetupCache(int(data.get("max_contexts", 8)))
            self._max_frame = int(data.get("max_message_size", 0))
            self._hb_floor = int(data.get("hb_floor", 0))
            return msg
        return None

    @staticmethod
    def _initialize(welcome: Message) -> str | None:
        """Run the executor's initializer that came with WELCOME; its traceback if it raised."""
        try:
            fn, args = get_serializer(welcome.serializer).loads(welcome.frames[1:])
            fn(*args)
        except BaseException as exc:
            return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return None

    def _serve(self, sock: MainLink) -> int:
        deadline = time.monotonic() + self.runtime if self.runtime else None
        queue, control, sock_lock = self._queue, self._control, self._sock_lock
        poll, recv = sock.poll, sock.recv
        spin_until = 0.0
        spin_s = _spin_seconds()
        sched_yield = getattr(os, "sched_yield", lambda: None)
        while True:
            with sock_lock:  # the heartbeat thread reads the socket only while a task runs
                if deadline is not None and not self._leaving and time.monotonic() >= deadline:
                    self._leaving = True
                    logger.info("runtime spent: finishing held tasks, then leaving")
                    bye = json.dumps({"reason": "runtime"}).encode()
                    sock.send(self._encode(Kind.GOODBYE, frames=[bye]))
                # take everything that has arrived; block only when there is nothing to do
                timeout = 0 if queue else 200
                if not queue and spin_until:
                    while not poll(0) and time.perf_counter() < spin_until:
                        sched_yield()
                    spin_until = 0.0
                # the heartbeat thread tells the broker when we wait with nothing to do:
                # what it sent a while ago and we never got was lost, and it sends it again
                self._idle = not queue and not control
                open_ = self._take_all(poll, recv, timeout)
                self._idle = False
            code = self._obey_control()  # a SHUTDOWN just before the pipe closed: obeyed
            if code is not None:
                return code
            if not open_:
                raise EOFError("the client closed its end of the pipe")
            if self._dismissed:
                return EXIT_DISMISSED
            with self._lock:  # the heartbeat thread may give queued tasks back
                if not queue:
                    continue
                msg = queue.popleft()
            if msg.kind == Kind.DROP_CONTEXT:
                self._setups.drop(msg.ctx_id)
                continue
            # each result leaves at once: held back, it would be lost with the process if
            # the next task crashes it, and the broker would blame the wrong task
            frames = self._run_task(msg)
            with sock_lock:
                sock.send(frames)
            self._main_tx = time.monotonic()
            if spin_s:
                spin_until = time.perf_counter() + spin_s

    def _take_all(self, poll: Callable[[float], bool], recv: Callable[[], list[Any]], timeout: float) -> bool:
        """File what has arrived, waiting up to *timeout* ms for the first message; False
        when the client has closed its pipe (what it sent before is filed)."""
        while poll(timeout):
            self._idle = False
            try:
                self._take(recv())
            except EOFError:
                return False
            timeout = 0
        return True

    def _obey_control(self) -> int | None:
        """Act on SHUTDOWN and DRAIN; an exit status when it is time to leave."""
        control = self._control
        while control:
            msg = control.popleft()
            if msg.kind == Kind.SHUTDOWN:
                return EXIT_OK if self._leaving or msg.aux == 1 else EXIT_DISMISSED
            if msg.kind == Kind.DRAIN:
                self._leaving = True
            elif msg.kind != Kind.HEARTBEAT:
                logger.warning("ignored unexpected %s", msg.kind.name)
        return None

    def _read_main_socket(self) -> None:
        """Heartbeat thread, while the main thread runs a task: file what has arrived on
        the main socket, so that a RECALL can give back tasks the main thread has not read.

        Only when the main thread does not use the socket (a lock hands it over; ZeroMQ
        sockets may change threads across a full memory barrier); else it is between
        tasks and reads the socket itself.
        """
        sock = self._main_sock
        if sock is None or not self._sock_lock.acquire(timeout=0.05):
            return
        try:
            while sock.poll(0):
                self._take(sock.recv())
        except EOFError:
            pass  # the client is gone: the main thread reads it too, between tasks
        finally:
            self._sock_lock.release()

    # -- running a task ------------------------------------------------------------------
    def _release(self, n: int) -> list[list[Any]]:
        """Heartbeat thread: give back up to *n* queued tasks, newest first (not started).

        Returns the RELEASED answers to send. The main thread may be running a task: that
        is the point, queued work should not wait behind it while another worker idles.
        """
        queue = self._queue
        taken: list[Message] = []
        with self._lock:
            keep: list[Message] = []
            while queue and len(taken) < n:
                msg = queue.pop()
                if msg.kind == Kind.TASK:
                    taken.append(msg)
                else:
                    keep.append(msg)  # a DROP_CONTEXT stays in its place
            queue.extend(reversed(keep))
        return [
            self._encode(Kind.RESULT, task_id=m.task_id, flags=Flag.RELEASED, serializer=m.serializer)
            for m in taken
        ]

    # -- heartbeat thread ----------------------------------------------------------------
    def _heartbeat(self, zctx: zmq.Context[Any]) -> None:
        Heartbeat(self, zctx).run()


def main(
    conn: ConnectionInfo, *, tag: str = "", runtime: float | None = None, connection_file: str | None = None
) -> int:
    """Run one worker until it is told to leave; returns the process exit code."""
    return Worker(conn, tag=tag, runtime=runtime, connection_file=connection_file).run()
