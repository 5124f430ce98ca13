"""A local worker's main link as a pipe from the client: no ZeroMQ I/O thread on the way.

ZeroMQ moves every message through an I/O thread on each side, woken through an eventfd:
on a small machine those four hand-overs are a third of a short task's round trip
(docs/benchmarks.md, "Where a round trip goes"). A worker that the executor starts on
its own machine (:class:`~impexec.launchers.LocalWorkers`) gets one end of a Unix
socket pair instead, and carries its main link on it; its heartbeat link stays on
ZeroMQ. The messages are the same signed, numbered messages as on the ROUTER (from the
worker, their first frame is its id, as the ROUTER would put it), so everything above the
socket is shared: :class:`._router.RouterLink` sends to a worker's pipe once it has
heard from it there.

On the wire a message is ``u32 count``, ``count`` times ``u64 length``, then the
frames. A pipe is never reset and never drops a message; its end of file means the
other process is gone (the worker then leaves at once, like at the end of its
standard input).

- :class:`Parser`: bytes in, messages out (large frames land in a buffer of their own).
- :class:`PipeSet`: the broker's ends, non-blocking; whatever the socket does not take
  at once waits in user space and goes when the broker's poll says it is writable.
- The worker's end is in :mod:`._mainlink`.
"""

from __future__ import annotations

import logging
import mmap
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("impexec._broker")

#: The worker's environment names its pipe: ``FD:INODE`` (the inode proves the fd is
#: the socket its client made, not whatever a wrapper left open under that number).
ENV = "IMPEXEC_MAIN_FD"
#: Set to 0 to keep local workers on ZeroMQ (to compare the two).
ENV_SWITCH = "IMPEXEC_LOCAL_PIPE"

_COUNT = struct.Struct("<I")
#: Frames of one message at most: more is a corrupt stream, not a message.
MAX_FRAMES = 1 << 20
#: A frame this large is received into a buffer of its own, not through the chunk.
BIG_FRAME = 1 << 16
_CHUNK = 1 << 18
#: A send to a peer that is gone fails with EPIPE, even where SIGPIPE is not ignored.
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
#: Buffers per sendmsg (the kernel's IOV_MAX is 1024).
_IOV = 512
_IN, _OUT = select.POLLIN, select.POLLOUT
_TROUBLE = select.POLLERR | select.POLLHUP | select.POLLNVAL


class PipeError(Exception):
    """The stream is corrupt: its other end is not an impexec peer (or has a bug)."""


_PREFIXES: dict[int, struct.Struct] = {}


def pack(frames: Sequence[Any]) -> tuple[list[Any], int]:
    """The buffers that carry one message (its prefix, then its frames, not copied), and
    their total size."""
    sizes = [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]
    n = len(sizes)
    st = _PREFIXES.get(n)
    if st is None:
        st = _PREFIXES.setdefault(n, struct.Struct(f"<I{n}Q"))
    return [st.pack(n, *sizes), *frames], st.size + sum(sizes)


#: Frames from this size on are received into memory mapped with its pages already in
#: place (MAP_POPULATE): faulting 100 MB in page by page as the bytes arrive cost a
#: third of a 100 MB round trip on a VM.
POPULATE_FROM = 1 << 22
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _buffer(size: int) -> Any:
    """A writable buffer of *size* bytes for a large frame."""
    if _POPULATE and size >= POPULATE_FROM:
        try:
            return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
        except OSError:  # out of address space or locked memory: the usual way
            pass
    return bytearray(size)


