"""The client's ``sys.path``, handed to the local workers it starts.

ProcessPoolExecutor's processes start with their parent's ``sys.path``, so a module beside
the user's script imports there even when the script was started from another directory
(the script's directory is on the parent's path, not on the child's by itself). Local
workers get the same: :class:`~impexec.launchers.local.LocalWorkers` captures the path
once, when the executor starts, so every worker of an executor, replacements included,
sees one path; the worker adopts it before it reads a task.

Entries of the client's Python installation (its prefixes and site-packages) are
marked: a worker run by another interpreter (``python=``) must not import the client's
standard library or compiled packages, and one run by the same interpreter has them
already; they only place the user's entries in the client's order.
"""

from __future__ import annotations

import json
import logging
import os
import site
import sys
from collections.abc import Iterable

logger = logging.getLogger(__name__)

#: The environment variable LocalWorkers passes the captured path in (JSON).
ENV = "IMPEXEC_CLIENT_SYS_PATH"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip(os.sep) + os.sep)


def _installation_dirs() -> list[str]:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.update(getattr(site, "getsitepackages", list)())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        dirs.add(user_site)
    return sorted(os.path.abspath(d) for d in dirs if d)


def capture(path: Iterable[object] | None = None) -> str:
    """The client's path as the worker adopts it: absolute entries, installation marked.

    Relative entries (``""`` for the directory of ``python -c`` or an interactive
    session) are resolved against the current directory now.
    """
    entries: list[str] = []
    for entry in sys.path if path is None else path:
        if not isinstance(entry, (str, bytes, os.PathLike)):
            continue  # not a file system path (an importer key of some finder)
        try:
            text = os.fspath(entry)
        except TypeError:
            continue  # a path-like object whose __fspath__ returns neither str nor bytes
        if isinstance(text, bytes):
            continue
        absolute = os.path.abspath(text or os.curdir)
        if absolute not in entries:
            entries.append(absolute)
    prefixes = _installation_dirs()
    installation = [e for e in entries if any(_under(e, p) for p in prefixes)]
    return json.dumps({"path": entries, "installation": installation})


def merge(client: list[str], installation: Iterable[str], own: list[str], cwd: str) -> list[str]:
    """The worker's new path: the client's entries in the client's order.

    ``own[0]`` is the directory ``python -m`` put first: the worker's current directory,
    which the client's path need not have: dropped then, as a child of
    ProcessPoolExecutor does not have it either. Installation entries the worker lacks
    are left out; the worker's other entries (its interpreter's, its PYTHONPATH) stay.
    """
    result = list(own)
    if result and result[0] == cwd and cwd not in client:
        del result[0]
    skip = set(installation)
    have = set(result)
    pending: list[str] = []
    for entry in client:
        if entry in have:
            # an entry both have anchors the client's entries before it
            at = result.index(entry)
            result[at:at] = pending
            have.update(pending)
            pending = []
        elif entry not in skip:
            pending.append(entry)
    result.extend(pending)
    return result


def adopt() -> None:
    """In a worker: take on the path its launcher captured (no-op without one)."""
    raw = os.environ.pop(ENV, "")  # not inherited by what the tasks start
    if not raw:
        return
    try:
        data = json.loads(raw)
        client = [str(e) for e in data["path"]]
        installation = [str(e) for e in data["installation"]]
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring a malformed %s", ENV)
        return
    sys.path[:] = merge(client, installation, sys.path, os.getcwd())
