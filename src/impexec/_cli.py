"""Command line: ``impexec worker|status|top|stop|end`` and the ``impexec-worker`` entry point."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._connection import ConnectionInfo, parse_key, resolve

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` or plain seconds → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 30s, 10m, 2h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _worker_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Join a running impexec executor as a worker.")
    p.add_argument(
        "--connect",
        required=True,
        metavar="FILE|URL|-",
        help="connection file written by ClusterExecutor.connection_file(), "
        "tcp://host:port (with --key), or - to read the file's JSON from stdin",
    )
    p.add_argument(
        "--key",
        metavar="HEX",
        help="the executor's key (with a URL; or set IMPEXEC_KEY)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes (default 1); crashed ones are replaced",
    )
    p.add_argument(
        "--runtime",
        type=parse_duration,
        metavar="DURATION",
        help="stop taking work after this long (30s, 10m, 2h, 1d), finish, and leave",
    )
    p.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when standard input closes (SSHWorkers: a closed ssh ends the worker)",
    )
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the broker's answer at start (default 60)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more (-v info, -vv debug)",
    )
    return p


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )


def _read_connection(target: str, key: str | None) -> ConnectionInfo:
    """``-``: one line of connection-file JSON on stdin (keeps the key out of ``ps``)."""
    if target != "-":
        return resolve(target, key)
    line = sys.stdin.readline()
    if not line.strip():
        raise ValueError("--connect -: expected the connection JSON on standard input")
    info = ConnectionInfo.from_json(json.loads(line))
    if key:
        info = ConnectionInfo(**{**info.__dict__, "key": parse_key(key)})
    return info


def _exit_with_stdin(code: int, connection_file: str | None = None) -> None:
    """Exit the process (at once, whatever runs) when standard input reaches end of file.

    The process that held it open is gone or let go: with a connection file in an
    executor's private directory, that directory is removed if it is orphaned.
    """

    from ._worker import exit_now

    def watch() -> None:
        try:  # os.read, not sys.stdin: a daemon thread blocked in a buffered reader
            while os.read(0, 65536):  # aborts the interpreter at exit
                pass
        except OSError:
            pass
        exit_now(code, "impexec worker: standard input closed: exiting\n", connection_file)

    threading.Thread(target=watch, name="impexec-stdin", daemon=True).start()
    # tasks that read standard input get end of file (as with a worker started without
    # one), not a wait for ever on a pipe nobody writes to; fd 0 stays the watched pipe
    sys.stdin = open(os.devnull)  # noqa: SIM115 (lives as long as the process)


def worker_main(argv: Sequence[str] | None = None, prog: str = "impexec-worker") -> int:
    args = _worker_parser(prog).parse_args(argv)
    _setup_logging(args.verbose)
    try:
        conn = _read_connection(args.connect, args.key)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    if args.processes < 1:
        sys.stderr.write(f"{prog}: --processes must be >= 1\n")
        return 2
    from . import _syspath
    from ._worker import EXIT_BROKER_GONE, Worker

    _syspath.adopt()  # a local worker: the client's sys.path, before any task is read
    if args.exit_with_stdin:
        _exit_with_stdin(EXIT_BROKER_GONE, _connection_file(args.connect))
    if args.processes == 1:
        return Worker(
            conn,
            tag=args.tag,
            runtime=args.runtime,
            connect_timeout=args.connect_timeout,
            connection_file=_connection_file(args.connect),
        ).run()
    return _supervise(args, conn)


def _connection_file(target: str) -> str | None:
    """The connection file named on the command line (not ``-``, not a URL)."""
    return None if target == "-" or "://" in target else target


def _supervise(args: argparse.Namespace, conn: ConnectionInfo) -> int:
    """Run ``--processes N`` workers; replace those that crash; end when all have left."""
    from ._supervisor import Supervisor

    return Supervisor(args, conn, _connection_file(args.connect), lambda: _broker_alive(conn)).run()


def _request(target: str, key: str | None, kind_name: str, timeout: float) -> dict[str, Any]:
    return _ask(resolve(target, key), kind_name, timeout)


def _broker_alive(conn: ConnectionInfo, timeout: float = 3.0) -> bool:
    try:
        _ask(conn, "STATUS", timeout)
    except Exception:  # no answer, or an answer we cannot read: not there for us
        return False
    return True


def _ask(conn: ConnectionInfo, kind_name: str, timeout: float) -> dict[str, Any]:
    import zmq

    from ._protocol import Kind, ProtocolError, client_keys, decode, encode

    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if conn.server_key:
        sock.setsockopt(zmq.CURVE_SERVERKEY, conn.server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, (conn.client_public or "").encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, (conn.client_secret or "").encode())
    try:
        sock.connect(conn.address)
        # numbered by the clock (the broker refuses an old or replayed request); a URL
        # names no session: the broker accepts the all-zero one for a fresh request
        session = conn.session or b"\0" * 8
        to_broker, from_broker = client_keys(conn.key)
        sock.send_multipart(encode(to_broker, Kind[kind_name], session, int(time.time() * 1e6)))
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(
                f"no answer from {conn.address} within {timeout:g} s "
                "(not running, wrong address, or wrong key)"
            )
        for msg in decode(from_broker, sock.recv_multipart(), conn.session or None):
            if msg.kind == Kind.STATUS_REPLY:
                return msg.json()
        raise ProtocolError("unexpected answer")
    finally:
        sock.close()
        zctx.term()


def _stop(args: argparse.Namespace) -> int:
    before = _request(args.target, args.key, "STATUS", args.timeout)
    after = _request(args.target, args.key, "STOP_WORKERS", args.timeout)
    print(
        f"asked {before.get('workers', 0)} worker(s) to finish and leave "
        f"({after.get('workers', 0)} still finishing their tasks)"
    )
    waiting = int(after.get("queued", 0))
    if waiting:
        # the run is not over: say so, or the owner waits for workers that never come
        print(
            f"{waiting} queued call(s) wait for workers that join later; "
            f"`impexec end {args.target}` ends the run instead"
        )
    return 0


def _end(args: argparse.Namespace) -> int:
    before = _request(args.target, args.key, "STATUS", args.timeout)
    after = _request(args.target, args.key, "END_RUN", args.timeout)
    cancelled = int(after.get("cancelled", 0)) - int(before.get("cancelled", 0))
    ended = int(after.get("failed", 0)) - int(before.get("failed", 0))
    print(
        f"ended the run at {after.get('address', args.target)}: {cancelled} queued call(s) "
        f"cancelled, {ended} call(s) on workers given up ({after.get('done', 0)} were done); "
        "its workers leave, and the program's waiting futures are released "
        "(CancelledError)"
    )
    return 0


def _watch_cmd(args: argparse.Namespace, interval: float) -> int:
    from ._watch import watch

    # Ctrl-C ends the watch even when started from a shell or CI runner that
    # ignores SIGINT for background jobs (Python keeps an inherited SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    conn = resolve(args.target, args.key)
    return watch(
        conn, args.target, interval, args.timeout, getattr(args, "json", False), sys.stdout, sys.stderr
    )


#: The commands that talk to a running executor, and their help.
_CLIENT_COMMANDS = (
    ("status", "show an executor's figures (--watch: live, until the run ends)"),
    ("top", "a live view of the run (the same as status --watch)"),
    ("stop", "ask the executor's workers to finish and leave (the run waits for others)"),
    ("end", "end the run: cancel its queued calls, release its program, dismiss workers"),
)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="impexec",
        description="Run a worker for, watch, stop or end an impexec executor.",
    )
    parser.add_argument("--version", action="version", version=f"impexec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a worker (same as impexec-worker)", add_help=False)
    for name, text in _CLIENT_COMMANDS:
        p = sub.add_parser(name, help=text, description=text)
        _add_target(p)
        if name == "status":
            p.add_argument(
                "--json", action="store_true", help="print JSON (with --watch: one object per line)"
            )
            p.add_argument(
                "--watch",
                type=float,
                nargs="?",
                const=1.0,
                metavar="S",
                help="refresh every S seconds (default 1) until the run ends or Ctrl-C",
            )
        if name == "top":
            p.add_argument(
                "--interval",
                type=float,
                default=1.0,
                metavar="S",
                help="seconds between refreshes (default 1)",
            )
    return parser


def _add_target(p: argparse.ArgumentParser) -> None:
    """The options every client command has: which executor, and how long to wait."""
    p.add_argument(
        "target",
        metavar="FILE|URL",
        help="the executor's connection file, or tcp://host:port with --key",
    )
    p.add_argument(
        "--key",
        metavar="HEX",
        help="the executor's key (with a URL; or IMPEXEC_KEY)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the answer (default 5)",
    )


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch_cmd(args, args.watch)
    from ._watch import show_status

    return show_status(resolve(args.target, args.key), args.timeout, args.json, sys.stdout)


_RUN: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": _status,
    "top": lambda args: _watch_cmd(args, args.interval),
    "stop": _stop,
    "end": _end,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:], prog="impexec worker")
    args = parser.parse_args(argv)
    try:
        return _RUN[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, TimeoutError) as exc:
        sys.stderr.write(f"impexec {args.command}: {exc}\n")
        return 1


__all__ = ["main", "parse_duration", "worker_main"]