class Parser:
    """Reads messages off a stream socket as they arrive (see the module docstring)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._chunk = bytearray(_CHUNK)
        self._sizes: list[int] | None = None  # the current message's frame sizes
        self._frames: list[Any] = []
        self._big: Any = None  # a large frame being filled (bytearray or mmap)
        self._filled = 0

    def read(self, sock: socket.socket, flags: int = 0) -> list[list[Any]] | None:
        """Receive once (raises BlockingIOError when nothing waits); the messages now
        complete, or None at end of file."""
        big = self._big
        if big is not None:
            with memoryview(big) as view:
                n = sock.recv_into(view[self._filled :], 0, flags)
            if not n:
                return None
            self._filled += n
            if self._filled < len(big):
                return []
            self._big = None
            self._frames.append(big)
        else:
            n = sock.recv_into(self._chunk, 0, flags)
            if not n:
                return None
            with memoryview(self._chunk) as view:
                self._buf += view[:n]
        return self._parse()

    def _parse(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        buf = self._buf
        while True:
            if self._sizes is None and not self._prefix():
                break
            sizes = self._sizes
            assert sizes is not None
            while len(self._frames) < len(sizes):
                size = sizes[len(self._frames)]
                have = len(buf) - self._pos
                if have >= size:
                    with memoryview(buf) as view:
                        self._frames.append(bytes(view[self._pos : self._pos + size]))
                    self._pos += size
                elif size >= BIG_FRAME:  # the rest goes straight into its own buffer
                    big = _buffer(size)
                    big[:have] = buf[self._pos :]
                    self._big, self._filled = big, have
                    self._pos = len(buf)
                    break
                else:
                    break
            if self._big is not None or len(self._frames) < len(sizes):
                break
            out.append(self._frames)
            self._frames, self._sizes = [], None
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        return out

    def _prefix(self) -> bool:
        """Read a message's count and sizes, if they have all arrived."""
        buf, at = self._buf, self._pos
        if len(buf) - at < 4:
            return False
        (n,) = _COUNT.unpack_from(buf, at)
        if not 0 < n <= MAX_FRAMES:
            raise PipeError(f"a message of {n} frames")
        if len(buf) - at < 4 + 8 * n:
            return False
        self._sizes = list(struct.unpack_from(f"<{n}Q", buf, at + 4))
        self._pos = at + 4 + 8 * n
        return True


def send_some(sock: socket.socket, out: deque[memoryview]) -> None:
    """Send from the front of *out*; what was sent leaves it. Raises BlockingIOError."""
    while out:
        batch = [out[i] for i in range(min(len(out), _IOV))]
        _consume(out, sock.sendmsg(batch, (), _NOSIGNAL))


def _consume(out: deque[memoryview], n: int) -> None:
    while n:
        head = out[0]
        if n >= head.nbytes:
            n -= head.nbytes
            out.popleft()
        else:
            out[0] = head[n:]
            n = 0


def send_message(sock: socket.socket, frames: Sequence[Any]) -> deque[memoryview]:
    """Send one message; what the socket did not take, as views (empty: all went).
    Raises OSError (BlockingIOError: nothing went; the caller keeps :func:`views`)."""
    bufs, total = pack(frames)
    sent = sock.sendmsg(bufs, (), _NOSIGNAL) if len(bufs) <= _IOV else 0
    if sent == total:  # the usual case: one system call, no view made
        return _EMPTY
    rest = _views(bufs)
    _consume(rest, sent)
    return rest


def views(frames: Sequence[Any]) -> deque[memoryview]:
    """One message as byte views, to send later."""
    return _views(pack(frames)[0])


def _views(bufs: list[Any]) -> deque[memoryview]:
    return deque(v for v in (memoryview(b).cast("B") for b in bufs) if v.nbytes)


_EMPTY: deque[memoryview] = deque()


#: Socket buffer asked for on each end (the kernel caps it at net.core.wmem_max): a
#: large payload then crosses in fewer wake-ups.
SOCKET_BUFFER = 1 << 22


def pair() -> tuple[socket.socket, socket.socket]:
    """A pipe for a local worker: (the client's end, the worker's end)."""
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in ends:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                end.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:  # a smaller buffer is slower, not wrong
                pass
    return ends


