"""The Camunda engine runs on PostgreSQL unless H2 is asked for, and its history is cleaned up."""

from __future__ import annotations

from pathlib import Path

import yaml

from edpo.camunda import ORDER_FULFILMENT_BPMN
from edpo.config import Settings
from edpo.dev.servers import Camunda

ROOT = Path(__file__).resolve().parents[2]


def _engine(tmp_path: Path, **values: object) -> Camunda:
    """The engine server with the given settings, the rest at their defaults (not the environment's)."""
    chosen: dict[str, object] = {"camunda_db": "postgres", "camunda_db_url": "", "camunda_db_user": "", **values}
    return Camunda(Settings(run_dir=tmp_path, host="127.0.0.1", pg_port=55432, **chosen))


def test_the_engine_uses_the_camunda_database_of_the_projects_postgresql_by_default(tmp_path: Path) -> None:
    assert _engine(tmp_path).datasource() == ("jdbc:postgresql://127.0.0.1:55432/camunda", "camunda")


def test_h2_only_when_asked_for(tmp_path: Path) -> None:
    url, user = _engine(tmp_path, camunda_db="h2").datasource()
    assert url.startswith(f"jdbc:h2:file:{tmp_path}/camunda/camunda;") and user == "sa"


def test_a_jdbc_url_setting_overrides_the_choice(tmp_path: Path) -> None:
    engine = _engine(tmp_path, camunda_db="h2", camunda_db_url="jdbc:postgresql://db:5432/bpm", camunda_db_user="bpm")
    assert engine.datasource() == ("jdbc:postgresql://db:5432/bpm", "bpm")


def test_the_order_process_declares_a_history_time_to_live() -> None:
    assert 'camunda:historyTimeToLive="P7D"' in ORDER_FULFILMENT_BPMN.read_text()


def test_the_engine_cleans_up_history_by_removal_time_inside_a_batch_window() -> None:
    config = yaml.safe_load((ROOT / "infra" / "camunda" / "src" / "main" / "resources" / "application.yaml").read_text())
    engine = config["camunda"]["bpm"]["generic-properties"]["properties"]
    assert engine["history-cleanup-strategy"] == "removalTimeBased"
    assert engine["history-cleanup-batch-window-start-time"] and engine["history-cleanup-batch-window-end-time"]
    assert config["spring"]["datasource"]["url"].endswith("jdbc:postgresql://127.0.0.1:55432/camunda}")


def test_compose_runs_the_engine_on_the_postgres_service() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    camunda = services["camunda"]
    assert camunda["environment"]["DB_URL"] == "jdbc:postgresql://postgres:5432/camunda"
    assert camunda["depends_on"]["postgres"]["condition"] == "service_healthy"
