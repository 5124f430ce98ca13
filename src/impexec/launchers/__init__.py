"""Where workers run: one launcher per way of starting them."""

from .base import Launcher
from .local import LocalWorkers

__all__ = ["Launcher", "LocalWorkers"]
