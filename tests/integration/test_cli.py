"""`edpo infra up|status|down` on a second, isolated stack (own run dir and ports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edpo.dev.process import pid_alive, port_open

# Not the fault-injection stack's ports (19092, 18080): the two may run side by side.
PORTS = {"EDPO_KAFKA_PORT": 29092, "EDPO_KAFKA_CONTROLLER_PORT": 29093, "EDPO_CAMUNDA_PORT": 28080, "EDPO_PG_PORT": 55442}


@pytest.fixture
def isolated_env(servers):  # noqa: ANN001, ANN201 - servers: the jars are built once, by the main stack
    run_dir = Path(tempfile.mkdtemp(prefix="edpo-cli-test-"))
    run_dir.chmod(0o755)  # the postgres user must be able to enter it
    env = dict(os.environ, EDPO_RUN_DIR=str(run_dir), **{k: str(v) for k, v in PORTS.items()})
    yield env, run_dir
    subprocess.run([sys.executable, "-m", "edpo.cli", "infra", "down"], env=env, capture_output=True)
    shutil.rmtree(run_dir, ignore_errors=True)


def _edpo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edpo.cli", *args], env=env, capture_output=True, text=True, timeout=400)


def _pids(run_dir: Path) -> list[int]:
    files = [run_dir / "kafka" / "kafka.pid", run_dir / "camunda" / "camunda.pid", run_dir / "postgres" / "data" / "postmaster.pid"]
    return [int(f.read_text().split("\n", 1)[0]) for f in files if f.exists()]


def test_infra_up_is_idempotent_status_reports_and_down_leaves_nothing_running(isolated_env) -> None:  # noqa: ANN001
    env, run_dir = isolated_env
    first = _edpo(env, "infra", "up")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("started") == 3, first.stdout
    pids = _pids(run_dir)
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)

    second = _edpo(env, "infra", "up")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == 3, second.stdout
    assert _pids(run_dir) == pids, "a second up must not start anything new"

    status = _edpo(env, "infra", "status")
    assert status.returncode == 0
    assert status.stdout.count("healthy") == 3, status.stdout

    down = _edpo(env, "infra", "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("stopped") == 3, down.stdout
    assert not any(pid_alive(p) for p in pids), "no server process may survive down"
    assert not any(port_open("127.0.0.1", p) for p in PORTS.values())

    after = _edpo(env, "infra", "status")
    assert after.returncode == 1
    assert after.stdout.count("stopped") == 3, after.stdout


def test_up_fails_with_one_clear_line_when_a_port_is_taken(isolated_env) -> None:  # noqa: ANN001
    import socket

    env, _ = isolated_env
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", PORTS["EDPO_KAFKA_PORT"]))
        blocker.listen()
        result = _edpo(env, "infra", "up")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "port 127.0.0.1:29092 is taken" in lines[0], result.stderr


def _processes_running(*words: str) -> list[int]:
    """Pids of live processes whose command line holds every word, in order."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone meanwhile
            continue
        text = " ".join(a.decode(errors="replace") for a in argv)
        if proc.name.isdigit() and " ".join(words) in text:
            found.append(int(proc.name))
    return found


def test_a_second_monitor_worker_is_refused_and_nothing_stays_behind(tmp_path: Path) -> None:
    from edpo.config import Settings

    # A run dir and a broker of its own: a worker that wrongly started would touch nothing shared.
    env = dict(os.environ, EDPO_RUN_DIR=str(tmp_path), EDPO_KAFKA_PORT="19099")
    monitor_2 = Settings(run_dir=tmp_path).web_port("monitor", 2)
    result = subprocess.run([sys.executable, "-m", "edpo.cli", "worker", "monitor", "--instance", "2"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == ("edpo: the monitor runs as one worker (its dashboard needs every partition): "
                                     "leave out --instance")
    assert _processes_running("edpo.cli", "worker", "monitor", "--instance", "2") == []
    assert not port_open("127.0.0.1", monitor_2), "no monitor-2 web server"
    assert not (tmp_path / "faust").exists(), "no worker state was created"