# -- the broker's side -------------------------------------------------------------------
class BrokerPipe:
    """The broker's end of one local worker's pipe."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.ident: bytes | None = None  # the worker id it speaks for, once heard
        self.parser = Parser()
        self.out: deque[memoryview] = deque()
        self.polled = _IN  # the events it is registered for

    def send(self, frames: Sequence[Any]) -> None:
        """Send now what the socket takes; keep the rest (in order) for :meth:`flush`."""
        if self.out:
            self.out.extend(views(frames))
            return
        try:
            rest = send_message(self.sock, frames)
        except BlockingIOError:
            rest = views(frames)
        except OSError:  # the worker is gone: its end of file is read next
            return
        if rest:
            self.out = rest

    def flush(self) -> None:
        try:
            send_some(self.sock, self.out)
        except BlockingIOError:
            pass
        except OSError:
            self.out.clear()


#: handle(ident, frames): one message read from a pipe, frames after the worker's id.
FrameHandler = Callable[[bytes, list[Any]], None]


class PipeSet:
    """The broker's pipes, in the broker's poll; only the thread holding its lock uses it."""

    def __init__(self, poller: Any):
        self.poller = poller
        self._by_fd: dict[int, BrokerPipe] = {}
        self.by_ident: dict[bytes, BrokerPipe] = {}
        self.ready: dict[int, BrokerPipe] = {}  # readable by the last poll
        self.dirty: list[BrokerPipe] = []  # output kept since the last sync

    def add(self, sock: socket.socket) -> None:
        pipe = BrokerPipe(sock)
        self._by_fd[pipe.fd] = pipe
        self.poller.register(pipe.fd, _IN)

    def owns(self, fd: int) -> bool:
        return fd in self._by_fd

    def send(self, ident: bytes, frames: Sequence[Any]) -> bool:
        """Send on the pipe of worker *ident*; False if it has none."""
        pipe = self.by_ident.get(ident)
        if pipe is None:
            return False
        pipe.send(frames)
        if pipe.out:
            self.dirty.append(pipe)
        return True

    def polled(self, events: list[tuple[int, int]]) -> None:
        """Take the poll's *events* on pipes (those on other descriptors are not ours)."""
        for fd, ev in events:
            pipe = self._by_fd.get(fd)
            if pipe is None:
                continue
            if ev & _OUT:
                pipe.flush()
                if not pipe.out:
                    self.dirty.append(pipe)  # registered for POLLOUT: not any more
            if ev & (_IN | _TROUBLE):
                self.ready[fd] = pipe

    def sync(self) -> None:
        """Ask the poll for POLLOUT exactly on the pipes that keep output."""
        for pipe in self.dirty:
            want = _IN | _OUT if pipe.out else _IN
            if pipe.polled != want and pipe.fd in self._by_fd:
                self.poller.modify(pipe.fd, want)
                pipe.polled = want
        self.dirty.clear()

    def receive(self, handle: FrameHandler, limit: int) -> bool:
        """Read the pipes the poll found readable; True if one of them may have more."""
        if not self.ready:
            return False
        more = False
        for fd, pipe in list(self.ready.items()):
            for _ in range(limit):
                try:
                    messages = pipe.parser.read(pipe.sock)
                except BlockingIOError:
                    del self.ready[fd]
                    break
                except (OSError, PipeError) as exc:
                    self._drop(pipe, str(exc))
                    break
                if messages is None:
                    self._drop(pipe, "")
                    break
                for frames in messages:
                    self._deliver(pipe, frames, handle)
            else:
                more = True
        return more

    def _deliver(self, pipe: BrokerPipe, frames: list[Any], handle: FrameHandler) -> None:
        ident = frames[0]
        if pipe.ident is None:
            pipe.ident = ident
            self.by_ident[ident] = pipe
        elif ident != pipe.ident:  # one pipe, one worker: nothing else speaks on it
            logger.warning("dropped a message for worker %s on the pipe of another", ident.hex()[:12])
            return
        handle(ident, frames)

    def _drop(self, pipe: BrokerPipe, why: str) -> None:
        """The worker's end closed (it exited) or the stream broke: forget the pipe."""
        if why:
            logger.warning("closing the pipe of a local worker: %s", why)
        self.ready.pop(pipe.fd, None)
        self._by_fd.pop(pipe.fd, None)
        if pipe.ident is not None and self.by_ident.get(pipe.ident) is pipe:
            del self.by_ident[pipe.ident]
        try:
            self.poller.unregister(pipe.fd)
        except (KeyError, ValueError):
            pass
        pipe.sock.close()

    def close(self, linger: float = 0.2) -> None:
        """Send what is kept (for at most *linger* seconds), then close every pipe."""
        deadline = time.monotonic() + linger
        for pipe in list(self._by_fd.values()):
            wait = select.poll()  # (select.select cannot take a descriptor above 1023)
            wait.register(pipe.fd, _OUT)
            while pipe.out and time.monotonic() < deadline:
                pipe.flush()
                if pipe.out:
                    wait.poll(max(0.0, deadline - time.monotonic()) * 1000)
            self._drop(pipe, "")
