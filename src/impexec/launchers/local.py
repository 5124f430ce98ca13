"""LocalWorkers: worker processes on this machine, started as fresh interpreters."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from .. import _pipe, _syspath
from ._process import WorkerProcess, worker_argv
from .base import Launcher, LauncherHost, describe_exit

logger = logging.getLogger(__name__)

#: Exit statuses of a process killed from outside (not a failure to start).
_KILLED_FROM_OUTSIDE = frozenset((-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP))
#: Seconds a worker declared lost may take to exit by itself before it is killed.
DISMISS_GRACE_S = 1.0


@dataclass
class _Slot:
    index: int
    generation: int = 0
    worker: WorkerProcess | None = None
    tag: str = ""
    started: float = 0.0
    restart_at: float = 0.0
    connected: bool = False
    dismissed_at: float = 0.0  # when the broker forgot it while its process still ran

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.worker.proc if self.worker is not None else None


class LocalWorkers(Launcher):
    """``n`` worker processes on this machine (``python -m impexec worker``, not fork).

    Dead workers are replaced (with backoff when they fail to start). Their stderr is
    echoed to this process's stderr and its tail kept for :class:`WorkerStartError`.

    Args:
        n: number of worker processes.
        python: interpreter command (default: this interpreter).
        env: variables added to the inherited environment.
        start_timeout: seconds a worker may take to connect.
        echo_stderr: copy the workers' stderr to this process's stderr.
    """

    local_socket = True

    def __init__(
        self,
        n: int,
        *,
        python: str | list[str] | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        echo_stderr: bool = True,
    ):
        super().__init__(n, python=python, env=env, start_timeout=start_timeout)
        self.echo_stderr = echo_stderr
        self._slots = [_Slot(i) for i in range(n)]
        self._stopped = False
        self._prefix = f"local{os.getpid()}-{id(self) % 100000}"
        self._client_path = ""

    def start(self, host: LauncherHost) -> None:
        self.host = host
        # the client's sys.path as the executor starts: every worker, replacements too,
        # imports what the client could then (a module beside the user's script)
        self._client_path = _syspath.capture()
        for slot in self._slots:
            self._spawn(slot)

    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The live worker processes (tests kill them to show resubmission)."""
        return [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]

    def _spawn(self, slot: _Slot) -> None:
        """Start the slot's next worker: the one place a launcher's worker starts."""
        slot.generation += 1
        slot.tag = f"{self._prefix}-{slot.index}-{slot.generation}"
        slot.connected = False
        slot.dismissed_at = 0.0
        slot.worker = None
        argv, env, stdin = self._command(slot)
        pair = self._pipe()
        if pair is not None:
            fd = pair[1].fileno()
            env = {**(env or os.environ), _pipe.ENV: f"{fd}:{os.fstat(fd).st_ino}"}
        slot.started = time.monotonic()
        try:
            slot.worker = WorkerProcess(
                argv,
                env=env,
                stdin=stdin,
                stdout=self._stdout,
                echo=self.echo_stderr,
                name=f"impexec-stderr-{slot.index}",
                pass_fds=() if pair is None else (pair[1].fileno(),),
            )
        except OSError as exc:
            if pair is not None:
                pair[0].close()
            self.start_failed(slot.tag, f"cannot run {argv[0]!r}: {exc}", "")
            slot.restart_at = time.monotonic() + self.backoff()
            return
        finally:
            if pair is not None:
                pair[1].close()  # the worker's end is the worker's alone
        if pair is not None:
            self.host.attach_pipe(pair[0])  # type: ignore[union-attr]
        logger.debug("started worker %s: pid %d", slot.tag, slot.worker.pid)

    #: Local workers carry their main link on a pipe from this process, not ZeroMQ
    #: (a shorter round trip; see impexec._pipe). ``IMPEXEC_LOCAL_PIPE=0`` turns it off.
    main_pipe = True

    def _pipe(self) -> tuple[socket.socket, socket.socket] | None:
        """A socket pair for the next worker's main link, when the host takes one."""
        if not self.main_pipe or os.environ.get(_pipe.ENV_SWITCH, "1") == "0":
            return None
        if getattr(self.host, "attach_pipe", None) is None:
            return None
        return _pipe.pair()

    #: where the workers' stdout goes (None: this process's)
    _stdout: int | None = None

    def _command(self, slot: _Slot) -> tuple[list[str], Mapping[str, str] | None, bytes | None]:
        """The slot's command, its environment, and what goes to its stdin."""
        env = {**os.environ, _syspath.ENV: self._client_path, **self.env}
        # the worker must find the same impexec as this process, even when it is not installed
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        # the executor's Unix-socket connection file when it has one (same machine)
        local = getattr(self.host, "local_connection_file", None)
        # a stdin that only this process holds open: however it ends (even SIGKILL), its
        # workers read end of file and leave at once, without waiting for heartbeats
        return self.worker_command(slot.tag, str(local) if local else None), env, b""

    def worker_command(self, tag: str, connection: str | None = None) -> list[str]:
        assert self.host is not None
        target = connection or str(self.host.connection_file)
        return worker_argv(self.python, target, tag, exit_with_stdin=True)

    def poll(self) -> None:
        host = self.host
        if host is None or self._stopped:
            return
        now = time.monotonic()
        for slot in self._slots:
            proc = slot.proc
            if proc is None:
                if not host.shutting_down and now >= slot.restart_at:
                    self._spawn(slot)
                continue
            if not slot.connected and host.ever_connected(slot.tag):
                slot.connected = True
                self.started_ok()
            rc = proc.poll()
            if rc is None:
                self._watch_running(slot, proc, host, now)
            else:
                self._after_exit(slot, proc.pid, rc, host, now)

    def _watch_running(
        self, slot: _Slot, proc: subprocess.Popen[bytes], host: LauncherHost, now: float
    ) -> None:
        """End a running worker that should be gone: declared lost, or never connected."""
        if slot.connected and not host.is_connected(slot.tag) and not host.shutting_down:
            # declared lost (e.g. stopped or hung) yet alive: it was told to leave;
            # if it cannot (SIGSTOP, a task stuck holding the GIL), end it
            if not slot.dismissed_at:
                slot.dismissed_at = now
            elif now - slot.dismissed_at > DISMISS_GRACE_S:
                logger.warning(
                    "worker %s was declared lost but still runs: killing pid %d", slot.tag, proc.pid
                )
                self._kill(proc)
            return
        if not slot.connected and now - slot.started > self.start_timeout:
            self._kill(proc)
            proc.wait(5)
            output = self._retire(slot)
            self.start_failed(
                slot.tag, f"worker {slot.tag} did not connect within {self.start_timeout:g} s", output
            )
            slot.restart_at = now + self.backoff()

    def _after_exit(self, slot: _Slot, pid: int, rc: int, host: LauncherHost, now: float) -> None:
        """The slot's worker exited: when (and whether) to start its replacement."""
        output = self._retire(slot)
        if slot.connected or host.ever_connected(slot.tag):
            if rc != 0 and not host.shutting_down:
                host.worker_exited(slot.tag, f"pid {pid} {describe_exit(rc)}")
            slot.restart_at = now
            if rc == 0:
                slot.restart_at = float("inf")  # it left on purpose (drained): not replaced
        elif rc in _KILLED_FROM_OUTSIDE:
            # killed by someone before it connected: not evidence that it cannot start
            logger.info("worker %s was %s before connecting; restarting it", slot.tag, describe_exit(rc))
            slot.restart_at = now
        else:
            self.start_failed(
                slot.tag,
                f"worker {describe_exit(rc)} before connecting "
                f"(command: {' '.join(self.worker_command(slot.tag))})",
                output,
            )
            slot.restart_at = now + self.backoff()

    @staticmethod
    def _retire(slot: _Slot) -> str:
        """Forget the slot's ended process; returns the tail of its stderr."""
        worker, slot.worker = slot.worker, None
        if worker is None:
            return ""
        worker.join_reader()
        worker.close_stdin()
        return worker.output()

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            proc = slot.proc
            if proc is None:
                continue
            if self.host is not None and not self.host.is_connected(slot.tag):
                # still starting, or declared lost (maybe stopped or hung): no SHUTDOWN
                # reached it, so waiting would only cost the whole timeout
                self._kill(proc)
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(proc, signal.SIGTERM)
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    self._kill(proc)
                    proc.wait(5.0)
            self._retire(slot)
