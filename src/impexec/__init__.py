"""impexec: a concurrent.futures.Executor whose workers run anywhere, over ZeroMQ."""

from __future__ import annotations

from ._context import Context
from ._errors import (
    BrokenClusterError,
    ImpexecError,
    SerializationError,
    WorkerLostError,
    WorkerStartError,
)
from ._executor import ClusterExecutor
from ._progress import progress
from ._scheduler import Statistics
from ._version import __version__
from .launchers import Launcher, LocalWorkers, SGEWorkers, SlurmWorkers, SSHWorkers

__all__ = [
    "BrokenClusterError",
    "ClusterExecutor",
    "Context",
    "ImpexecError",
    "Launcher",
    "LocalWorkers",
    "SGEWorkers",
    "SSHWorkers",
    "SerializationError",
    "SlurmWorkers",
    "Statistics",
    "WorkerLostError",
    "WorkerStartError",
    "__version__",
    "progress",
]
