"""Child processes of a test: start ``impexec`` commands, read their output with a
deadline, and end them without leaving a process or an open pipe behind.

A bare ``proc.stdout.readline()`` waits for ever when the child hangs; :class:`Lines`
reads the stream in a thread, so every wait for a line has a timeout and a wait that
runs out says what it waited for and what the child printed meanwhile.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any


def impexec_argv(*args: str) -> list[str]:
    """The command line of ``python -m impexec ARGS`` with this interpreter."""
    return [sys.executable, "-m", "impexec", *args]


def start_worker(connection_file: Any, *extra: str, **popen: Any) -> subprocess.Popen[Any]:
    """``impexec worker --connect CONNECTION_FILE EXTRA...`` as a user starts it by hand."""
    return subprocess.Popen(impexec_argv("worker", "--connect", str(connection_file), *extra), **popen)


def end_process(proc: subprocess.Popen[Any], *readers: Lines, timeout: float = 10.0) -> None:
    """Kill *proc* if it still runs, reap it, and close the pipes the test held to it
    (after the *readers* of its output have seen the end of their streams)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout)
    for reader in readers:
        reader.join(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            with contextlib.suppress(BrokenPipeError):  # stdin with unread data
                stream.close()


class Lines:
    """The lines of a child's output stream, read by a thread as they come.

    Wait for them with :meth:`next` or :meth:`until`; :meth:`rest` collects the output up
    to the end of the stream. The thread ends when the stream does (the child exited or
    closed it): end the child before closing the stream.
    """

    def __init__(self, stream: IO[Any], name: str = "output"):
        self.name = name
        self.seen: list[Any] = []  # every line read so far, in order
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ended = False
        # not named impexec*: the leak check does not count the test's own helpers
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=f"test-{name}", daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[Any]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):
            pass  # the test closed the stream under the thread: its end all the same
        finally:
            self._queue.put(None)

    @property
    def ended(self) -> bool:
        """Whether a read has met the end of the stream."""
        return self._ended

    def _get(self, timeout: float) -> Any:
        """The next line, or None at the end of the stream; raises queue.Empty."""
        if self._ended:
            return None
        line = self._queue.get(timeout=timeout)
        if line is None:
            self._ended = True
        else:
            self.seen.append(line)
        return line

    def next(self, timeout: float) -> Any:
        """The next line (with its newline); AssertionError if none comes in time."""
        try:
            line = self._get(timeout)
        except queue.Empty:
            raise AssertionError(
                f"no line on the {self.name} within {timeout:g} s; it printed {self.seen}"
            ) from None
        if line is None:
            raise AssertionError(f"the {self.name} ended; it printed {self.seen}")
        return line

    def _read(self, timeout: float) -> Iterator[Any]:
        """The lines as they come, up to the end of the stream; queue.Empty at the deadline."""
        deadline = time.monotonic() + timeout
        while (line := self._get(max(deadline - time.monotonic(), 0))) is not None:
            yield line

    def until(self, text: Any, timeout: float) -> list[Any]:
        """Read up to the first line that holds *text*; return the lines read by this call.

        AssertionError if the stream ends or *timeout* seconds pass first.
        """
        got: list[Any] = []
        with contextlib.suppress(queue.Empty):
            for line in self._read(timeout):
                got.append(line)
                if text in line:
                    return got
        raise AssertionError(f"no {text!r} in the {self.name} within {timeout:g} s: {self.seen}")

    def rest(self, timeout: float) -> list[Any]:
        """The lines up to the end of the stream; AssertionError if it does not end in time."""
        try:
            got = list(self._read(timeout))
        except queue.Empty:
            raise AssertionError(
                f"the {self.name} did not end within {timeout:g} s; it printed {self.seen}"
            ) from None
        self._thread.join(timeout)
        return got

    def join(self, timeout: float) -> None:
        """Wait for the reading thread (the stream has ended or will)."""
        self._thread.join(timeout)
