"""A worker's main link: the pipe its client gave it (:mod:`._pipe`), or a DEALER.

:class:`WorkerPipe` and :class:`DealerLink` offer the same four calls (``poll``,
``recv``, ``send``, ``close``), so the worker's loops do not know which one they use.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq

from ._pipe import ENV, Parser, PipeError, send_message, send_some
from ._protocol import recv_frames, send_frames

logger = logging.getLogger("impexec._worker")

_NOBLOCK = int(zmq.NOBLOCK)
_IN = select.POLLIN


def inherited() -> socket.socket | None:
    """The pipe its client gave this worker (and forget the variable), if it is there."""
    spec = os.environ.pop(ENV, "")
    if not spec:
        return None
    try:
        fd_text, ino_text = spec.split(":")
        fd = int(fd_text)
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_ino != int(ino_text):
            raise ValueError(f"fd {fd} is not the socket its client made")
        sock = socket.socket(fileno=fd)
    except (ValueError, OSError) as exc:
        logger.warning("no pipe from the client (%s): using the broker's socket", exc)
        return None
    sock.set_inheritable(False)
    return sock


class WorkerPipe:
    """A worker's end of its pipe: reads never wait, a send waits until all is sent
    (the broker always reads; a client that is gone makes it fail at once)."""

    def __init__(self, sock: socket.socket, ident: bytes):
        sock.setblocking(True)
        self.sock = sock
        self.ident = ident  # first frame of what it sends, as a ROUTER would put it
        self._parser = Parser()
        self._messages: deque[list[Any]] = deque()
        self._eof = False
        self._poll = select.poll()
        self._poll.register(sock.fileno(), _IN)

    def poll(self, timeout_ms: float = 0) -> bool:
        """True when :meth:`recv` has a message (or end of file) for the caller."""
        if self._messages or self._eof:
            return True
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if not self._poll.poll(timeout_ms):
                return False
            self._fill()
            if self._messages or self._eof:
                return True
            timeout_ms = max(0.0, (deadline - time.monotonic()) * 1000)

    def _fill(self) -> None:
        try:
            got = self._parser.read(self.sock, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except (OSError, PipeError):
            got = None
        if got is None:
            self._eof = True
        else:
            self._messages.extend(got)

    def recv(self) -> list[Any]:
        """The next message's frames; EOFError when the client is gone."""
        if not self._messages:
            while not self._eof and not self._messages:
                self.poll(1000)
            if not self._messages:
                raise EOFError("the client closed its end of the pipe")
        return self._messages.popleft()

    def send(self, frames: Sequence[Any]) -> bool:
        try:
            rest = send_message(self.sock, [self.ident, *frames])
            if rest:
                send_some(self.sock, rest)
        except OSError:  # the client is gone: the main thread reads end of file next
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def send_nowait(sock: zmq.Socket[Any], frames: Sequence[Any]) -> bool:
    """Send on a DEALER without blocking. One whose connection ZeroMQ tore down (a
    handshake refused, a peer gone) has no pipe, and a blocking send would wait for ever;
    what is not sent now is kept and sent again (main link), or replaced by the next beat."""
    try:
        send_frames(sock, frames, _NOBLOCK)
        return True
    except zmq.Again:
        return False


class DealerLink:
    """A worker's main link over its ZeroMQ DEALER, behind WorkerPipe's calls."""

    def __init__(self, sock: zmq.Socket[Any]):
        self.sock = sock
        self._items = [(sock, zmq.POLLIN)]
        self._zpoll = zmq.zmq_poll  # Socket.poll builds a Poller per call

    def poll(self, timeout_ms: float = 0) -> bool:
        return bool(self._zpoll(self._items, int(timeout_ms)))

    def recv(self) -> list[Any]:
        return recv_frames(self.sock)

    def send(self, frames: Sequence[Any]) -> bool:
        return send_nowait(self.sock, frames)

    def close(self) -> None:
        self.sock.close(linger=2000)


MainLink = WorkerPipe | DealerLink
