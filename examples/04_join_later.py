"""Workers that join later: start an executor with no workers, then join it by hand.

    python examples/04_join_later.py

The executor starts with ``workers=None`` and queues the work. It writes its connection
file (mode 0600: it holds the key); a worker started from a shell, on this machine or any
machine that reaches the address, joins with:

    impexec-worker --connect /path/to/connection.json --processes 2

and gets the queued work at once. Here the script starts that command itself, watches
``impexec status``, and ends with ``impexec stop`` (the workers drain and leave).
"""

import subprocess
import sys
import time

from impexec import ClusterExecutor


def square(x: int) -> int:
    time.sleep(0.01)
    return x * x


def impexec(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "impexec", *args], **kwargs)


with ClusterExecutor(workers=None) as ex:
    futures = [ex.submit(square, x) for x in range(100)]  # queued: no worker yet
    path = ex.connection_file()
    print("queued:", ex.statistics().queued, "- join with: impexec-worker --connect", path)
    worker = impexec("worker", "--connect", path, "--processes", "2")
    print("sum of squares:", sum(f.result(timeout=60) for f in futures))
    impexec("status", path).wait(30)
    impexec("stop", path).wait(30)  # the joined workers finish and leave
    print("worker exit status:", worker.wait(30))
