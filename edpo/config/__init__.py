"""Settings: every knob declared once, read from `EDPO_*` environment variables.

Each field below is one setting: its name (``EDPO_`` + the field name in capitals), type,
default and meaning. The README's configuration table is generated from these fields
(``edpo config``), so code and documentation cannot drift. A settings object is built once,
by the command line or a test, and passed in; nothing reads the environment at import.

Passwords have no default in the code. An empty one is generated once per RUN_DIR into
``RUN_DIR/secrets.env`` (mode 0600) when settings are built, and read from there by every later
build with the same RUN_DIR; an environment variable still wins (see ``run_dir_secrets``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# The four business services. The monitor (a read model, one worker) is not among them.
SERVICES = ("order", "warehouse", "factory", "delivery")
MONITOR = "monitor"
# Every kind of worker `edpo worker` runs and `edpo up` starts.
WORKERS = (*SERVICES, MONITOR)
# Kinds of worker that run as one, whatever `edpo up --instances` says, and why: one member of the
# monitor's consumer group owns every partition, so its tables hold every order and SKU.
SINGLE_WORKERS = {MONITOR: "its dashboard needs every partition"}
# What a BPMN timer takes as a duration: P[nD]T[nH][nM][nS] (weeks, years and months too).
ISO_DURATION = re.compile(r"P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?")
# Further instances of a service listen on base port + 100 * (instance - 1).
INSTANCE_PORT_STEP = 100
# What the engine accepts as a user id (Camunda's default resource id pattern).
ENGINE_USER_ID = r"^[A-Za-z0-9]+$"
# Where generated passwords are kept, in RUN_DIR (git-ignored with it).
SECRETS_FILE = "secrets.env"
# The settings whose empty value means "generate one for this RUN_DIR".
GENERATED_SECRETS = ("camunda_password", "camunda_admin_password")


def refused_instance(worker: str, instance: int) -> str:
    """Why `edpo worker WORKER --instance N` may not run ("" when it may): a second worker of a kind
    that runs as one (SINGLE_WORKERS). `edpo up` starts only the instances this allows."""
    if instance != 1 and worker in SINGLE_WORKERS:
        return f"the {worker} runs as one worker ({SINGLE_WORKERS[worker]}): leave out --instance"
    return ""


def workers_to_start(instances: int) -> list[tuple[str, int]]:
    """The workers `edpo up --instances N` starts, as (kind, instance): N of each kind, but one of those
    that run as one."""
    return [(kind, n) for n in range(1, instances + 1) for kind in WORKERS if not refused_instance(kind, n)]


def _default_root() -> Path:
    """The checkout when installed in development mode, else the working directory."""
    candidate = PACKAGE_ROOT.parent
    if (candidate / "infra").is_dir() and (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


class Settings(BaseSettings):
    """A snapshot of the environment, parsed and checked once."""

    # An empty variable means "the default", as it did before the settings had types.
    model_config = SettingsConfigDict(env_prefix="EDPO_", env_ignore_empty=True, extra="ignore")

    root: Path = Field(default_factory=_default_root, description="Project directory holding infra/ (default: the checkout)")
    run_dir: Path = Field(
        default_factory=lambda s: s["root"] / ".run",
        description="Where server data, logs and pid files go (default: ROOT/.run)",
    )
    host: str = Field("127.0.0.1", description="Address every server and service binds to")
    kafka_port: int = Field(9092, description="Kafka broker port")
    kafka_controller_port: int = Field(9093, description="Kafka KRaft controller port")
    kafka_bootstrap: str = Field(
        default_factory=lambda s: f"{s['host']}:{s['kafka_port']}", description="Kafka bootstrap servers (default: HOST:KAFKA_PORT)")
    kafka_heap: str = Field("512m", description="Kafka JVM max heap")
    kafka_static_membership: bool = Field(
        True, description="Workers join their consumer group as SERVICE-INSTANCE (static membership): a restarted "
        "worker gets its partitions back at once, without waiting for its old session to expire",
    )
    kafka_session_timeout: float = Field(
        10, ge=6, le=90, description="Seconds without a heartbeat before Kafka gives a dead worker's partitions to others"
    )
    kafka_heartbeat_interval: float = Field(
        3, gt=0, description="Seconds between a worker's heartbeats to its consumer group (under a third of the session timeout)"
    )
    camunda_port: int = Field(8080, description="Camunda engine HTTP port")
    camunda_url: str = Field(
        default_factory=lambda s: f"http://{s['host']}:{s['camunda_port']}/engine-rest", description="Camunda engine REST base (default: http://HOST:CAMUNDA_PORT/engine-rest)"
    )
    camunda_webapp_url: str = Field(
        default_factory=lambda s: s["camunda_url"].rstrip("/").removesuffix("/engine-rest") + "/camunda/app",
        description="Where people open Cockpit and Tasklist: the dashboard's links (default: CAMUNDA_URL's server "
        "+ /camunda/app)",
    )
    camunda_user: str = Field(
        "edpo", pattern=ENGINE_USER_ID, description="Engine user (letters and digits) the workers, the process bridge, "
        "the dev tools and the tests use on /engine-rest (HTTP basic auth); the engine creates it at start",
    )
    camunda_password: str = Field(
        "", repr=False, description="Password of CAMUNDA_USER (empty: generated once per RUN_DIR into "
        "RUN_DIR/secrets.env, mode 0600, when settings are built, and read from there afterwards); the engine "
        "sets it at start",
    )
    camunda_admin_user: str = Field(
        "demo", pattern=ENGINE_USER_ID, description="Cockpit/Tasklist/Admin user of the engine (letters and digits; "
        "in the group camunda-admin; the demo's dispatcher)"
    )
    camunda_admin_password: str = Field(
        "", repr=False, description="Password of CAMUNDA_ADMIN_USER (empty: generated once per RUN_DIR into RUN_DIR/secrets.env "
        "when settings are built, as CAMUNDA_PASSWORD); the engine sets it at start",
    )
    camunda_heap: str = Field("384m", description="Camunda JVM max heap")
    camunda_db: Literal["postgres", "h2"] = Field(
        "postgres", description="Engine database: `postgres` (database `camunda` in the project's PostgreSQL, created "
        "on start) or `h2` (a file in RUN_DIR; a kill -9 of the engine can corrupt it)",
    )
    camunda_db_url: str = Field(
        "", repr=False, description="JDBC URL of the engine database, overrides CAMUNDA_DB (default: jdbc:postgresql://HOST:PG_PORT/camunda)"
    )
    camunda_db_user: str = Field("", description="Engine database user (default: camunda; sa for H2)")
    camunda_db_password: str = Field("", repr=False, description="Engine database password (default: none, the local cluster trusts)")
    camunda_db_pool: int = Field(10, ge=2, description="Most connections in the engine's database pool (HikariCP)")
    camunda_cleanup_window: str = Field(
        "00:00-23:59", pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
        description="Daily window (HH:MM-HH:MM) in which the engine removes history past its time to live (P7D)",
    )
    pg_port: int = Field(55432, description="PostgreSQL port")
    pg_bin: str = Field(
        "", description="Directory of the PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)"
    )
    database_url: str = Field(
        repr=False, default_factory=lambda s: f"postgresql://edpo@{s['host']}:{s['pg_port']}/edpo", description="Order service database (default: postgresql://edpo@HOST:PG_PORT/edpo)"
    )
    partitions: int = Field(4, ge=1, description="Partitions of every EDPO topic")
    order_port: int = Field(6066, description="Order service web port (REST API + table views)")
    warehouse_port: int = Field(6067, description="Warehouse service web port")
    factory_port: int = Field(6068, description="Factory service web port")
    delivery_port: int = Field(6069, description="Delivery service web port")
    monitor_port: int = Field(6070, description="Monitor web port: the live operations dashboard (one worker)")
    monitor_retention: float = Field(
        24, gt=0, description="Hours a finished order stays on the dashboard (counts, recent orders, its timeline) "
        "before the monitor forgets it",
    )
    ready_timeout: float = Field(
        180, gt=0, description="Seconds `edpo up` waits for every worker to report ready on /health"
    )
    instance: int = Field(
        1, ge=1, description="Which worker of its service this process is (`edpo worker --instance` sets it)"
    )
    catalog: Path = Field(
        default_factory=lambda: PACKAGE_ROOT / "config" / "catalog.json", description="JSON file with the catalog and starting stock (default: edpo/config/catalog.json)"
    )
    factory_lead_time: float = Field(5, ge=0, description="Seconds the factory needs for one production batch")
    factory_min_batch: int = Field(10, ge=1, description="Smallest quantity the factory produces in one batch")
    factory_capacity: int = Field(100, ge=1, description="Largest quantity the factory produces in one batch")
    courier_time: float = Field(3, ge=0, description="Seconds a delivery takes")
    unreachable_pattern: str = Field(
        "unreachable", description="Regex (case-insensitive): matching addresses always fail delivery"
    )
    silent_pattern: str = Field(
        "no news", description="Regex (case-insensitive): the courier of matching addresses never reports back, "
        "so the delivery becomes overdue (empty: none)"
    )
    silent_once_pattern: str = Field(
        "late news", description="Regex (case-insensitive): the first courier of matching addresses never reports "
        "back, a retried attempt's does (a dispatcher's retry delivers; empty: none)"
    )
    delivery_failure_rate: float = Field(
        0, ge=0, le=1, description="Probability (0..1) that a delivery fails at random"
    )
    delivery_attempts: int = Field(
        3, ge=1, description="Delivery attempts before the order is compensated and cancelled"
    )
    delivery_retry_backoff: float = Field(
        2, ge=0, description="Seconds the process waits before retrying a failed delivery"
    )
    delivery_timeout: str = Field(
        "PT30S", description="ISO 8601 duration: a delivery without news this long raises the user task "
        "\"Resolve overdue delivery\" (dispatchers decide: retry, cancel or wait)",
    )
    stock_timeout: str = Field(
        "PT5M", description="ISO 8601 duration: an order waiting this long for missing stock raises the user "
        "task \"Decide on delayed order\" (dispatchers decide: wait or cancel)",
    )
    order_deadline: str = Field(
        "PT30M", description="ISO 8601 duration: an order not finished this long after it was accepted raises "
        "the user task \"Investigate order\"",
    )
    dispatcher_user: str = Field(
        default_factory=lambda s: s["camunda_admin_user"],
        description="Engine user put into the group dispatchers (who sees the escalation tasks in Tasklist; "
        "default: CAMUNDA_ADMIN_USER); a user the engine does not have is skipped",
    )
    command_timeout: float = Field(
        5, gt=0, description="Seconds to wait for a command's acknowledgment before resending"
    )
    command_attempts: int = Field(
        5, ge=1, description="Sends of an unanswered command before giving up (backoff doubles)"
    )
    task_pollers: int = Field(
        1, ge=1, description="Concurrent fetch-and-lock pollers per external-task topic in each worker"
    )
    task_batch: int = Field(50, ge=1, description="Most external tasks one fetch-and-lock request takes")
    task_concurrency: int = Field(
        256, ge=1, description="External tasks a worker runs at once (most wait for a command's acknowledgment)"
    )
    task_lock: float = Field(
        10, gt=0, description="Seconds an external task stays locked; renewed while its handler runs (a crashed worker's tasks return after it)"
    )
    task_retries: int = Field(
        3, ge=1, description="Times an external task is tried before it becomes an incident in Cockpit (a handler "
        "that cannot do its job: a server down, a command never acknowledged)",
    )
    task_retry_backoff: float = Field(
        5, ge=0, description="Seconds the engine waits before handing a failed external task out again",
    )
    tick: float = Field(
        0.2, gt=0, description="Seconds between scans for due timers (production, courier, outbox, inbox)"
    )
    log_level: str = Field("info", description="Log level of workers")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines of the workers: text, or json (one object per line: time, level, service, "
        "instance, logger, message, order_id and trace_id where known, exception)"
    )
    log_max_mb: int = Field(
        10, ge=1, description="Megabytes a log file (engine, Kafka, each worker) grows to before it is rotated"
    )
    log_backups: int = Field(3, ge=1, le=20, description="Rotated files kept per log (NAME.log.1 is the newest)")
    kafka_linger_ms: float = Field(
        2, ge=0, description="Milliseconds a worker's producer waits to put more records into one request to Kafka"
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="Event loop of the workers: uvloop (libuv, less CPU per event) or Python's own asyncio"
    )
    reconcile_interval: float = Field(
        15, gt=0, description="Seconds between the order service's reconciliations of orders and process instances"
    )
    reconcile_grace: float = Field(
        30, ge=0, description="Seconds an order must be quiet before reconciliation repairs it"
    )
    table_retention: float = Field(
        300, gt=0, description="Seconds a finished order's reservation and delivery stay in the Faust tables"
    )
    retention_hours: float = Field(
        24, gt=0, description="Hours finished inbox and sent outbox rows are kept before they are pruned"
    )
    failpoints: str = Field(
        "", description="Crash points for fault injection, e.g. warehouse.after_store=kill@3 (edpo/runtime/failpoints.py)"
    )
    api_token: str = Field(
        "", repr=False, description="Bearer token the order, warehouse, factory and delivery HTTP APIs require for "
        "writes, personal data (deliveries, addresses, Faust table views) and /metrics when set; /health, /openapi.json, "
        "/docs, /catalog and stock stay open (empty: no token needed). The monitor's data needs it too: a browser "
        "signs in once at /login and gets a session cookie",
    )

    # The generated secrets this object took from RUN_DIR/secrets.env (not from the environment).
    _from_secrets_file: frozenset[str] = PrivateAttr(default=frozenset())

    def model_post_init(self, context: Any) -> None:
        """Fill empty passwords from RUN_DIR/secrets.env, generating it the first time."""
        empty = [name for name in GENERATED_SECRETS if not getattr(self, name)]
        if not empty:
            return
        stored = run_dir_secrets(self.run_dir)
        for name in empty:
            setattr(self, name, stored[env_name(name)])
        self._from_secrets_file = frozenset(empty)

    @property
    def secrets_file(self) -> Path:
        return self.run_dir / SECRETS_FILE

    def generated(self, name: str) -> bool:
        """Did this password come from RUN_DIR/secrets.env (rather than from the environment or the caller)?"""
        return name in self._from_secrets_file

    def secret_origin(self, name: str) -> str:
        """Where a password's value came from, for messages that must not print it."""
        return str(self.secrets_file) if self.generated(name) else f"${env_name(name)}"

    @field_validator("delivery_timeout", "stock_timeout", "order_deadline")
    @classmethod
    def _iso_duration(cls, value: str) -> str:
        """The engine reads these as BPMN timer durations: refuse what it would not parse."""
        if not ISO_DURATION.fullmatch(value) or value in ("P", "PT") or value.endswith("T"):
            raise ValueError(f"{value!r} is not an ISO 8601 duration such as PT30S, PT5M or P1D")
        return value

    @field_validator("root", "run_dir", "catalog")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        """Relative paths are taken from the directory edpo was started in, once: servers and
        workers run in directories of their own."""
        return path.resolve()

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def web_ports(self) -> dict[str, int]:
        """Base web port of each kind of worker (its first instance): the four services and the monitor."""
        return {s: getattr(self, f"{s}_port") for s in WORKERS}

    def web_port(self, service: str, instance: int | None = None) -> int:
        """The web port of one worker: the service's base port + 100 per further instance."""
        return self.web_ports[service] + INSTANCE_PORT_STEP * ((instance or self.instance) - 1)

    def for_instance(self, instance: int) -> Settings:
        """The same settings for another worker of a service."""
        return self.model_copy(update={"instance": instance})


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return f"EDPO_{field.upper()}"


