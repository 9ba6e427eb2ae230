"""docker-compose.yml stays valid for users with Docker (checked by the docker client, no engine needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_docker_compose_config_is_valid() -> None:
    result = subprocess.run(["docker", "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_runs_the_three_servers_and_one_worker_per_service() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"kafka", "camunda", "postgres"} <= services.keys()
    for name in ("order", "warehouse", "factory", "delivery"):
        assert services[name]["command"][:3] == ["edpo", "worker", name]
