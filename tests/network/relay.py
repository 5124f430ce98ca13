"""A fault-injecting TCP relay on loopback, driven by the test that owns it.

::

    worker ──TCP──▶ Relay 127.0.0.1:<port> ──TCP──▶ target (the broker)
                    one thread: select() over every link, a timer for delays and faults

Every accepted connection (a *link*) gets its own connection to the target; bytes are
copied both ways. Faults model what real networks do to a TCP connection:

* :meth:`Relay.reset`: a firewall, NAT or tunnel restart: every current connection is
  aborted with RST (SO_LINGER 0, so bytes still in buffers are lost, like bytes in flight),
  and for ``duration`` seconds new connections are accepted and reset at once.
* :meth:`Relay.blackhole`: a dead path: nothing is read or written either way, so bytes
  stay in the senders' buffers (TCP sees no loss, only no progress) and new connections
  hang unanswered. Dropping bytes out of the middle of a stream would be no real network:
  TCP never delivers a stream with a hole, and ZMTP framing would break. At the end,
  ``then="reset"`` (default) aborts the connections (the middlebox lost their state, or TCP
  gave up), ``then="resume"`` lets them continue (TCP retransmission recovered them).
* :meth:`Relay.half_open`: the same stall in one direction only, while the other keeps
  flowing; neither end is told.
* :meth:`Relay.delay`: added one-way latency per direction (order kept).

Directions are named from the relay's client side: ``UP`` is client → target (worker to
broker), ``DOWN`` target → client. :meth:`Relay.close` aborts every link and joins the
thread; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

UP = "up"  # client → target
DOWN = "down"  # target → client
BOTH = (UP, DOWN)
#: Bytes read per recv() call.
CHUNK = 65536
#: Bytes a direction may hold (delayed) before the relay stops reading its source: the
#: sender then feels back-pressure, as it would from a slow network.
MAX_BUFFERED = 4 << 20
#: Seconds to connect to the target (loopback: instant, or refused at once).
CONNECT_TIMEOUT = 2.0
#: Seconds a control call waits for the relay thread to apply it.
CALL_TIMEOUT = 10.0
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops buffers


def _abort(sock: socket.socket | None) -> None:
    """Close with RST: the peer gets ECONNRESET; unsent and unread bytes are lost."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(frozen=True)
class RelayStats:
    """Counts since the relay started (``bytes_up``: client → target)."""

    accepted: int  # connections accepted from clients
    forwarded: int  # ... of which were connected to the target
    refused: int  # ... reset at once (during a reset's refusal window, or target down)
    aborted: int  # established links reset by a fault
    closed: int  # links that ended by themselves (EOF or an error from one end)
    open: int  # links alive now
    bytes_up: int
    bytes_down: int


class _Direction:
    """One way of one link: read from ``src``, queue with a due time, write to ``dst``."""

    __slots__ = ("blocked", "buffered", "eof", "name", "queue", "shut")

    def __init__(self, name: str):
        self.name = name
        self.queue: deque[tuple[float, memoryview]] = deque()  # (due time, bytes)
        self.buffered = 0
        self.eof = False  # the source closed its side (FIN)
        self.shut = False  # we passed the FIN on (shutdown(SHUT_WR) of the destination)
        self.blocked = False  # the destination's send buffer is full: wait for writable


class _Link:
    """An accepted client connection and its connection to the target."""

    __slots__ = ("client", "dirs", "id", "target")

    def __init__(self, link_id: int, client: socket.socket):
        self.id = link_id
        self.client = client
        self.target: socket.socket | None = None  # connected once no fault stalls it
        self.dirs = {UP: _Direction(UP), DOWN: _Direction(DOWN)}

    def ends(self, direction: str) -> tuple[socket.socket, socket.socket]:
        assert self.target is not None
        return (self.client, self.target) if direction == UP else (self.target, self.client)


