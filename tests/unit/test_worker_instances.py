"""Which instances of a service run, and the number one more worker joins as (from the pid files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edpo.config import Settings
from edpo.dev.workers import free_instance, running_instances


def _pid_file(run_dir: Path, name: str, pid: int) -> None:
    folder = run_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pid").write_text(str(pid))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_worker_running_means_the_next_joins_as_instance_2(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    _pid_file(tmp_path, "warehouse-1", os.getpid())
    assert running_instances(settings, "warehouse") == [1]
    assert free_instance(settings, "warehouse") == 2


def test_two_workers_running_means_the_next_joins_as_instance_3(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    for n in (1, 2):
        _pid_file(tmp_path, f"warehouse-{n}", os.getpid())
    assert running_instances(settings, "warehouse") == [1, 2]
    assert free_instance(settings, "warehouse") == 3


def test_a_dead_worker_and_other_services_leave_their_numbers_free(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    _pid_file(tmp_path, "warehouse-1", os.getpid())
    _pid_file(tmp_path, "warehouse-2", _dead_pid())
    _pid_file(tmp_path, "order-2", os.getpid())
    _pid_file(tmp_path, "order-3", os.getpid())
    assert running_instances(settings, "warehouse") == [1]
    assert free_instance(settings, "warehouse") == 2
    assert running_instances(settings, "order") == [2, 3]
    assert free_instance(settings, "order") == 1


def test_no_worker_running_means_instance_1(tmp_path: Path) -> None:
    assert running_instances(Settings(run_dir=tmp_path), "delivery") == []
    assert free_instance(Settings(run_dir=tmp_path), "delivery") == 1
