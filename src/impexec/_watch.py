"""``impexec status [--watch]`` and ``impexec top``: an executor's figures, once or live.

The live view keeps one socket to the broker for the whole watch: the broker remembers
who asked for its status lately and tells them, as it stops, that the run ended, so the
watch can say so (exit status 0) instead of timing out on an executor that is gone.
On a terminal the view is redrawn in place with plain ANSI sequences (cursor home,
clear to end of line and of screen), which every terminal emulator and tmux understand;
elsewhere (a pipe, a log file) each refresh is printed as a block of lines.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from typing import IO, Any

from ._connection import ConnectionInfo

#: Seconds of history the rate (and so the ETA) is computed over.
RATE_WINDOW_S = 10.0

_HOME, _CLEAR_EOL, _CLEAR_EOS = "\x1b[H", "\x1b[K", "\x1b[J"
_HIDE_CURSOR, _SHOW_CURSOR, _CLEAR = "\x1b[?25l", "\x1b[?25h", "\x1b[2J"
_COUNTS = ("queued", "running", "done", "failed", "resubmitted", "cancelled")


class NoAnswer(TimeoutError):
    pass


class StatusClient:
    """One DEALER socket to a broker, kept open across requests."""

    def __init__(self, conn: ConnectionInfo):
        import zmq

        self.conn = conn
        self._zctx = zmq.Context()
        sock = self._zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if conn.server_key:
            sock.setsockopt(zmq.CURVE_SERVERKEY, conn.server_key.encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, (conn.client_public or "").encode())
            sock.setsockopt(zmq.CURVE_SECRETKEY, (conn.client_secret or "").encode())
        sock.connect(conn.address)
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close(linger=0)
        self._zctx.term()

    def send(self, kind_name: str) -> None:
        from ._protocol import Kind, client_keys, encode

        # numbered by the clock (the broker refuses an old or replayed stop/end); a URL
        # names no session: the broker accepts the all-zero one for a fresh request
        self._seq = max(self._seq + 1, int(time.time() * 1e6))
        session = self.conn.session or b"\0" * 8
        self._sock.send_multipart(encode(client_keys(self.conn.key)[0], Kind[kind_name], session, self._seq))

    def receive(self, timeout: float) -> list[dict[str, Any]]:
        """Status replies that arrive within *timeout* (all those already waiting)."""
        from ._protocol import Kind, ProtocolError, client_keys, decode

        out: list[dict[str, Any]] = []
        wait_ms = int(timeout * 1000)
        while self._sock.poll(wait_ms):
            wait_ms = 0
            try:
                msgs = list(
                    decode(
                        client_keys(self.conn.key)[1], self._sock.recv_multipart(), self.conn.session or None
                    )
                )
            except ProtocolError:
                continue  # not for us, or not from our executor: ignore it
            out += [m.json() for m in msgs if m.kind == Kind.STATUS_REPLY]
        return out

    def ask(self, kind_name: str, timeout: float) -> dict[str, Any]:
        self.send(kind_name)
        replies = self.receive(timeout)
        if not replies:
            raise NoAnswer(
                f"no answer from {self.conn.address} within {timeout:g} s "
                "(not running, wrong address, or wrong key)"
            )
        return _latest(replies)


def _latest(replies: list[dict[str, Any]]) -> dict[str, Any]:
    for r in replies:
        if r.get("state") == "ended":
            return r
    return replies[-1]


# -- text --------------------------------------------------------------------------------
def _n(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) else str(value)


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def status_lines(data: dict[str, Any]) -> list[str]:
    """The one-shot text of ``impexec status`` (also each block of a watch off a terminal)."""
    state = data.get("state", "running")
    lines = [
        f"impexec {data.get('version', '?')} at {data.get('address', '?')} ({state})  "
        f"workers={data.get('workers', 0)}",
        "calls  " + "  ".join(f"{k}={data.get(k, 0)}" for k in _COUNTS),
        "tasks  "
        + "  ".join(f"{k}={data.get('tasks_' + k, 0)}" for k in _COUNTS)
        + "  (a task is one submit or one map chunk)",
    ]
    for w in data.get("workers_list", []):
        draining = " draining" if w.get("draining") else ""
        lines.append(
            f"  {w['name']:<28} tag={w.get('tag') or '-':<20} "
            f"held={w.get('held_items', w['held'])} done={w.get('items_done', w['completed'])}"
            f"{draining}"
        )
    return lines


class Rate:
    """Calls finished per second over the last RATE_WINDOW_S seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, finished: int) -> float | None:
        self._samples.append((now, finished))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        if now - t0 < 0.5:
            return None
        return max(0, finished - n0) / (now - t0)


