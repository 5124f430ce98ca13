"""pyABC's own sampler tests, run with samplers built on ClusterExecutor.

pyABC's tests are not installed with the package; its source distribution carries them
(``test/base/``). At collection this module fetches the sdist of the installed pyabc
version with pip (kept in ``$XDG_CACHE_HOME/impexec-tests``, so a second run works
offline), loads ``test/base/test_samplers.py`` from it by path and collects the test
functions that take its ``sampler`` fixture. That fixture is replaced here: pyABC's own
list (process pools, Redis, dask...) becomes the samplers a user of ClusterExecutor
builds. Nothing of pyABC's is copied into this repository.

Without pip access to the package index (and no cached sdist) the module is skipped,
naming what is missing; CI checks that it ran.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

pyabc = pytest.importorskip("pyabc", reason="needs pyabc (pip install -e '.[integrations]' from a clone)")

from impexec import ClusterExecutor  # noqa: E402

#: The upstream tests that take the ``sampler`` fixture (checked below: they must exist).
UPSTREAM_TESTS = ("test_two_competing_gaussians_multiple_population", "test_progressbar")
HEARTBEATS = {"heartbeat_interval": 0.2, "heartbeat_timeout": 10.0}
FETCH_TIMEOUT_S = 180


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "impexec-tests"


def _upstream_file(name: str) -> Path:
    """``test/base/<name>`` of the installed pyabc version's sdist (fetched once)."""
    version = pyabc.__version__
    target = _cache_dir() / f"pyabc-{version}-tests" / name
    if target.exists():
        return target
    downloads = _cache_dir() / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    sdist = downloads / f"pyabc-{version}.tar.gz"
    if not sdist.exists():
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"pyabc=={version}",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-q",
                "-d",
                str(downloads),
            ],
            capture_output=True,
            text=True,
            timeout=FETCH_TIMEOUT_S,
            check=False,
        )
        if res.returncode != 0 or not sdist.exists():
            pytest.skip(
                f"pyABC's source distribution (pyabc=={version}, which carries its tests) "
                f"could not be fetched with pip: {res.stderr.strip()[-300:]}",
                allow_module_level=True,
            )
    with tarfile.open(sdist) as tar:
        member = tar.getmember(f"pyabc-{version}/test/base/{name}")
        data = tar.extractfile(member)
        assert data is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data.read())
        tmp.replace(target)
    return target


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    # by path, under a name of its own: pyABC's tests live in a package named "test",
    # which is also the name of CPython's test package
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_upstream = _load(_upstream_file("test_samplers.py"), "pyabc_upstream_test_samplers")
for _name in UPSTREAM_TESTS:
    globals()[_name] = getattr(_upstream, _name)


def _future_sampler(ex: ClusterExecutor):  # type: ignore[no-untyped-def]
    return pyabc.sampler.ConcurrentFutureSampler(ex, client_max_jobs=8)


def _future_sampler_batches(ex: ClusterExecutor):  # type: ignore[no-untyped-def]
    return pyabc.sampler.ConcurrentFutureSampler(ex, client_max_jobs=8, batch_size=15)


def _mapping_sampler(ex: ClusterExecutor):  # type: ignore[no-untyped-def]
    return pyabc.sampler.MappingSampler(map_=ex.map)


@pytest.fixture(
    params=[_future_sampler, _future_sampler_batches, _mapping_sampler],
    ids=["ConcurrentFutureSampler", "ConcurrentFutureSampler-batch15", "MappingSampler"],
)
def sampler(request: pytest.FixtureRequest, make_executor):  # type: ignore[no-untyped-def]
    """Replaces pyABC's ``sampler`` fixture: its samplers on a ClusterExecutor."""
    ex = make_executor(2, **HEARTBEATS)
    return request.param(ex)


@pytest.fixture(autouse=True)
def _temp_files_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pyABC's tests put databases in the temporary directory (create_sqlite_db_id): this
    # test's own, so nothing is left behind
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """pyABC's conftest fixture of that name: a database file for the run."""
    return "sqlite:///" + str(tmp_path / "abc_unittest.db")


def test_the_upstream_tests_exist() -> None:
    """pyABC renamed or dropped a test we run: update UPSTREAM_TESTS, do not lose it."""
    missing = [n for n in UPSTREAM_TESTS if not callable(getattr(_upstream, n, None))]
    assert not missing, missing
    src = Path(_upstream.__file__).read_text()
    for name in UPSTREAM_TESTS:
        assert f"def {name}(" in src and "sampler" in src.split(f"def {name}(", 1)[1].split(")")[0]
