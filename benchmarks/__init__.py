"""Benchmarks comparing impexec.ClusterExecutor with its peers.

Not part of the test suite.  Run ``python benchmarks/run.py --help`` (or
``python -m benchmarks.run``) from the repository root; see ``benchmarks/README.md``.
"""

import os as _os
from pathlib import Path as _Path

ROOT = _Path(__file__).resolve().parent.parent
# Workers started as fresh interpreters (dask's spawn, impexec's launcher, loky) must be
# able to import benchmarks.tasks, which the tasks are pickled by reference to.
_os.environ["PYTHONPATH"] = _os.pathsep.join(
    [str(ROOT), *(p for p in _os.environ.get("PYTHONPATH", "").split(_os.pathsep) if p and p != str(ROOT))]
)
