"""The live view (`impexec top`, `impexec status --watch` on a terminal), driven in a real
pseudo-terminal: tmux runs it in a detached session with TERM=xterm, and the test reads
the screen with `tmux capture-pane`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

import sweep_tasks as st
import tasks

WAIT = 30.0

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="needs tmux on PATH to drive a pseudo-terminal"
)


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=WAIT, check=True)


@pytest.fixture
def pane(tmp_path):
    """Start a command in a fresh tmux server (its own socket) 100x30; yield helpers."""
    sock = str(tmp_path / "tmux.sock")
    name = f"impexec-{uuid.uuid4().hex[:8]}"

    def t(*args):
        return tmux("-S", sock, *args)

    class Pane:
        def start(self, command):
            env = (
                f"env TERM=xterm PYTHONPATH={os.environ.get('PYTHONPATH', '')} "
                f"{sys.executable} -m impexec {command}"
            )
            # the shell around it prints the exit status and keeps the pane open to read it
            t("new-session", "-d", "-s", name, "-x", "100", "-y", "30", f"{env}; echo EXIT=$?; sleep 60")

        def screen(self):
            return t("capture-pane", "-p", "-t", name).stdout

        def history(self):
            return int(t("display-message", "-p", "-t", name, "#{history_size}").stdout.strip())

        def wait_for(self, text, timeout=WAIT):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                screen = self.screen()
                if text in screen:
                    return screen
                time.sleep(0.1)
            pytest.fail(f"{text!r} never appeared on the screen:\n{self.screen()}")

    yield Pane()
    subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=WAIT, check=False)


def test_the_live_view_redraws_in_place_and_says_when_the_run_ended(make_executor, pane, tmp_path):
    ex = make_executor(2)
    path = ex.connection_file()
    pane.start(f"top {path} --interval 0.2")
    pane.wait_for("WORKER")
    pane.wait_for("workers 2 connected")  # they may still be starting when the view opens
    # one worker held busy until the screen has shown it (no race with a fast machine)
    gate = tmp_path / "release"
    held = ex.submit(tasks.wait_for_file, str(gate), WAIT)
    screen = pane.wait_for("busy")
    assert "calls   done" in screen
    pane.wait_for("ETA")  # the rate is known once the view has watched for half a second
    gate.write_text("go")
    assert held.result(timeout=WAIT) is True
    outcomes = list(ex.map(st.slow_evaluate, range(60), chunksize=3, return_exceptions=True, timeout=WAIT))
    n_failed = sum(isinstance(v, ValueError) for v in outcomes)
    n_done = 60 - n_failed + 1  # and the held call
    screen = pane.wait_for(f"done {n_done}   failed {n_failed}")
    assert "tasks   done 21" in screen  # 60 calls in chunks of 3, and the held call
    # redrawn in place: many refreshes later, nothing has scrolled off the top
    assert screen.splitlines()[0].startswith("impexec ")
    assert pane.history() == 0
    ex.shutdown(wait=True)
    screen = pane.wait_for("EXIT=")
    assert f"the run ended: {n_done} calls done, {n_failed} failed" in screen
    assert "EXIT=0" in screen
    assert "[ended]" in screen