def live_lines(
    data: dict[str, Any], rate: float | None, width: int, height: int, target: str, utf8: bool
) -> list[str]:
    """The screen of the live view (``status --watch`` on a terminal, ``impexec top``)."""
    state = data.get("state", "running")
    done, failed = int(data.get("done", 0)), int(data.get("failed", 0))
    queued, running = int(data.get("queued", 0)), int(data.get("running", 0))
    cancelled = int(data.get("cancelled", 0))
    total = done + failed + queued + running + cancelled
    finished = done + failed + cancelled
    frac = finished / total if total else 0.0
    bar_w = max(10, min(50, width - 30))
    full = int(frac * bar_w)
    fill, empty = ("█", "·") if utf8 else ("#", ".")
    lines = [
        f"impexec {data.get('version', '?')}  {data.get('address', '?')}  [{state}]  "
        f"{time.strftime('%H:%M:%S')}",
        "",
        f"calls   done {_n(done)}   failed {_n(failed)}   retried {_n(data.get('resubmitted', 0))}"
        f"   cancelled {_n(cancelled)}   running {_n(running)}   queued {_n(queued)}",
        f"        {fill * full}{empty * (bar_w - full)} {frac:4.0%} of {_n(total)} submitted",
        _speed(state, queued, running, bool(data.get("workers")), rate),
        f"tasks   done {_n(data.get('tasks_done', 0))}   failed {_n(data.get('tasks_failed', 0))}"
        f"   running {_n(data.get('tasks_running', 0))}   queued {_n(data.get('tasks_queued', 0))}"
        "   (a task is one submit or one map chunk)",
        f"workers {_n(data.get('workers', 0))} connected   {_n(data.get('workers_joined', 0))} joined"
        f"   {_n(data.get('workers_lost', 0))} lost",
        "",
        f"{'WORKER':<28} {'TAG':<22} {'STATE':<9} {'HELD':>7} {'DONE':>9}   (calls)",
    ]
    workers = data.get("workers_list", [])
    room = max(1, height - len(lines) - 3)  # and "... more", a blank line, the footer
    for w in workers[:room]:
        held = int(w.get("held_items", w.get("held", 0)))
        st = "draining" if w.get("draining") else ("busy" if held else "idle")
        lines.append(
            f"{w['name'][:28]:<28} {(w.get('tag') or '-')[:22]:<22} {st:<9} "
            f"{_n(held):>7} {_n(w.get('items_done', w.get('completed', 0))):>9}"
        )
    if len(workers) > room:
        lines.append(f"... and {len(workers) - room} more workers")
    if state != "ended":
        lines.append("")
        lines.append(f"Ctrl-C leaves this view (the run goes on); `impexec end {target}` ends the run")
    return [line[:width] for line in lines]


def _speed(state: str, queued: int, running: int, workers: bool, rate: float | None) -> str:
    """The live view's rate and ETA line."""
    if state != "ended" and queued and not running and not workers:
        return "rate    0 calls/s   ETA -   (no worker connected: the queued calls wait)"
    if rate is None:
        return "rate    -" if state == "ended" else "rate    measuring..."
    left = queued + running
    eta = _clock(left / rate) if rate > 0 and left else ("-" if left else "0:00:00")
    return f"rate    {rate:,.1f} calls/s (last {RATE_WINDOW_S:g} s)   ETA {eta}"


