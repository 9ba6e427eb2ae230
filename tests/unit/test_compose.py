"""docker-compose.yml stays valid for users with Docker (checked by the docker client, no engine needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDPO_")}
    return subprocess.run(["docker", "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, **env})


def test_docker_compose_config_is_valid() -> None:
    result = _compose_config(EDPO_CAMUNDA_ADMIN_PASSWORD="a-password")
    assert result.returncode == 0, result.stderr


def test_compose_wants_the_admin_password_from_the_environment() -> None:
    result = _compose_config()
    assert result.returncode != 0
    assert "EDPO_CAMUNDA_ADMIN_PASSWORD" in result.stderr


def test_compose_engine_requires_basic_auth_and_the_workers_sign_in() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    engine = services["camunda"]["environment"]
    assert engine["CAMUNDA_BPM_RUN_AUTH_ENABLED"] == "true"
    assert engine["CAMUNDA_BPM_ADMINUSER_PASSWORD"].startswith("${EDPO_CAMUNDA_ADMIN_PASSWORD:?")
    for name in ("order", "warehouse", "factory", "delivery"):
        worker = services[name]["environment"]
        assert worker["EDPO_CAMUNDA_USER"] == engine["CAMUNDA_BPM_ADMINUSER_ID"]
        assert worker["EDPO_CAMUNDA_PASSWORD"] == engine["CAMUNDA_BPM_ADMINUSER_PASSWORD"]


def test_compose_runs_the_three_servers_and_one_worker_per_service() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"kafka", "camunda", "postgres"} <= services.keys()
    for name in ("order", "warehouse", "factory", "delivery"):
        assert services[name]["command"][:3] == ["edpo", "worker", name]
