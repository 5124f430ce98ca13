"""The text of the live view and of `impexec status`, from a status reply (no sockets)."""

from __future__ import annotations

from impexec._watch import Rate, live_lines, status_lines

REPLY = {
    "version": "0.1.0",
    "address": "tcp://127.0.0.1:4000",
    "state": "running",
    "workers": 2,
    "workers_joined": 2,
    "workers_lost": 0,
    "queued": 300,
    "running": 20,
    "done": 170,
    "failed": 10,
    "resubmitted": 8,
    "cancelled": 0,
    "tasks_queued": 30,
    "tasks_running": 2,
    "tasks_done": 18,
    "tasks_failed": 0,
    "workers_list": [
        {
            "name": "node1:10",
            "tag": "a",
            "held": 1,
            "completed": 9,
            "held_items": 10,
            "items_done": 90,
            "draining": False,
        },
        {
            "name": "node2:11",
            "tag": "b",
            "held": 0,
            "completed": 9,
            "held_items": 0,
            "items_done": 90,
            "draining": True,
        },
    ],
}


def test_live_view_shows_items_rate_eta_and_each_workers_state():
    lines = live_lines(REPLY, 10.0, 120, 40, "run.json", utf8=False)
    text = "\n".join(lines)
    assert "done 170   failed 10   retried 8" in text
    assert "36% of 500 submitted" in text  # (170 + 10) of 500 calls
    assert "10.0 calls/s" in text and "ETA 0:00:32" in text  # 320 calls left at 10/s
    rows = [line for line in lines if line.startswith("node")]
    assert rows[0].split()[2:] == ["busy", "10", "90"]
    assert rows[1].split()[2:] == ["draining", "0", "90"]
    assert all(len(line) <= 120 for line in lines)


def test_live_view_fits_the_terminal():
    many = {**REPLY, "workers_list": REPLY["workers_list"] * 30}
    lines = live_lines(many, None, 60, 20, "run.json", utf8=True)
    assert len(lines) <= 20
    assert any(line.startswith("... and ") for line in lines)
    assert all(len(line) <= 60 for line in lines)


def test_a_run_without_workers_has_no_eta():
    alone = {**REPLY, "workers": 0, "running": 0, "workers_list": []}
    text = "\n".join(live_lines(alone, 25.0, 120, 40, "run.json", utf8=False))
    assert "no worker connected" in text and "ETA -" in text


def test_status_text_labels_calls_and_tasks():
    lines = status_lines(REPLY)
    assert lines[1].startswith("calls  ") and "done=170" in lines[1]
    assert lines[2].startswith("tasks  ") and "done=18" in lines[2]
    assert "held=10 done=90" in lines[3]


def test_rate_over_the_window():
    r = Rate()
    assert r.add(0.0, 0) is None
    assert r.add(1.0, 50) == 50.0
    assert r.add(2.0, 150) == 75.0
