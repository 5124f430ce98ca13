"""The command line around a run: --version, `impexec end`, `stop` that says what waits,
and `status --watch` that says when the run ended (off a terminal; the terminal view is
tests/integration/test_live_view.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import CancelledError

import pytest

import impexec
import tasks
from processes import Lines, end_process, impexec_argv
from waiting import wait_until

WAIT = 30.0


def impexec_cli(*args, timeout=WAIT):
    return subprocess.run(
        [sys.executable, "-m", "impexec", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def start_watch(*args):
    """``impexec status ARGS`` in the background: (process, its stdout, its stderr), both
    streams read line by line as they come."""
    proc = subprocess.Popen(
        impexec_argv("status", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, Lines(proc.stdout, "watch's output"), Lines(proc.stderr, "watch's stderr")


def finish_watch(proc, out, err):
    """The watch's output after the lines already read, and its stderr, once it has exited
    by itself (within WAIT seconds)."""
    proc.wait(timeout=WAIT)
    return "".join(out.rest(WAIT)), "".join(err.rest(WAIT))


def watch_to_the_end(ex, args, waits_for):
    """Run ``impexec status ARGS``; once its output has shown each of *waits_for* in turn,
    shut *ex* down. Returns (exit code, all it printed, its stderr) after it has exited by
    itself."""
    proc, lines, errors = start_watch(*args)
    try:
        for text in waits_for:
            lines.until(text, WAIT)
        ex.shutdown(wait=True)
        _, err = finish_watch(proc, lines, errors)
        return proc.returncode, "".join(lines.seen), err
    finally:
        end_process(proc, lines, errors)


def test_version():
    out = impexec_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"impexec {impexec.__version__}"


def test_end_releases_a_run_whose_workers_were_stopped(make_executor):
    """`impexec stop` sent the workers away mid-map; `impexec end` releases the program."""
    ex = make_executor(1)
    wait_until(lambda: ex.statistics().workers == 1, WAIT, "the worker")
    path = ex.connection_file()
    got: list = []
    error: list = []

    def sweep():
        try:
            for r in ex.map(tasks.sleep_then, [0.05] * 64, range(64)):
                got.append(r)  # noqa: PERF402 (one at a time: the test watches it grow)
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=sweep, name="test-sweep")
    t.start()
    wait_until(lambda: len(got) >= 2, WAIT, "the first results")
    stopped = impexec_cli("stop", path)
    assert stopped.returncode == 0, stopped.stderr
    assert "impexec end" in stopped.stdout  # it says how to end what is left waiting
    wait_until(lambda: ex.statistics().workers == 0, WAIT, "the worker to leave")
    assert ex.statistics().queued > 0 and t.is_alive()  # stranded: nobody will serve it
    ended = impexec_cli("end", path)
    assert ended.returncode == 0, ended.stderr
    assert "cancelled" in ended.stdout
    t.join(WAIT)
    assert not t.is_alive(), "the program is still waiting after `impexec end`"
    assert len(error) == 1 and isinstance(error[0], CancelledError), error
    with pytest.raises(RuntimeError, match="impexec end"):
        ex.submit(tasks.square, 2)


def test_end_gives_up_the_tasks_on_workers_too(make_executor):
    ex = make_executor(1)
    running = ex.submit(tasks.hang, 60)
    queued = ex.submit(tasks.square, 3)
    wait_until(lambda: running.running(), WAIT, "the long task to start")
    ended = impexec_cli("end", ex.connection_file())
    assert ended.returncode == 0, ended.stderr
    with pytest.raises(CancelledError, match="impexec end"):
        running.result(timeout=WAIT)
    assert queued.cancelled()


def test_watch_says_the_run_ended_and_exits_0(make_executor):
    ex = make_executor(2)
    path = ex.connection_file()
    assert list(ex.map(tasks.square, range(30), chunksize=4)) == [x * x for x in range(30)]
    # once it has shown done=30, it watches: the broker knows it
    code, out, err = watch_to_the_end(ex, [path, "--watch", "0.2"], ["done=30"])
    assert code == 0, err
    assert "the run ended: 30 calls done, 0 failed" in out
    assert "no answer" not in out + err
    assert "(ended)" in out  # the last block holds the final figures


def test_watch_json_gives_one_object_per_line_and_the_final_state(make_executor):
    ex = make_executor(1)
    path = ex.connection_file()
    assert ex.submit(tasks.square, 4).result(timeout=WAIT) == 16
    running = '"state": "running"'
    code, out, err = watch_to_the_end(ex, [path, "--watch", "0.2", "--json"], [running, running])
    assert code == 0, err
    objects = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(objects) >= 2
    assert {o["state"] for o in objects[:-1]} <= {"running", "ending"}
    assert objects[-1]["state"] == "ended" and objects[-1]["done"] == 1


def test_watch_of_an_executor_that_vanished_says_it_stopped_answering(tmp_path):
    """A client killed without a shutdown sends no notice: the watch says what it knows."""
    script = tmp_path / "client.py"
    conn = tmp_path / "run.json"
    script.write_text(
        "import os, sys, time\n"
        "from impexec import ClusterExecutor\n"
        "ex = ClusterExecutor(None)\n"
        f"ex.connection_file({str(conn)!r})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    client_out = Lines(client.stdout, "client's output")
    watch = None
    try:
        assert client_out.next(WAIT).strip() == "ready"
        watch, lines, errors = start_watch(str(conn), "--watch", "0.2", "--timeout", "2")
        lines.until("workers=0", WAIT)  # it had an answer before the client died
        client.kill()
        _out, err = finish_watch(watch, lines, errors)
    finally:
        end_process(client, client_out, timeout=WAIT)
        if watch is not None:
            end_process(watch, lines, errors)
    assert watch.returncode == 1
    assert "stopped answering" in err
    assert os.path.exists(conn)


def test_a_replayed_end_is_refused_and_a_stranger_cannot_end_the_run(make_executor, raw_socket, caplog):
    """END_RUN has STOP_WORKERS's guards: the key, this session or a fresh clock number,
    and no replay; a message that fails them ends nothing."""
    import logging

    import zmq

    from impexec._connection import ConnectionInfo
    from impexec._protocol import Kind, client_keys, encode

    caplog.set_level(logging.WARNING, logger="impexec")
    ex = make_executor(None)  # no workers: STOP_WORKERS below changes nothing
    conn = ConnectionInfo.read(ex.connection_file())

    def dealer():
        s = raw_socket(zmq.DEALER)
        s.connect(conn.address)
        return s

    wrong_key = encode(b"k" * 32, Kind.END_RUN, conn.session, 10**6)
    dealer().send_multipart(wrong_key)
    to_broker = client_keys(conn.key)[0]  # what a status client signs with
    stale = encode(to_broker, Kind.END_RUN, b"\0" * 8, 10**6)  # no session, clock from 1970
    dealer().send_multipart(stale)
    stop = encode(to_broker, Kind.STOP_WORKERS, conn.session, 2 * 10**6)
    first = dealer()
    first.send_multipart(stop)
    assert first.poll(WAIT * 1000)  # answered: the guard's high-water mark is now 2e6
    end_replayed = encode(to_broker, Kind.END_RUN, conn.session, 2 * 10**6)
    dealer().send_multipart(end_replayed)
    wait_until(lambda: "replayed END_RUN" in caplog.text, WAIT, "the replay to be refused")
    assert "bad signature" in caplog.text
    assert "another session" in caplog.text
    assert not ex._broker.ended
    ex.submit(tasks.square, 5)  # still open for work: queued for a worker to come
    assert ex.statistics().queued == 1
