"""Settings read from the environment, with defaults that work on one machine.

Every knob lives in ``SETTINGS_SPEC`` once: name, default and meaning. The README's
configuration table is generated from it (``edpo config``), so the two cannot drift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _default_root() -> Path:
    """The checkout when installed in development mode, else the working directory."""
    candidate = PACKAGE_ROOT.parent
    if (candidate / "infra").is_dir() and (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


# (env var, default, description). Defaults are strings, parsed by Settings.
SETTINGS_SPEC: list[tuple[str, str, str]] = [
    ("EDPO_ROOT", "", "Project directory holding infra/ (default: the checkout)"),
    ("EDPO_RUN_DIR", "", "Where server data, logs and pid files go (default: ROOT/.run)"),
    ("EDPO_HOST", "127.0.0.1", "Address every server and service binds to"),
    ("EDPO_KAFKA_PORT", "9092", "Kafka broker port"),
    ("EDPO_KAFKA_CONTROLLER_PORT", "9093", "Kafka KRaft controller port"),
    ("EDPO_KAFKA_BOOTSTRAP", "", "Kafka bootstrap servers (default: HOST:KAFKA_PORT)"),
    ("EDPO_KAFKA_HEAP", "512m", "Kafka JVM max heap"),
    ("EDPO_CAMUNDA_PORT", "8080", "Camunda engine HTTP port"),
    ("EDPO_CAMUNDA_URL", "", "Camunda engine REST base (default: http://HOST:CAMUNDA_PORT/engine-rest)"),
    ("EDPO_CAMUNDA_HEAP", "384m", "Camunda JVM max heap"),
    ("EDPO_CAMUNDA_DB_URL", "", "JDBC URL for the engine database (default: H2 file in RUN_DIR)"),
    ("EDPO_PG_PORT", "55432", "PostgreSQL port"),
    ("EDPO_PG_BIN", "", "Directory of the PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)"),
    ("EDPO_DATABASE_URL", "", "Order service database (default: postgresql://edpo@HOST:PG_PORT/edpo)"),
    ("EDPO_PARTITIONS", "4", "Partitions of every EDPO topic"),
    ("EDPO_ORDER_PORT", "6066", "Order service web port (REST API + table views)"),
    ("EDPO_WAREHOUSE_PORT", "6067", "Warehouse service web port"),
    ("EDPO_FACTORY_PORT", "6068", "Factory service web port"),
    ("EDPO_DELIVERY_PORT", "6069", "Delivery service web port"),
    ("EDPO_CATALOG", "", "JSON file with the catalog and starting stock (default: edpo/config/catalog.json)"),
    ("EDPO_FACTORY_LEAD_TIME", "5", "Seconds the factory needs for one production batch"),
    ("EDPO_FACTORY_MIN_BATCH", "10", "Smallest quantity the factory produces in one batch"),
    ("EDPO_FACTORY_CAPACITY", "100", "Largest quantity the factory produces in one batch"),
    ("EDPO_COURIER_TIME", "3", "Seconds a delivery takes"),
    ("EDPO_UNREACHABLE_PATTERN", "unreachable", "Regex (case-insensitive): matching addresses always fail delivery"),
    ("EDPO_DELIVERY_FAILURE_RATE", "0", "Probability (0..1) that a delivery fails at random"),
    ("EDPO_DELIVERY_ATTEMPTS", "3", "Delivery attempts before the order is compensated and cancelled"),
    ("EDPO_DELIVERY_RETRY_BACKOFF", "2", "Seconds the process waits before retrying a failed delivery"),
    ("EDPO_COMMAND_TIMEOUT", "5", "Seconds to wait for a command's acknowledgment before resending"),
    ("EDPO_COMMAND_ATTEMPTS", "5", "Sends of an unanswered command before giving up (backoff doubles)"),
    ("EDPO_TASK_POLLERS", "1", "Concurrent fetch-and-lock pollers per external-task topic in each worker"),
    ("EDPO_TASK_BATCH", "20", "Most external tasks one fetch-and-lock request takes"),
    ("EDPO_TASK_LOCK", "30", "Seconds an external task stays locked; renewed while its handler runs"),
    ("EDPO_TICK", "0.2", "Seconds between scans for due timers (production, courier, outbox, inbox)"),
    ("EDPO_LOG_LEVEL", "info", "Log level of workers"),
]


def _env(name: str) -> str:
    for spec_name, default, _ in SETTINGS_SPEC:
        if spec_name == name:
            return os.environ.get(name, default)
    raise KeyError(name)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A snapshot of the environment, parsed once."""

    root: Path
    run_dir: Path
    host: str
    kafka_port: int
    kafka_controller_port: int
    kafka_bootstrap: str
    kafka_heap: str
    camunda_port: int
    camunda_url: str
    camunda_heap: str
    camunda_db_url: str
    pg_port: int
    pg_bin: str
    database_url: str
    partitions: int
    web_ports: dict[str, int] = field(default_factory=dict)
    catalog_file: Path
    factory_lead_time: float
    factory_min_batch: int
    factory_capacity: int
    courier_time: float
    unreachable_pattern: str
    delivery_failure_rate: float
    delivery_attempts: int
    delivery_retry_backoff: float
    command_timeout: float
    command_attempts: int
    task_pollers: int
    task_batch: int
    task_lock: float
    tick: float
    log_level: str

    @classmethod
    def from_env(cls) -> Settings:
        """Read every EDPO_* variable, falling back to local defaults."""
        root = Path(_env("EDPO_ROOT") or _default_root())
        run_dir = Path(_env("EDPO_RUN_DIR") or root / ".run")
        host = _env("EDPO_HOST")
        kafka_port = int(_env("EDPO_KAFKA_PORT"))
        camunda_port = int(_env("EDPO_CAMUNDA_PORT"))
        pg_port = int(_env("EDPO_PG_PORT"))
        return cls(
            root=root,
            run_dir=run_dir,
            host=host,
            kafka_port=kafka_port,
            kafka_controller_port=int(_env("EDPO_KAFKA_CONTROLLER_PORT")),
            kafka_bootstrap=_env("EDPO_KAFKA_BOOTSTRAP") or f"{host}:{kafka_port}",
            kafka_heap=_env("EDPO_KAFKA_HEAP"),
            camunda_port=camunda_port,
            camunda_url=_env("EDPO_CAMUNDA_URL") or f"http://{host}:{camunda_port}/engine-rest",
            camunda_heap=_env("EDPO_CAMUNDA_HEAP"),
            camunda_db_url=_env("EDPO_CAMUNDA_DB_URL"),
            pg_port=pg_port,
            pg_bin=_env("EDPO_PG_BIN"),
            database_url=_env("EDPO_DATABASE_URL") or f"postgresql://edpo@{host}:{pg_port}/edpo",
            partitions=int(_env("EDPO_PARTITIONS")),
            web_ports={
                "order": int(_env("EDPO_ORDER_PORT")),
                "warehouse": int(_env("EDPO_WAREHOUSE_PORT")),
                "factory": int(_env("EDPO_FACTORY_PORT")),
                "delivery": int(_env("EDPO_DELIVERY_PORT")),
            },
            catalog_file=Path(_env("EDPO_CATALOG") or PACKAGE_ROOT / "config" / "catalog.json"),
            factory_lead_time=float(_env("EDPO_FACTORY_LEAD_TIME")),
            factory_min_batch=int(_env("EDPO_FACTORY_MIN_BATCH")),
            factory_capacity=int(_env("EDPO_FACTORY_CAPACITY")),
            courier_time=float(_env("EDPO_COURIER_TIME")),
            unreachable_pattern=_env("EDPO_UNREACHABLE_PATTERN"),
            delivery_failure_rate=float(_env("EDPO_DELIVERY_FAILURE_RATE")),
            delivery_attempts=int(_env("EDPO_DELIVERY_ATTEMPTS")),
            delivery_retry_backoff=float(_env("EDPO_DELIVERY_RETRY_BACKOFF")),
            command_timeout=float(_env("EDPO_COMMAND_TIMEOUT")),
            command_attempts=int(_env("EDPO_COMMAND_ATTEMPTS")),
            task_pollers=int(_env("EDPO_TASK_POLLERS")),
            task_batch=int(_env("EDPO_TASK_BATCH")),
            task_lock=float(_env("EDPO_TASK_LOCK")),
            tick=float(_env("EDPO_TICK")),
            log_level=_env("EDPO_LOG_LEVEL"),
        )

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"


def settings_table_markdown() -> str:
    """The configuration table for the README."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    rows += [f"| `{n}` | `{d}` | {m} |" if d else f"| `{n}` | | {m} |" for n, d, m in SETTINGS_SPEC]
    return "\n".join(rows)
