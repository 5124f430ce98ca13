"""Where workers run: one launcher per way of starting them."""

from .base import Launcher
from .local import LocalWorkers
from .sge import SGEWorkers
from .slurm import SlurmWorkers
from .ssh import SSHWorkers

__all__ = ["Launcher", "LocalWorkers", "SGEWorkers", "SSHWorkers", "SlurmWorkers"]