# -- the commands --------------------------------------------------------------------------
def show_status(conn: ConnectionInfo, timeout: float, as_json: bool, out: IO[str]) -> int:
    client = StatusClient(conn)
    try:
        data = client.ask("STATUS", timeout)
    finally:
        client.close()
    if as_json:
        out.write(json.dumps(data, indent=1) + "\n")
    else:
        out.write("\n".join(status_lines(data)) + "\n")
    return 0


def watch(
    conn: ConnectionInfo,
    target: str,
    interval: float,
    timeout: float,
    as_json: bool,
    out: IO[str],
    err: IO[str],
    live: bool | None = None,
) -> int:
    """Refresh until Ctrl-C (exit 130) or the run ends (exit 0); 1 if the executor is lost."""
    if live is None:
        live = out.isatty() and not as_json and os.environ.get("TERM", "dumb") != "dumb"
    client = StatusClient(conn)
    screen = _Screen(out, target, as_json, live)
    seen = False
    try:
        while True:
            client.send("STATUS")
            replies = client.receive(timeout)
            if not replies:
                return _lost(conn, target, timeout, seen, live, out, err)
            data = _latest(replies)
            seen = True
            screen.show(data, measure=True)
            if data.get("state") != "ended":
                # sleep, but wake for the notice of a run that ends meanwhile
                notice = [r for r in client.receive(interval) if r.get("state") == "ended"]
                if not notice:
                    continue
                data = notice[-1]
                screen.show(data, measure=False)
            _say_ended(data, live, out)
            return 0
    finally:
        screen.close()
        client.close()


class _Screen:
    """Where a watch shows each status: JSON lines, the live view redrawn in place on a
    terminal, or blocks of lines."""

    def __init__(self, out: IO[str], target: str, as_json: bool, live: bool) -> None:
        self.out, self.target, self.as_json, self.live = out, target, as_json, live
        self.utf8 = "utf" in (getattr(out, "encoding", "") or "").lower()
        self.rate = Rate()
        self.last_rate: float | None = None
        if live:
            out.write(_HIDE_CURSOR + _CLEAR + _HOME)

    def show(self, data: dict[str, Any], *, measure: bool) -> None:
        """Show *data*; *measure*: count its finished calls into the rate."""
        out = self.out
        if self.as_json:
            out.write(json.dumps(data) + "\n")
        elif self.live:
            size = shutil.get_terminal_size()
            if measure:
                finished = int(data.get("done", 0)) + int(data.get("failed", 0))
                self.last_rate = self.rate.add(time.monotonic(), finished)
            lines = live_lines(data, self.last_rate, size.columns, size.lines - 1, self.target, self.utf8)
            out.write(_HOME + "".join(f"{line}{_CLEAR_EOL}\n" for line in lines) + _CLEAR_EOS)
        else:
            out.write("\n".join(status_lines(data)) + "\n\n")
        out.flush()

    def close(self) -> None:
        if self.live:
            self.out.write(_SHOW_CURSOR)
            self.out.flush()


def _say_ended(data: dict[str, Any], live: bool, out: IO[str]) -> None:
    if live:
        out.write(_CLEAR_EOL)
    out.write(
        f"the run ended: {data.get('done', 0)} calls done, {data.get('failed', 0)} failed, "
        f"{data.get('cancelled', 0)} cancelled\n"
    )
    out.flush()


def _lost(
    conn: ConnectionInfo, target: str, timeout: float, seen: bool, live: bool, out: IO[str], err: IO[str]
) -> int:
    if seen and os.path.exists(target) is False and not target.startswith(("tcp://", "ipc://")):
        # the executor removes the connection file it made itself when it ends
        out.write(f"{_CLEAR_EOL if live else ''}the run ended (its connection file is gone)\n")
        out.flush()
        return 0
    what = (
        "stopped answering: the program that owns the executor exited or was killed, or the network is down"
        if seen
        else "did not answer (not running, wrong address, or wrong key)"
    )
    err.write(f"impexec status: {conn.address} {what} (waited {timeout:g} s)\n")
    return 1


__all__ = ["StatusClient", "live_lines", "show_status", "status_lines", "watch"]
