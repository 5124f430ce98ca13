"""Local workers import what the client can: they start with the client's sys.path.

Each test writes a real script with a module beside it into a temporary directory and
runs it with this interpreter from *another* directory, the way a user does
(``python ~/proj/run.py`` from their home): the script's directory is on the client's
sys.path, and it is not the workers' current directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

TIMEOUT = 120

MODEL = """
import os
import sys


def where(x):
    return {"file": __file__, "x": x, "pid": os.getpid(), "path": sys.path}
"""


def run_script(tmp_path: Path, body: str) -> dict:
    project = tmp_path / "project"
    project.mkdir()
    (project / "model.py").write_text(MODEL)
    script = project / "run.py"
    script.write_text(textwrap.dedent(body))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_module_beside_the_script_imports_on_local_workers(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        """
        import json
        from impexec import ClusterExecutor
        import model

        if __name__ == "__main__":
            with ClusterExecutor(2) as ex:
                print(json.dumps(ex.submit(model.where, 7).result(timeout=60)))
    """,
    )
    assert out["x"] == 7
    assert out["file"] == str(tmp_path / "project" / "model.py")
    # the worker's own current directory is not on its path, as it is not on the client's
    assert str(tmp_path / "elsewhere") not in out["path"]


def test_a_directory_the_script_put_on_sys_path_is_on_the_workers_too(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    out = run_script(
        tmp_path,
        f"""
        import json
        import sys
        sys.path.insert(0, {str(lib)!r})
        from impexec import ClusterExecutor
        import helpers

        if __name__ == "__main__":
            with ClusterExecutor(1) as ex:
                print(json.dumps({{"x": ex.submit(helpers.triple, 5).result(timeout=60)}}))
    """,
    )
    assert out["x"] == 15


def test_a_replaced_worker_gets_the_path_of_the_executors_start(tmp_path: Path) -> None:
    # the path is taken once, when the executor starts: a worker started later to replace
    # one that died imports the same modules, whatever the client did to sys.path since
    out = run_script(
        tmp_path,
        """
        import json
        import os
        import signal
        import sys
        import time
        from impexec import ClusterExecutor
        import model

        if __name__ == "__main__":
            with ClusterExecutor(1, heartbeat_interval=0.05, heartbeat_timeout=2) as ex:
                first = ex.submit(model.where, 1).result(timeout=60)
                sys.path.remove(os.path.dirname(os.path.abspath(__file__)))
                sys.path.append("/added/after/the/start")
                os.kill(first["pid"], signal.SIGKILL)
                deadline = time.monotonic() + 60
                while True:
                    second = ex.submit(model.where, 2).result(timeout=60)
                    if second["pid"] != first["pid"] or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            print(json.dumps({"first": first, "second": second}))
    """,
    )
    first, second = out["first"], out["second"]
    assert second["pid"] != first["pid"], "the killed worker was not replaced"
    assert second["path"] == first["path"]
    assert second["file"] == str(tmp_path / "project" / "model.py")
    assert "/added/after/the/start" not in second["path"]
