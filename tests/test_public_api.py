"""The public surface: what ``impexec`` exports, and the promised signatures."""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import pickle
import types

import pytest

import impexec

#: Names shared/API.md promises at the top level.
CONTRACT_NAMES = {
    "ClusterExecutor",
    "Context",
    "LocalWorkers",
    "SSHWorkers",
    "SlurmWorkers",
    "SGEWorkers",
    "SerializationError",
    "WorkerLostError",
    "WorkerStartError",
    "Statistics",
}


def test_all_is_sorted_and_complete() -> None:
    assert impexec.__all__ == sorted(impexec.__all__)
    assert len(set(impexec.__all__)) == len(impexec.__all__)
    for name in impexec.__all__:
        assert hasattr(impexec, name), name
    public = {
        name
        for name, value in vars(impexec).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public <= set(impexec.__all__), f"exported but not in __all__: {public - set(impexec.__all__)}"


def test_contract_names_exported() -> None:
    assert set(impexec.__all__) >= CONTRACT_NAMES
    assert isinstance(impexec.__version__, str)


def test_public_objects_claim_the_package() -> None:
    for name in impexec.__all__:
        obj = getattr(impexec, name)
        module = getattr(obj, "__module__", None)
        if module is not None and not isinstance(obj, str):
            assert module.startswith("impexec"), (name, module)


def test_executor_is_a_real_executor() -> None:
    assert issubclass(impexec.ClusterExecutor, cf.Executor)
    assert issubclass(impexec.Context, cf.Executor)


def _params(fn: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["submit", "shutdown"])
def test_signatures_match_the_standard_library(method: str) -> None:
    ours = _params(getattr(impexec.ClusterExecutor, method))
    theirs = _params(getattr(cf.ProcessPoolExecutor, method))
    assert ours == theirs


def test_map_signature() -> None:
    sig = inspect.signature(impexec.ClusterExecutor.map)
    params = sig.parameters
    assert list(params)[:3] == ["self", "fn", "iterables"]
    assert params["iterables"].kind is inspect.Parameter.VAR_POSITIONAL
    assert params["timeout"].default is None
    assert params["chunksize"].default == 1
    assert params["buffersize"].default is None
    for name in ("timeout", "chunksize", "buffersize"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    unordered = inspect.signature(impexec.ClusterExecutor.map_unordered).parameters
    assert unordered["chunksize"].default == 1
    assert unordered["buffersize"].default is None


def test_constructor_options() -> None:
    params = inspect.signature(impexec.ClusterExecutor).parameters
    expected = {
        "address": None,
        "advertise": None,
        "max_retries": 3,
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": 10.0,
        "serializer": "cloudpickle",
        "initializer": None,
        "initargs": (),
        "key": None,
        "encrypt": False,
        "prefetch": None,
    }
    assert params["workers"].default is None
    for name, default in expected.items():
        assert params[name].default == default, name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_exception_tree() -> None:
    for name in (
        "SerializationError",
        "WorkerLostError",
        "WorkerStartError",
        "BrokenClusterError",
    ):
        assert issubclass(getattr(impexec, name), impexec.ImpexecError)
    assert issubclass(impexec.SerializationError, pickle.PicklingError)
    assert issubclass(impexec.BrokenClusterError, cf.BrokenExecutor)


@pytest.mark.parametrize(
    "error",
    [
        impexec.WorkerLostError("lost", 4, ("w1", "w2")),
        impexec.WorkerStartError("no start", "tail"),
    ],
)
def test_errors_survive_pickling(error: Exception) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def test_launchers_share_the_base() -> None:
    for name in ("LocalWorkers", "SSHWorkers", "SlurmWorkers", "SGEWorkers"):
        assert issubclass(getattr(impexec, name), impexec.Launcher)


def test_imp_compat_names() -> None:
    imp = pytest.importorskip("impexec.compat.imp", reason="impexec.compat.imp not written yet")
    for name in ("Manager", "LocalWorker", "SGEQsubWorkerArray"):
        assert hasattr(imp, name), name
