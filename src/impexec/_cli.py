"""Command line: ``impexec worker|status|stop`` and the ``impexec-worker`` entry point."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._connection import ConnectionInfo, resolve

logger = logging.getLogger("impexec")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` or plain seconds → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 30s, 10m, 2h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _worker_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Join a running impexec executor as a worker.")
    p.add_argument("--connect", required=True, metavar="FILE|URL",
                   help="connection file written by ClusterExecutor.connection_file(), or tcp://host:port")
    p.add_argument("--key", metavar="HEX", help="the executor's key (with a URL; or set IMPEXEC_KEY)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="run N worker processes (default 1); dead ones are replaced")
    p.add_argument("--runtime", type=parse_duration, metavar="DURATION",
                   help="stop taking work after this long (30s, 10m, 2h, 1d), finish, and leave")
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    p.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="seconds to wait for the broker's answer at start (default 60)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    return p


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def worker_main(argv: Sequence[str] | None = None, prog: str = "impexec-worker") -> int:
    args = _worker_parser(prog).parse_args(argv)
    _setup_logging(args.verbose)
    try:
        conn = resolve(args.connect, args.key)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    if args.processes < 1:
        sys.stderr.write(f"{prog}: --processes must be >= 1\n")
        return 2
    if args.processes == 1:
        from ._worker import Worker

        return Worker(conn, tag=args.tag, runtime=args.runtime,
                      connect_timeout=args.connect_timeout).run()
    return _supervise(args, conn)


def _supervise(args: argparse.Namespace, conn: ConnectionInfo) -> int:
    """Run ``--processes N`` workers; replace those that die; end when all have left."""
    from ._worker import EXIT_BROKER_GONE, EXIT_NO_BROKER, EXIT_OK

    child = [sys.executable, "-m", "impexec", "worker", "--connect", args.connect,
             "--connect-timeout", str(args.connect_timeout)]
    if args.key:
        child += ["--key", args.key]
    if args.runtime:
        child += ["--runtime", str(args.runtime)]
    child += ["-v"] * args.verbose
    deadline = time.monotonic() + args.runtime if args.runtime else None
    procs: dict[int, subprocess.Popen[bytes]] = {}
    backoff = dict.fromkeys(range(args.processes), 0.0)

    def spawn(i: int) -> None:
        left = None if deadline is None else max(1.0, deadline - time.monotonic())
        cmd = child if left is None else [*child[:-2], "--runtime", str(left)] if args.runtime else child
        procs[i] = subprocess.Popen([*cmd, "--tag", f"{args.tag or 'proc'}-{i}"])

    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    for i in range(args.processes):
        spawn(i)
    try:
        while procs and not stop:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[i]
                if rc in (EXIT_OK, EXIT_BROKER_GONE, EXIT_NO_BROKER):
                    continue  # left on purpose, or nothing to serve: do not replace
                if deadline is not None and time.monotonic() >= deadline:
                    continue
                backoff[i] = min(30.0, max(0.5, backoff[i] * 2))
                logger.warning("worker process %d exited with %s; replacing it in %.1f s", i, rc, backoff[i])
                time.sleep(backoff[i])
                spawn(i)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def _request(target: str, key: str | None, kind_name: str, timeout: float) -> dict[str, Any]:
    import zmq

    from ._protocol import Kind, ProtocolError, decode, encode

    conn = resolve(target, key)
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if conn.server_key:
        sock.setsockopt(zmq.CURVE_SERVERKEY, conn.server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, (conn.client_public or "").encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, (conn.client_secret or "").encode())
    try:
        sock.connect(conn.address)
        if not conn.session:
            raise ValueError("impexec status needs the connection file (it names the session)")
        sock.send_multipart(encode(conn.key, Kind[kind_name], conn.session, int(time.time() * 1e6)))
        if not sock.poll(timeout * 1000):
            raise TimeoutError(f"no answer from {conn.address} within {timeout:g} s")
        for msg in decode(conn.key, sock.recv_multipart(), conn.session):
            if msg.kind == Kind.STATUS_REPLY:
                return msg.json()  # type: ignore[no-any-return]
        raise ProtocolError("unexpected answer")
    finally:
        sock.close()
        zctx.term()


def _print_status(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=1))
        return
    keys = ("workers", "queued", "running", "done", "failed", "resubmitted", "cancelled")
    print(f"impexec {data.get('version', '?')} at {data.get('address', '?')}")
    print("  ".join(f"{k}={data.get(k, 0)}" for k in keys))
    for w in data.get("workers_list", []):
        state = " draining" if w.get("draining") else ""
        print(f"  {w['name']:<28} tag={w.get('tag') or '-':<20} held={w['held']} done={w['completed']}{state}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="impexec", description="impexec command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a worker (same as impexec-worker)", add_help=False)
    for name, text in (("status", "show an executor's statistics"),
                       ("stop", "ask the executor's workers to finish and leave")):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", metavar="FILE|URL")
        p.add_argument("--key", metavar="HEX")
        p.add_argument("--timeout", type=float, default=5.0)
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
            p.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="S",
                           help="refresh every S seconds (default 1) until interrupted")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:], prog="impexec worker")
    args = parser.parse_args(argv)
    try:
        if args.command == "stop":
            data = _request(args.target, args.key, "STOP_WORKERS", args.timeout)
            print(f"asked {data.get('workers', 0)} worker(s) to finish and leave")
            return 0
        if args.watch:
            while True:
                data = _request(args.target, args.key, "STATUS", args.timeout)
                if not args.json:
                    sys.stdout.write("\x1b[H\x1b[2J" if sys.stdout.isatty() else "")
                _print_status(data, args.json)
                sys.stdout.flush()
                time.sleep(args.watch)
        _print_status(_request(args.target, args.key, "STATUS", args.timeout), args.json)
        return 0
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, TimeoutError) as exc:
        sys.stderr.write(f"impexec {args.command}: {exc}\n")
        return 1


__all__ = ["main", "parse_duration", "worker_main"]
