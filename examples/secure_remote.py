"""An encrypted executor that remote workers join with its connection file.

    python examples/secure_remote.py

``encrypt=True`` makes the broker a CurveZMQ server that admits only its own client key;
the connection file (mode 0600) carries the address, the HMAC key and the CURVE keys. On
a real network you would bind ``address="tcp://0.0.0.0:5555"`` with
``advertise="head.example.org"``, copy the file to each host (``scp -p``) and run there:

    impexec-worker --connect impexec.json --processes 8

This script does the same on loopback so it runs anywhere: it starts the worker command
itself, asks ``impexec status``, and shows that a client without the CURVE keys cannot
even finish the handshake (see docs/security.md).
"""

import json
import logging
import os
import stat
import subprocess
import sys
import tempfile

import zmq

from impexec import ClusterExecutor

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # shows the refusal


def cube(x: int) -> int:
    return x**3


def impexec(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "impexec", *args], **kwargs)


with ClusterExecutor(workers=None, encrypt=True) as ex, tempfile.TemporaryDirectory() as tmp:
    path = ex.connection_file(os.path.join(tmp, "impexec.json"))
    with open(path) as f:
        conn = json.load(f)
    fields = sorted(k for k, v in conn.items() if v)
    print("connection file", path, "mode", oct(stat.S_IMODE(os.stat(path).st_mode)), "holds", fields)

    worker = impexec("worker", "--connect", path)  # what you would run on each remote host
    print("sum of cubes:", sum(ex.map(cube, range(100), timeout=120)))
    impexec("status", path).wait(30)

    # a client with the right address but no CURVE keys: the handshake fails, nothing is read
    print("Now a client without the CURVE keys connects. The broker refuses its handshake and")
    print("logs a WARNING about it below: that refusal is what this part demonstrates.", flush=True)
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as plain:
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(conn["address"])
        plain.send(b"hello?")
        print("plaintext client answered:", bool(plain.poll(1000)), "(as intended: it was refused)")

    impexec("stop", path).wait(30)  # the joined worker drains and leaves
    print("worker exit status:", worker.wait(30))
