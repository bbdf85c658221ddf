"""Running an example as CI runs it, and reading what it prints: shared by the example tests."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Runs an example as __main__ with every socket connection refused: nothing may be downloaded.
_OFFLINE = (
    "import runpy, socket, sys\n"
    "def refuse(*args, **kwargs):\n"
    "    raise OSError('network access attempted')\n"
    "socket.socket.connect = refuse\n"
    "socket.socket.connect_ex = refuse\n"
    "runpy.run_path(sys.argv[1], run_name='__main__')\n"
)


def run_offline(name: str, *, quiet_stderr: bool = True) -> str:
    """Run ``examples/<name>`` offline with warnings as errors; its stdout. It must exit 0 and,
    with ``quiet_stderr``, write nothing to stderr."""
    done = subprocess.run([sys.executable, "-W", "error", "-c", _OFFLINE, str(EXAMPLES / name)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    if quiet_stderr:
        assert done.stderr == ""
    return done.stdout


def value(out: str, label: str) -> str:
    """The rest of the first printed line that starts with ``label: ``."""
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{label}: "))
    return line.removeprefix(f"{label}: ")


def listed(out: str, label: str) -> list[str]:
    """The Python list printed after ``label: ``."""
    return list(ast.literal_eval(value(out, label)))
