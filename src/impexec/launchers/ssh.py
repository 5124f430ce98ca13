"""SSHWorkers: worker processes on other machines, one ``ssh`` session each."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from ._process import worker_argv
from .local import LocalWorkers, _Slot

logger = logging.getLogger(__name__)


class SSHWorkers(LocalWorkers):
    """``processes`` workers on each of ``hosts``, each over its own ``ssh`` session.

    Every worker runs ``ssh -o BatchMode=yes -T HOST exec PYTHON -m impexec worker
    --connect - --exit-with-stdin --tag TAG``: no tty, no password prompt (use keys or an
    agent), and no file on the remote host. The connection (address and key) goes down
    the session's stdin, so the key never shows in a ``ps`` listing; the stdin stays open
    and the worker exits when it closes, so a worker cannot outlive its ssh session (the
    executor closes them at shutdown). Workers dial the executor's address: bind it where
    the hosts can reach it (``address="tcp://0.0.0.0:0"``, ``advertise=``) or use an SSH
    tunnel. Dead workers are replaced, with backoff when they fail to start; ssh's and
    the worker's stderr tail is reported in :class:`~impexec.WorkerStartError`.

    Args:
        hosts: host names, ``user@host`` or ``~/.ssh/config`` aliases (a name may repeat).
        processes: worker processes per host.
        python: interpreter command on the hosts (default: this interpreter's path,
            which must exist there).
        env: variables set for the remote worker (ssh passes none of this environment).
        ssh: the ssh command, e.g. ``("ssh",)`` or ``("/usr/bin/ssh", "-F", "cfg")``.
        ssh_options: more ssh arguments, e.g. ``("-o", "ConnectTimeout=10")``.
        port: ssh port (``-p``); identity: private key file (``-i``).
        start_timeout: seconds a worker may take to connect.
        echo_stderr: copy the workers' stderr to this process's stderr.
    """

    local_socket = False  # the workers dial the executor's address from other hosts
    main_pipe = False  # nor can a pipe of this process reach them

    def __init__(
        self,
        hosts: str | Sequence[str],
        *,
        processes: int = 1,
        python: str | Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        ssh: Sequence[str] = ("ssh",),
        ssh_options: Sequence[str] = (),
        port: int | None = None,
        identity: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        echo_stderr: bool = True,
    ):
        self.hosts = [hosts] if isinstance(hosts, str) else list(hosts)
        if not self.hosts or not all(isinstance(h, str) and h for h in self.hosts):
            raise ValueError(f"hosts must be a non-empty list of host names, not {hosts!r}")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be an int >= 1, not {processes!r}")
        super().__init__(
            len(self.hosts) * processes,
            python=python if python is None or isinstance(python, str) else list(python),
            env=dict(env or {}),
            start_timeout=start_timeout,
            echo_stderr=echo_stderr,
        )
        self.processes_per_host = processes
        self.ssh = list(ssh)
        self.ssh_options = list(ssh_options)
        self.port = port
        self.identity = os.fspath(identity) if identity is not None else None
        self._prefix = f"ssh{os.getpid()}-{id(self) % 100000}"

    def host_of(self, index: int) -> str:
        return self.hosts[index // self.processes_per_host]

    def remote_command(self, tag: str) -> str:
        """The command line the remote shell runs (no secret in it)."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        python = [*(["env", *env] if env else []), *self.python]
        return "exec " + shlex.join(worker_argv(python, "-", tag, exit_with_stdin=True))

    def ssh_argv(self, host: str, tag: str) -> list[str]:
        """The full local command: ``ssh -o BatchMode=yes -T [-p] [-i] [options] HOST CMD``."""
        argv = [*self.ssh, "-o", "BatchMode=yes", "-T"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.identity is not None:
            argv += ["-i", self.identity]
        return [*argv, *self.ssh_options, host, self.remote_command(tag)]

    def worker_command(self, tag: str, connection: str | None = None) -> list[str]:
        index = next((s.index for s in self._slots if s.tag == tag), 0)
        return self.ssh_argv(self.host_of(index), tag)

    _stdout = subprocess.DEVNULL

    def _command(self, slot: _Slot) -> tuple[list[str], Mapping[str, str] | None, bytes | None]:
        """``ssh`` (with this environment), and the connection for its stdin."""
        host = self.host
        assert host is not None
        line = (json.dumps(host.connection.to_json()) + "\n").encode()
        return self.ssh_argv(self.host_of(slot.index), slot.tag), None, line

    def stop(self, timeout: float = 10.0) -> None:
        """Close every session's stdin (the remote workers exit), then reap the ssh."""
        for slot in self._slots:
            if slot.worker is not None:
                slot.worker.close_stdin()
        super().stop(timeout)

    def __repr__(self) -> str:
        return f"SSHWorkers({self.hosts!r}, processes={self.processes_per_host})"
