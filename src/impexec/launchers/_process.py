"""Starting a worker process: the one place that builds its command line and runs it.

LocalWorkers, SSHWorkers (through ``ssh``) and ``impexec-worker --processes N`` start
their workers with :class:`WorkerProcess`; those and the job-array launchers build the
command with :func:`worker_argv`. A process runs in a session of its own (Ctrl-C in the
terminal reaches the client only). Its stdin is a pipe that stays open (the connection
may travel down it first) and the worker runs with ``--exit-with-stdin``: closing our
end, or this process dying in any way (even ``SIGKILL``), ends it at once. Its stderr
is read by a thread: the tail is kept for start-failure reports and each line can be
echoed to this process's stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import IO

logger = logging.getLogger(__name__)

#: Lines of a worker's stderr kept for start-failure reports.
STDERR_LINES = 60


def worker_argv(
    python: Sequence[str],
    connect: str,
    tag: str | None = None,
    *,
    exit_with_stdin: bool = False,
    options: Sequence[str] = (),
) -> list[str]:
    """``PYTHON -m impexec worker --connect CONNECT [--exit-with-stdin] [OPTIONS] [--tag TAG]``.

    *connect* is a connection file, or ``-`` for the connection JSON on stdin (which
    keeps the key out of ``ps``). Without *tag* the caller appends its own (a job script
    builds it from the scheduler's variables).
    """
    argv = [*python, "-m", "impexec", "worker", "--connect", connect]
    if exit_with_stdin:
        argv.append("--exit-with-stdin")
    argv += options
    if tag is not None:
        argv += ["--tag", tag]
    return argv


class WorkerProcess:
    """One started worker process (or the ``ssh`` session that runs one).

    Raises OSError when the command cannot be run (nothing is left running then). A
    process that exits before it has read *stdin* is no error: it is a process that
    exited (``poll`` says how; its stderr is read as usual).

    Args:
        argv: the command.
        env: its whole environment (default: this process's).
        stdin: bytes written to its stdin (``b""``: nothing), which then stays open;
            None: no stdin.
        stdout: where its stdout goes (default: this process's stdout).
        capture_stderr: read its stderr (tail kept, lines echoed with *echo*); False:
            it writes to this process's stderr directly.
        echo: copy each line of its stderr to this process's stderr.
        name: the reader thread's name.
        pass_fds: file descriptors the process inherits (a local worker's pipe).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        stdout: int | None = None,
        capture_stderr: bool = True,
        echo: bool = False,
        name: str = "impexec-stderr",
        pass_fds: Sequence[int] = (),
    ):
        self.argv = list(argv)
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self.echo = echo
        self._reader: threading.Thread | None = None
        self.proc = subprocess.Popen(
            self.argv,
            env=None if env is None else dict(env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE if capture_stderr else None,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        if stdin is not None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(stdin)
                self.proc.stdin.flush()  # stays open: closing it ends the worker
            except OSError as exc:
                # it is gone (or closed its stdin) before taking its connection: killed
                # right after its start, or an interpreter that failed at once. That is a
                # process that exited, for the caller's usual path (its exit status and
                # stderr reported, replaced after a backoff), not an error of the caller
                logger.debug("worker process %d did not take its connection: %s", self.proc.pid, exc)
                if self.proc.poll() is None:
                    self.kill()
                self.close_stdin()
        if capture_stderr:
            self._reader = threading.Thread(
                target=self._read, args=(self.proc.stderr,), name=name, daemon=True
            )
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        """The tail of its stderr."""
        return "".join(self.stderr)

    def _read(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with stream:
            for raw in stream:
                line = raw.decode(errors="replace")
                self.stderr.append(line)
                if self.echo:
                    try:
                        sys.stderr.write(line)
                    except (ValueError, OSError):  # stderr closed at interpreter exit
                        pass

    def join_reader(self, timeout: float = 2.0) -> None:
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal its process group (what it started too), else the process alone."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def close_stdin(self) -> None:
        """Close our end of its stdin: a worker with ``--exit-with-stdin`` leaves."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:  # the pipe broke: the process is gone already
            pass