class Relay:
    """Forward connections from ``127.0.0.1:<free port>`` to ``target``; inject faults.

    Args:
        target: (host, port) every accepted connection is forwarded to.
        name: for the thread's name and reprs.

    Control methods may be called from any thread; each returns once the relay thread
    applied it (e.g. after :meth:`reset` returns, the old connections are gone).
    """

    def __init__(self, target: tuple[str, int], *, name: str = "relay"):
        self.target = target
        self.name = name
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._calls: deque[Callable[[], None]] = deque()
        self._links: dict[int, _Link] = {}
        self._ids = 0
        self._refuse_until = 0.0
        # per direction: (until, then) while that direction is stalled; until may be inf
        self._stall: dict[str, tuple[float, str]] = {}
        self._delay = {UP: 0.0, DOWN: 0.0}
        self._counts = dict.fromkeys(
            ("accepted", "forwarded", "refused", "aborted", "closed", "bytes_up", "bytes_down"), 0
        )
        self._changed = threading.Condition()
        self._closing = False
        self._crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-{self.port}", daemon=True)
        self._thread.start()

    # -- what tests call -----------------------------------------------------------------
    @property
    def address(self) -> str:
        """``tcp://127.0.0.1:<port>``: what clients dial instead of the target."""
        return f"tcp://{self.host}:{self.port}"

    def reset(self, duration: float = 0.5) -> int:
        """Abort every link with RST; reset new connections for ``duration`` seconds.

        Returns:
            The number of links aborted.
        """

        def apply() -> int:
            self._refuse_until = max(self._refuse_until, time.monotonic() + duration)
            return self._abort_all()

        return self._call(apply)  # type: ignore[no-any-return]

    def blackhole(self, duration: float, *, then: str = "reset") -> None:
        """Stall both directions of every link (and new ones) for ``duration`` seconds.

        Args:
            duration: seconds; ``math.inf`` until :meth:`heal`.
            then: ``"reset"`` aborts the stalled links at the end, ``"resume"`` lets
                their bytes flow again.
        """
        self._set_stall(BOTH, duration, then)

    def half_open(self, direction: str, duration: float = math.inf, *, then: str = "reset") -> None:
        """Stall one direction (``UP`` or ``DOWN``) only; the other keeps flowing."""
        if direction not in BOTH:
            raise ValueError(f"direction must be {UP!r} or {DOWN!r}, not {direction!r}")
        self._set_stall((direction,), duration, then)

    def delay(self, seconds: float, direction: str | None = None) -> None:
        """Hold every byte ``seconds`` before passing it on (one direction, or both)."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")

        def apply() -> None:
            for d in (direction,) if direction else BOTH:
                self._delay[d] = seconds

        self._call(apply)

    def heal(self) -> None:
        """End every fault now: stalls end as their ``then`` says; refusal and delay end."""

        def apply() -> None:
            self._refuse_until = 0.0
            self._delay = {UP: 0.0, DOWN: 0.0}
            self._end_stalls(math.inf)

        self._call(apply)

    def stats(self) -> RelayStats:
        def snapshot() -> RelayStats:
            return RelayStats(open=len(self._links), **self._counts)

        return self._call(snapshot)  # type: ignore[no-any-return]

    def wait_links(self, n: int, timeout: float) -> bool:
        """Wait until at least ``n`` links are connected to the target; False on timeout."""

        def ready() -> bool:
            return sum(link.target is not None for link in list(self._links.values())) >= n

        with self._changed:
            return self._changed.wait_for(ready, timeout)

    def close(self) -> None:
        """Abort every link, close every socket and join the thread (idempotent).

        Raises:
            RuntimeError: the relay thread had died (a test must not pass on a dead relay)
                or did not stop.
        """
        if self._thread.is_alive():
            self._closing = True
            self._poke()
            self._thread.join(CALL_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError(f"{self!r}: the relay thread did not stop")
        self._close_sockets()
        if self._crash is not None:
            raise RuntimeError(f"{self!r}: the relay thread died") from self._crash

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Relay {self.name} {self.address} -> {self.target[0]}:{self.target[1]}>"

    # -- calls into the relay thread -----------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._crash is not None:
            raise RuntimeError(f"{self!r}: the relay thread died") from self._crash
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller below
                box.append((False, exc))
            done.set()

        self._calls.append(run)
        self._poke()
        if not done.wait(CALL_TIMEOUT):
            raise RuntimeError(f"{self!r}: the relay thread did not answer within {CALL_TIMEOUT} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"\0")

    def _set_stall(self, directions: Iterable[str], duration: float, then: str) -> None:
        if then not in ("reset", "resume"):
            raise ValueError(f"then must be 'reset' or 'resume', not {then!r}")
        if duration < 0:
            raise ValueError("a duration cannot be negative")

        def apply() -> None:
            until = time.monotonic() + duration
            for d in directions:
                self._stall[d] = (until, then)

        self._call(apply)

    # -- the relay thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closing:
                self._step()
        except BaseException as exc:  # reported by the next control call
            self._crash = exc
        finally:
            self._abort_all()
            with self._changed:
                self._changed.notify_all()

    def _step(self) -> None:
        while self._calls:
            self._calls.popleft()()
        now = time.monotonic()
        self._end_stalls(now)
        self._connect_waiting()
        # poll, not select: the test process may hold more than FD_SETSIZE descriptors
        poller = select.poll()
        masks: dict[int, int] = {}
        handlers: dict[int, list[tuple[int, Callable[[], None]]]] = {}

        def want(sock: socket.socket, mask: int, handler: Callable[[], None]) -> None:
            fd = sock.fileno()
            masks[fd] = masks.get(fd, 0) | mask
            handlers.setdefault(fd, []).append((mask, handler))

        want(self._listener, select.POLLIN, self._accept)
        want(self._wake_r, select.POLLIN, self._drain_wakeups)
        wake_at = math.inf
        for link in list(self._links.values()):
            if link.target is None:
                continue
            for d in link.dirs.values():
                if d.name in self._stall:
                    continue
                if not self._flush(link, d, now):
                    break  # the link is gone
                src, dst = link.ends(d.name)
                if d.blocked:
                    want(dst, select.POLLOUT, functools.partial(self._writable, link, d))
                elif d.queue:
                    wake_at = min(wake_at, d.queue[0][0])
                if not d.eof and d.buffered < MAX_BUFFERED:
                    want(src, select.POLLIN, functools.partial(self._read, link, d))
        wake_at = min([wake_at, *(until for until, _ in self._stall.values())])
        if self._refuse_until > now:
            wake_at = min(wake_at, self._refuse_until)
        for fd, mask in masks.items():
            poller.register(fd, mask)
        timeout_ms = None if wake_at == math.inf else max(0.0, wake_at - time.monotonic()) * 1000
        for fd, events in poller.poll(timeout_ms):
            for mask, handler in handlers[fd]:
                if events & (mask | select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    handler()

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _writable(self, link: _Link, d: _Direction) -> None:
        d.blocked = False
        self._flush(link, d, time.monotonic())

    def _accept(self) -> None:
        now = time.monotonic()
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving the others
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            self._counts["accepted"] += 1
            if now < self._refuse_until:
                self._counts["refused"] += 1
                _abort(client)
                continue
            client.setblocking(False)
            self._ids += 1
            self._links[self._ids] = _Link(self._ids, client)
            # connected to the target by _connect_waiting, unless a stall holds it back

    def _connect_waiting(self) -> None:
        if UP in self._stall and DOWN in self._stall:
            return  # a black hole: the connection attempt goes nowhere (yet)
        changed = False
        for link in list(self._links.values()):
            if link.target is not None:
                continue
            try:
                target = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:  # the target is down: the client sees a reset
                self._drop(link, abort=True)
                continue
            target.setblocking(False)
            target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.target = target
            self._counts["forwarded"] += 1
            changed = True
        if changed:
            with self._changed:
                self._changed.notify_all()

    def _read(self, link: _Link, d: _Direction) -> None:
        if link.id not in self._links or d.name in self._stall:
            return
        now = time.monotonic()
        src, _ = link.ends(d.name)
        try:
            data = src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by that end: pass the reset on
            self._drop(link, abort=True)
            return
        if not data:
            d.eof = True
        else:
            self._counts["bytes_" + d.name] += len(data)
            d.queue.append((now + self._delay[d.name], memoryview(data)))
            d.buffered += len(data)
        self._flush(link, d, now)

    def _flush(self, link: _Link, d: _Direction, now: float) -> bool:
        """Write what is due; pass a FIN on once drained. False if the link is gone."""
        if link.id not in self._links:
            return False
        _, dst = link.ends(d.name)
        while d.queue and d.queue[0][0] <= now and not d.blocked:
            due, data = d.queue[0]
            try:
                sent = dst.send(data)
            except (BlockingIOError, InterruptedError):
                d.blocked = True
                break
            except OSError:  # the destination reset or vanished
                self._drop(link, abort=True)
                return False
            d.buffered -= sent
            if sent < len(data):
                d.queue[0] = (due, data[sent:])
                d.blocked = True
            else:
                d.queue.popleft()
        if d.eof and not d.queue and not d.shut:
            d.shut = True
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        if all(x.shut for x in link.dirs.values()):
            self._drop(link, abort=False)
            return False
        return True

    def _end_stalls(self, now: float) -> None:
        ended = {d: then for d, (until, then) in self._stall.items() if until <= now}
        if not ended:
            return
        for d in ended:
            del self._stall[d]
        if "reset" in ended.values():
            self._abort_all()

    def _abort_all(self) -> int:
        n = 0
        for link in list(self._links.values()):
            if link.target is not None:
                n += 1
            self._drop(link, abort=True)
        return n

    def _drop(self, link: _Link, *, abort: bool) -> None:
        if self._links.pop(link.id, None) is None:
            return
        if abort:
            self._counts["aborted" if link.target is not None else "refused"] += 1
            _abort(link.client)
            _abort(link.target)
        else:
            self._counts["closed"] += 1
            link.client.close()
            if link.target is not None:
                link.target.close()
        with self._changed:
            self._changed.notify_all()

    def _close_sockets(self) -> None:
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
