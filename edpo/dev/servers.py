"""The three real servers EDPO runs on: Kafka (KRaft), the Camunda 7 engine and PostgreSQL.

Each server knows how to prepare itself (fetch jars, format storage, init a cluster), start
detached, answer a real health check and stop. Nothing here is a fake: ``edpo infra up``
drives exactly these classes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from edpo.config import Settings
from edpo.dev.process import (
    OUTPUT_MAX_BYTES,
    ManagedProcess,
    StackError,
    port_open,
    rotate,
    wait_until,
)

logger = logging.getLogger(__name__)
# The engine's database and its owner role in the project's PostgreSQL cluster.
CAMUNDA_DATABASE = "camunda"


def require_tool(tool: str, why: str) -> str:
    """The path of a command-line tool; a clear error when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"{tool} is not installed ({why}); run `make setup` or install it")
    return path


def _stale(target: Path, *sources: Path) -> bool:
    """True if target is missing or older than any existing file under sources."""
    if not target.exists():
        return True
    mtime = target.stat().st_mtime
    for src in sources:
        files = src.rglob("*") if src.is_dir() else [src]
        if any(f.is_file() and f.stat().st_mtime > mtime for f in files):
            return True
    return False


def _mvn(settings: Settings, pom: Path, goals: list[str], log: Path) -> None:
    mvn = require_tool("mvn", "Maven fetches the Kafka and Camunda jars")
    require_tool("java", "Kafka and Camunda run on the JVM")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        done = subprocess.run([mvn, "-B", "-q", "-f", str(pom), *goals], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise StackError(f"mvn {' '.join(goals)} failed for {pom.relative_to(settings.root)}; see {log}")


class Server:
    """Shared shape: a name, a port, a managed process and a health check."""

    name = ""
    start_timeout = 120.0

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.dir = settings.run_dir / self.name
        # The server writes and rotates NAME.log itself; its standard output (what bypasses its logging,
        # such as the JVM's own messages on a crash) goes to NAME.out.
        self.proc = ManagedProcess(self.name, self.dir / f"{self.name}.pid", settings.log_dir / f"{self.name}.log",
                                   settings.log_dir / f"{self.name}.out")

    @property
    def port(self) -> int:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Fetch, build or initialise what start() needs; idempotent."""

    def launch(self) -> None:
        raise NotImplementedError

    def up(self) -> str:
        """Start unless already running and healthy; returns a status word."""
        if self.proc.running():
            if self.healthy():
                return "already running"
            wait_until(self.healthy, timeout=self.start_timeout, what=self.name, proc=self.proc)
            return "running"
        if port_open(self.s.host, self.port):
            raise StackError(
                f"{self.name}: port {self.s.host}:{self.port} is taken by another process "
                f"(not started by edpo); stop it or set the port variable"
            )
        self.prepare()
        self.launch()
        wait_until(self.healthy, timeout=self.start_timeout, what=self.name, proc=self.proc)
        return "started"

    def down(self) -> bool:
        return self.proc.stop()

    def status(self) -> str:
        if not self.proc.running():
            return "stopped"
        return "healthy" if self.healthy() else "starting/unhealthy"

    def describe(self) -> str:
        return f"{self.s.host}:{self.port}"


class Kafka(Server):
    """Single-node Kafka in KRaft mode (broker + controller), jars from Maven Central."""

    name = "kafka"
    start_timeout = 90.0

    @property
    def port(self) -> int:
        return self.s.kafka_port

    @property
    def pom(self) -> Path:
        return self.s.root / "infra" / "kafka" / "pom.xml"

    @property
    def classpath_file(self) -> Path:
        return self.dir / "classpath.txt"

    def ensure_classpath(self) -> str:
        """The jars of the broker and of Kafka's tools, resolved by Maven when the pom changed."""
        if _stale(self.classpath_file, self.pom):
            self.dir.mkdir(parents=True, exist_ok=True)
            _mvn(
                self.s,
                self.pom,
                ["dependency:build-classpath", f"-Dmdep.outputFile={self.classpath_file}"],
                self.s.log_dir / "mvn-kafka.log",
            )
        return self.classpath_file.read_text().strip()

    def prepare(self) -> None:
        self.ensure_classpath()
        props = self.dir / "server.properties"
        props.write_text(self._properties())
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            done = subprocess.run(
                [*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise StackError(f"kafka storage format failed: {(done.stderr or done.stdout).strip()[-300:]}")

    def _java(self) -> list[str]:
        java = require_tool("java", "Kafka runs on the JVM")
        log4j = self.s.root / "infra" / "kafka" / "log4j2.properties"
        return [
            java,
            f"-Xmx{self.s.kafka_heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dedpo.log.file={self.proc.log_file}",
            f"-Dedpo.log.max={self.s.log_max_mb}MB",
            f"-Dedpo.log.backups={self.s.log_backups}",
            "-cp",
            self.classpath_file.read_text().strip(),
        ]

    def _properties(self) -> str:
        h, p, c = self.s.host, self.s.kafka_port, self.s.kafka_controller_port
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{h}:{c}",
                f"listeners=PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
                f"advertised.listeners=PLAINTEXT://{h}:{p}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={self.dir / 'data'}",
                # Topics are declared in edpo/topics.py and created explicitly; an auto-created
                # topic gets the wrong partition count and breaks Faust's co-partitioning.
                "auto.create.topics.enable=false",
                f"num.partitions={self.s.partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "",
            ]
        )

    def launch(self) -> None:
        self.proc.spawn([*self._java(), "kafka.Kafka", str(self.dir / "server.properties")], cwd=self.dir)

    def healthy(self) -> bool:
        return asyncio.run(kafka_metadata_ok(self.s.kafka_bootstrap))


async def kafka_metadata_ok(bootstrap: str) -> bool:
    """A real metadata round trip: the broker lists itself."""
    from aiokafka import AIOKafkaClient  # local import keeps `edpo --help` fast

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        return len(client.cluster.brokers()) > 0
    except Exception:
        return False
    finally:
        await client.close()


class Camunda(Server):
    """Camunda 7 CE engine: a small Spring Boot app in infra/camunda (REST, Cockpit, Tasklist).

    Its database is `camunda` in the project's PostgreSQL cluster (started first, see
    all_servers), which survives a kill -9 of the engine; H2 only when EDPO_CAMUNDA_DB=h2."""

    name = "camunda"
    start_timeout = 180.0

    @property
    def port(self) -> int:
        return self.s.camunda_port

    @property
    def project(self) -> Path:
        return self.s.root / "infra" / "camunda"

    @property
    def jar(self) -> Path:
        return self.project / "target" / "edpo-camunda.jar"

    def prepare(self) -> None:
        if _stale(self.jar, self.project / "pom.xml", self.project / "src"):
            _mvn(self.s, self.project / "pom.xml", ["-DskipTests", "package"], self.s.log_dir / "mvn-camunda.log")
        self.dir.mkdir(parents=True, exist_ok=True)

    def datasource(self) -> tuple[str, str]:
        """JDBC URL and user of the engine database: CAMUNDA_DB_URL, else by CAMUNDA_DB."""
        s = self.s
        h2 = s.camunda_db == "h2" and not s.camunda_db_url
        if s.camunda_db_url:
            url = s.camunda_db_url
        elif h2:
            url = f"jdbc:h2:file:{self.dir}/camunda;DB_CLOSE_ON_EXIT=FALSE"
        else:
            url = f"jdbc:postgresql://{s.host}:{s.pg_port}/{CAMUNDA_DATABASE}"
        return url, s.camunda_db_user or ("sa" if h2 else CAMUNDA_DATABASE)

    def launch(self) -> None:
        java = require_tool("java", "Camunda runs on the JVM")
        url, user = self.datasource()
        cleanup_start, cleanup_end = self.s.camunda_cleanup_window.split("-")
        env = dict(os.environ)
        env.update(
            EDPO_CAMUNDA_HOST=self.s.host,
            EDPO_CAMUNDA_PORT=str(self.s.camunda_port),
            EDPO_CAMUNDA_DATA_DIR=str(self.dir),
            EDPO_CAMUNDA_DB_URL=url,
            EDPO_CAMUNDA_DB_USER=user,
            EDPO_CAMUNDA_DB_PASSWORD=self.s.camunda_db_password,
            EDPO_CAMUNDA_DB_POOL=str(self.s.camunda_db_pool),
            EDPO_CAMUNDA_CLEANUP_START=cleanup_start,
            EDPO_CAMUNDA_CLEANUP_END=cleanup_end,
            # The engine makes sure both users exist with these passwords whenever it starts.
            EDPO_CAMUNDA_SERVICE_USER=self.s.camunda_user,
            EDPO_CAMUNDA_SERVICE_PASSWORD=self.s.camunda_password,
            EDPO_CAMUNDA_ADMIN_USER=self.s.camunda_admin_user,
            EDPO_CAMUNDA_ADMIN_PASSWORD=self.s.camunda_admin_password,
            # The engine's rotating log (logback-spring.xml); nothing to the console, whose output
            # goes to camunda.out.
            EDPO_CAMUNDA_LOG_FILE=str(self.proc.log_file),
            EDPO_CAMUNDA_CONSOLE_LEVEL="OFF",
            EDPO_LOG_MAX_MB=str(self.s.log_max_mb),
            EDPO_LOG_BACKUPS=str(self.s.log_backups),
        )
        # The engine runs from its own copy: a rebuild (`make setup` after a change under
        # infra/camunda) rewrites the built jar, and a JVM reading classes lazily from a jar that
        # changed under it fails every request from then on.
        self.dir.mkdir(parents=True, exist_ok=True)
        running_jar = self.dir / "edpo-camunda.jar"
        shutil.copyfile(self.jar, running_jar)
        self.proc.spawn(
            [java, f"-Xmx{self.s.camunda_heap}", "-XX:+UseSerialGC", "-XX:MaxMetaspaceSize=192m", "-jar",
             str(running_jar)],
            cwd=self.dir,
            env=env,
        )

    def healthy(self) -> bool:
        """The default engine answers an authenticated request (GET /engine alone needs no credentials).

        Raises StackError when the engine refuses the service account: it runs with other
        passwords than these settings (say, RUN_DIR/secrets.env was deleted), and waiting does not help."""
        try:
            with urllib.request.urlopen(self._get("/engine"), timeout=3) as r:
                if not any(e.get("name") == "default" for e in json.load(r)):
                    return False
            with urllib.request.urlopen(self._get("/version"), timeout=3) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise StackError(
                    f"camunda at {self.s.camunda_url} refuses the user {self.s.camunda_user!r} with the password in "
                    f"{self.s.secret_origin('camunda_password')}: it was started with another one (restart it: edpo "
                    f"infra down, then edpo infra up), or it locks the user for a few seconds after wrong passwords"
                ) from None
            return False
        except (OSError, ValueError):
            return False

    def _get(self, path: str) -> urllib.request.Request:
        token = base64.b64encode(f"{self.s.camunda_user}:{self.s.camunda_password}".encode()).decode()
        return urllib.request.Request(f"{self.s.camunda_url}{path}", headers={"Authorization": f"Basic {token}"})

    def status(self) -> str:
        try:
            return super().status()
        except StackError:
            return "refuses password"

    def describe(self) -> str:
        s = self.s
        return (f"{s.camunda_url} (Cockpit http://{s.host}:{self.port}/camunda/app/, user {s.camunda_admin_user}, "
                f"password in {s.secret_origin('camunda_admin_password')}; "
                f"database {self.datasource()[0].split(';')[0]})")


class Postgres(Server):
    """A project-local PostgreSQL cluster from Debian's packages, run as the postgres user."""

    name = "postgres"
    start_timeout = 60.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dir = self._cluster_dir()
        self.data = self.dir / "data"
        self.proc = ManagedProcess(self.name, self.data / "postmaster.pid", self.dir / "postgres.log")

    @property
    def port(self) -> int:
        return self.s.pg_port

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _cluster_dir(self) -> Path:
        wanted = self.s.run_dir / "postgres"
        if not self._as_root() or _traversable_by_others(self.s.run_dir):
            return wanted
        # PostgreSQL refuses to run as root and the postgres user cannot enter the run
        # directory (a checkout under /root, say): keep the cluster in postgres' home.
        digest = hashlib.sha1(str(wanted).encode()).hexdigest()[:10]
        return Path("/var/lib/postgresql") / f"edpo-{digest}"

    def _bin(self, tool: str) -> str:
        if self.s.pg_bin:
            return str(Path(self.s.pg_bin) / tool)
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: int(p.parts[-3]))
        if not found:
            raise StackError("PostgreSQL server is not installed (apt-get install postgresql); run `make setup`")
        return str(found[-1])

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if self._as_root():
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, cwd="/")

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._as_root():
            shutil.chown(self.dir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            done = self._run(
                [self._bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
            )
            if done.returncode != 0:
                raise StackError(f"initdb failed: {(done.stderr or done.stdout).strip()[-300:]}")

    @property
    def log_directory(self) -> Path:
        """Where the server's logging collector writes: postgres-HH.log, one file per hour of the day."""
        return self.dir / "log"

    def launch(self) -> None:
        # The logging collector writes postgres-00.log ... postgres-23.log and empties each when it
        # starts it again a day later: at most 24 files. The -l file only gets what the server says
        # before the collector runs; it is rotated on start when large.
        opts = (f"-p {self.s.pg_port} -k {self.dir} -c listen_addresses={self.s.host} -c max_connections=200"
                f" -c logging_collector=on -c log_directory={self.log_directory} -c log_filename=postgres-%H.log"
                " -c log_rotation_age=60 -c log_rotation_size=0 -c log_truncate_on_rotation=on")
        if self.proc.log_file.exists() and self.proc.log_file.stat().st_size > OUTPUT_MAX_BYTES:
            rotate(self.proc.log_file, 1)
        done = self._run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-l", str(self.proc.log_file), "-o", opts, "-w", "-t", "60", "start"]
        )
        if done.returncode != 0:
            raise StackError(f"postgres failed to start; see {self.proc.log_file}")

    def down(self) -> bool:
        if not self.proc.running():
            return False
        self._run([self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self.proc.stop()  # only acts if pg_ctl left the postmaster behind
        return True

    def healthy(self) -> bool:
        return asyncio.run(_pg_round_trip(self.s.host, self.s.pg_port))

    def up(self) -> str:
        state = super().up()
        asyncio.run(ensure_database(self.s))
        return state


async def _pg_round_trip(host: str, port: int) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(host=host, port=port, user="postgres", database="postgres", timeout=3)
    except Exception:
        return False
    try:
        return await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def ensure_database(settings: Settings) -> None:
    """Create the edpo and camunda roles and databases if missing, then apply the order service's migrations."""
    import asyncpg

    from edpo.agents.order.migrate import migrate

    conn = await asyncpg.connect(host=settings.host, port=settings.pg_port, user="postgres", database="postgres")
    try:
        # The engine's database even when the engine runs on H2 now: switching back needs no restart of PostgreSQL.
        for name in ("edpo", CAMUNDA_DATABASE):
            await _ensure_owned_database(conn, name)
    finally:
        await conn.close()
    await migrate(settings.database_url)


async def _ensure_owned_database(conn: Any, name: str) -> None:
    """A login role and a database of the same name owned by it (idempotent, also when two runs race)."""
    import asyncpg

    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
        try:
            await conn.execute(f'CREATE ROLE "{name}" LOGIN')
        except asyncpg.DuplicateObjectError:
            pass
    if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
        try:
            await conn.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass


def _traversable_by_others(path: Path) -> bool:
    """Can a non-owner walk down to path (the postgres user must)?"""
    path = path.resolve()
    for part in [path, *path.parents]:
        if part.exists() and not (part.stat().st_mode & 0o001):
            return False
    return True


def all_servers(settings: Settings) -> list[Server]:
    """In start order: PostgreSQL (with the engine's database) before Camunda; stopped in reverse."""
    return [Kafka(settings), Postgres(settings), Camunda(settings)]
