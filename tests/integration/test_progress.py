"""Progress: impexec.progress() draws a tqdm bar (opt-in); `impexec status --watch`."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest

import impexec
from impexec import ClusterExecutor, LocalWorkers, progress
from processes import Lines, end_process, impexec_argv
from waiting import wait_until

FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.5}


def square(x):
    return x * x


def nap(x):
    time.sleep(0.3)
    return x


@pytest.fixture
def ex(executor):
    """The suite's executor: 2 local workers, FAST heartbeats, shut down under a deadline."""
    return executor


def test_a_map_shows_done_total_rate_and_the_executor_figures(ex):
    out = io.StringIO()
    results = list(
        progress(
            ex.map(square, range(40), chunksize=4),
            executor=ex,
            total=40,
            file=out,
            desc="squares",
        )
    )
    assert results == [x * x for x in range(40)]
    text = out.getvalue()
    assert "squares" in text
    assert "40/40" in text
    assert "it/s" in text  # tqdm's rate
    assert "workers=" in text
    assert "resubmitted=0" in text


def test_futures_are_yielded_as_they_complete(ex):
    futures = [ex.submit(square, x) for x in range(12)]
    out = io.StringIO()
    seen = list(progress(futures, executor=ex, file=out))
    assert sorted(seen, key=futures.index) == futures
    assert all(f.done() for f in seen)
    assert "12/12" in out.getvalue()  # the total comes from len(futures)


def test_no_bar_unless_asked(ex, capfd):
    assert list(ex.map(square, range(20))) == [x * x for x in range(20)]
    out, err = capfd.readouterr()
    assert "it/s" not in out + err
    assert "%|" not in out + err
    buf = io.StringIO()
    assert list(progress(range(5), file=buf, disable=True)) == list(range(5))
    assert buf.getvalue() == ""


def test_the_bar_counts_resubmissions_after_a_worker_is_lost():
    launcher = LocalWorkers(2)
    with ClusterExecutor(launcher, prefetch=0, **FAST) as ex:
        assert ex.submit(square, 2).result(timeout=30) == 4
        futures = [ex.submit(nap, i) for i in range(6)]
        wait_until(lambda: ex.statistics().running >= 2, 30, "both workers to run a task")
        launcher.processes()[0].kill()
        out = io.StringIO()
        done = list(progress(futures, executor=ex, file=out))
        assert sorted(f.result(timeout=30) for f in done) == list(range(6))
    assert "6/6" in out.getvalue()
    assert "resubmitted=1" in out.getvalue()


def test_status_watch_refreshes_the_figures(ex):
    path = ex.connection_file()
    proc = subprocess.Popen(
        impexec_argv("status", path, "--watch", "0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    lines = Lines(proc.stdout, "`impexec status --watch` output")
    errors = Lines(proc.stderr, "`impexec status --watch` stderr")
    try:
        lines.until("done=0", 30)
        assert sum(f.result(timeout=30) for f in [ex.submit(square, x) for x in range(5)]) == 30
        lines.until("done=5", 30)  # the same process printed new figures
        assert any("workers=2" in line for line in lines.seen)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            end_process(proc, lines, errors)
        assert code == 130, "".join(errors.rest(10))


def test_progress_is_public():
    assert "progress" in impexec.__all__
    assert impexec.progress is progress


# -- failures on the bar, and a missing tqdm ----------------------------------------------
def fail_if_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_the_bar_counts_the_failures_of_a_sweep(ex):
    out = io.StringIO()
    got = list(
        progress(
            ex.map(fail_if_odd, range(20), chunksize=5, return_exceptions=True),
            executor=ex,
            total=20,
            file=out,
        )
    )
    assert sum(isinstance(v, ValueError) for v in got) == 10
    text = out.getvalue()
    assert "20/20" in text
    assert "failed=10" in text  # calls, not the 4 chunks


def test_without_an_executor_the_bar_counts_the_failures_it_yields(ex):
    out = io.StringIO()
    futures = [ex.submit(fail_if_odd, x) for x in range(6)]
    assert len(list(progress(futures, file=out))) == 6
    assert "failed=3" in out.getvalue()


def test_a_failure_shows_while_the_run_goes_on(ex):
    out = io.StringIO()
    failing = ex.submit(fail_if_odd, 1)
    slow = ex.submit(nap, 0)
    bar = progress(iter([failing, slow]), executor=ex, file=out, total=2)
    assert failing.exception(timeout=30) is not None
    assert next(bar) is failing
    wait_until(lambda: "failed=1" in out.getvalue(), 10, "the bar to show failed=1")
    assert list(bar) == [slow]


NO_TQDM = (
    "import sys\n"
    "sys.modules['tqdm'] = sys.modules['tqdm.auto'] = None  # as if not installed\n"
    "from impexec import progress\n"
    "assert list(progress(range(3))) == [0, 1, 2]\n"
    "assert list(progress(range(3))) == [0, 1, 2]\n"
)


def test_without_tqdm_the_user_is_told_once_on_stderr():
    # a fresh interpreter: warnings as a user sees them (pytest's filters do not apply)
    proc = subprocess.run(
        [sys.executable, "-c", NO_TQDM],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("tqdm is not installed") == 1, proc.stderr
    assert "RuntimeWarning" in proc.stderr


def test_without_tqdm_the_warning_is_a_runtime_warning(monkeypatch):
    import impexec._progress as mod

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(mod, "_warned_no_tqdm", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no bar was asked for: nothing to warn about
        assert list(progress(range(3), disable=True)) == [0, 1, 2]
        assert list(progress(range(3), disable=None, file=io.StringIO())) == [0, 1, 2]
    with pytest.warns(RuntimeWarning, match="pip install tqdm"):
        assert list(progress(range(3))) == [0, 1, 2]


def test_the_rate_of_a_chunked_map_is_its_average_not_the_swing_of_its_bursts():
    """A chunk's results come at once after a wait: the bar must not show the burst's
    instantaneous rate (tens of thousands per second) nor an ETA of hours after a wait."""

    def bursts():
        for _ in range(3):
            time.sleep(0.3)
            yield from range(50)

    out = io.StringIO()
    assert len(list(progress(bursts(), total=150, file=out, mininterval=0, miniters=1))) == 150
    rates = [float(r) for r in re.findall(r"([\d.]+)it/s", out.getvalue())]
    assert rates and max(rates) < 1000, sorted(rates)[-5:]