def read_secrets(path: Path) -> dict[str, str]:
    """NAME=value lines of a secrets file ({} when there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.strip().partition("=") for line in text.splitlines())
    return {name.strip(): value.strip() for name, sep, value in pairs if sep and not name.startswith("#")}


def run_dir_secrets(run_dir: Path) -> dict[str, str]:
    """The generated secrets of a RUN_DIR (EDPO_* name -> value), creating RUN_DIR/secrets.env on first use.

    Several processes may build settings at once (`edpo up` and its workers, parallel tests):
    each writes fresh values to a temporary file and links it to the final name; os.link fails
    for all but the first, and they read the winner's. The file is complete whenever it exists."""
    path = run_dir / SECRETS_FILE
    wanted = [env_name(name) for name in GENERATED_SECRETS]
    found = read_secrets(path)
    if all(found.get(name) for name in wanted):
        return found
    run_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fresh = {name: secrets.token_urlsafe(24) for name in wanted}
        if _publish(path, fresh, link=True):
            return fresh
    found = read_secrets(path)  # another process's, complete once it exists
    if all(found.get(name) for name in wanted):
        return found
    # A file lacking some of them (written by hand, or before a secret was added): add those, one process at a time.
    with _locked(run_dir / f".{SECRETS_FILE}.lock"):
        found = read_secrets(path)
        missing = {name: secrets.token_urlsafe(24) for name in wanted if not found.get(name)}
        if missing:
            found = {**found, **missing}
            _publish(path, found, link=False)
    return found


def _publish(path: Path, values: dict[str, str], *, link: bool) -> bool:
    """Write values to a new 0600 file and put it at path: os.link (False if path exists) or os.replace."""
    lines = ["# Generated by edpo for this RUN_DIR: dev passwords. EDPO_* environment variables override them."]
    text = "\n".join([*lines, *(f"{name}={value}" for name, value in values.items()), ""])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{SECRETS_FILE}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if not link:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def settings_table_markdown() -> str:
    """The configuration table for the README, from the fields above."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        # Derived defaults (a factory) are explained in the description.
        default = " " if field.default in (PydanticUndefined, "") else f" `{field.default}` "
        rows.append(f"| `EDPO_{name.upper()}` |{default}| {field.description} |")
    return "\n".join(rows)
