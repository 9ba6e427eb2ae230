"""Background processes that outlive the CLI: pid files, logs, start, stop, health waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(Exception):
    """One clear line for the user: what failed and where to look."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def rotate(path: Path, backups: int) -> None:
    """Shift path to path.1, path.1 to path.2, ... keeping `backups` old files (the oldest is dropped)."""
    if not path.exists():
        return
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


# The standard output of a process that writes its own rotating log holds only what bypasses
# logging (a crash's traceback, the JVM's own messages): kept apart, rotated on start past this size.
OUTPUT_MAX_BYTES = 1024 * 1024


@dataclass
class ManagedProcess:
    """A detached process identified by a pid file under the run directory.

    log_file is its log; output_file, when given, takes its standard output and error instead
    of log_file (for a process that writes and rotates log_file itself)."""

    name: str
    pid_file: Path
    log_file: Path
    output_file: Path | None = None

    @property
    def logs(self) -> str:
        """Where to look when the process failed."""
        return f"{self.log_file} and {self.output_file}" if self.output_file else str(self.log_file)

    def pid(self) -> int | None:
        try:
            # first line only: postmaster.pid holds more
            pid = int(self.pid_file.read_text().split("\n", 1)[0].strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def spawn(self, argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
        """Start argv in its own session, its output appended to the output file (else the log file)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        output = self.output_file or self.log_file
        if self.output_file and output.exists() and output.stat().st_size > OUTPUT_MAX_BYTES:
            rotate(output, 1)
        with open(output, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the process group, SIGKILL what is left after timeout. True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True



def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: ManagedProcess | None = None,
    interval: float = 0.25,
) -> None:
    """Poll check() until it is true; fail early if proc dies, late if the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.running():
            raise StackError(f"{what} died while starting; see {proc.logs}")
        time.sleep(interval)
    log = f"; see {proc.logs}" if proc else ""
    raise StackError(f"{what} did not become healthy within {timeout:.0f}s{log}")
