"""The engine's and Kafka's own logs rotate at their caps (EDPO_LOG_MAX_MB, EDPO_LOG_BACKUPS):
both are restarted with a 1 MB cap and two archives, made to log several megabytes, and
every file stays within the cap (plus one record), then both run with the usual caps again."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import uuid
from pathlib import Path


from edpo.camunda.engine import Engine, EngineError
from edpo.config import Settings
from edpo.dev.servers import all_servers
from tests.faults.conftest import Stack, until

TINY_MB = 1
BACKUPS = 2
# One record over the cap is allowed (the size is checked before a record is written): the
# engine's biggest here is a REST error with its stack trace, about 11 kB.
ONE_RECORD = 32 * 1024


def _files(log: Path) -> dict[str, int]:
    """The log and its numbered archives, by name, with their sizes."""
    return {p.name: p.stat().st_size for p in sorted(log.parent.glob(f"{log.name}*"))}


def _rotated(log: Path) -> bool:
    return all(Path(f"{log}.{n}").exists() for n in range(1, BACKUPS + 1))


async def _restart(settings: Settings, name: str) -> None:
    server = next(s for s in all_servers(settings) if s.name == name)
    await asyncio.to_thread(server.down)
    await asyncio.to_thread(server.up)


async def _engine_errors(settings: Settings, log: Path) -> int:
    """Ask the engine for what makes it log a real error (a stack trace each) until its log has
    rotated BACKUPS times; a few at a time, as a busy stack would. Returns how many it took."""
    sent = 0
    async with Engine.from_settings(settings) as engine:

        async def one() -> None:
            try:
                await engine.request("GET", f"/process-instance/{uuid.uuid4().hex}/variables/anything")
            except EngineError as e:
                assert e.status == 500, e

        deadline = time.monotonic() + 180
        while not _rotated(log):
            assert time.monotonic() < deadline, f"the engine's log did not rotate: {_files(log)}"
            await asyncio.gather(*(one() for _ in range(8)))
            sent += 8
    return sent


def _kafka_warnings(settings: Settings, log: Path) -> int:
    """Open connections whose first request claims 2 GB: the broker logs a warning with a stack
    trace for each and closes it. Until its log has rotated BACKUPS times; returns how many."""
    sent = 0
    deadline = time.monotonic() + 180
    while not _rotated(log):
        assert time.monotonic() < deadline, f"Kafka's log did not rotate: {_files(log)}"
        with socket.create_connection((settings.host, settings.kafka_port), timeout=5) as conn:
            conn.sendall(struct.pack(">i", 0x7FFFFFFF))
            try:
                conn.recv(1)  # the broker closes the connection once it has read the size
            except OSError:
                pass
        sent += 1
    return sent


def _cap_of_running(settings: Settings, name: str) -> str:
    """The log cap the running server was started with (its command line or environment)."""
    server = next(s for s in all_servers(settings) if s.name == name)
    pid = server.proc.pid()
    assert pid is not None, f"{name} is not running"
    if name == "kafka":
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return next(a.decode() for a in args if a.startswith(b"-Dedpo.log.max="))
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e.decode() for e in env if e.startswith(b"EDPO_LOG_MAX_MB="))


async def test_the_engine_and_kafka_logs_rotate_at_their_caps(stack: Stack) -> None:
    s = stack.s
    tiny = s.model_copy(update={"log_max_mb": TINY_MB, "log_backups": BACKUPS})
    cap = TINY_MB * 1024 * 1024
    logs = {"camunda": s.log_dir / "camunda.log", "kafka": s.log_dir / "kafka.log"}
    try:
        for name, log in logs.items():
            for old in log.parent.glob(f"{log.name}.*"):  # archives of earlier runs, at the usual cap
                old.unlink()
            await _restart(tiny, name)
            assert _cap_of_running(s, name) in (f"-Dedpo.log.max={TINY_MB}MB", f"EDPO_LOG_MAX_MB={TINY_MB}")

        engine_errors = await _engine_errors(s, logs["camunda"])
        kafka_warnings = await asyncio.to_thread(_kafka_warnings, s, logs["kafka"])
        # A few more after the last rotation: the oldest archive must then be dropped, not kept.
        await _engine_errors(s, logs["camunda"])
        await asyncio.to_thread(_kafka_warnings, s, logs["kafka"])

        for name, log in logs.items():
            files = _files(log)
            expected = {log.name, *(f"{log.name}.{n}" for n in range(1, BACKUPS + 1))}
            assert set(files) == expected, f"{name}: {files} ({engine_errors} errors, {kafka_warnings} warnings)"
            too_big = {f: size for f, size in files.items() if size > cap + ONE_RECORD}
            assert not too_big, f"{name}: over the {TINY_MB} MB cap: {too_big}"
            archives = [size for f, size in files.items() if f != log.name]
            assert min(archives) >= cap * 0.9, f"{name}: rotated before the cap: {files}"
    finally:
        for name in logs:
            await _restart(s, name)  # the usual caps again
    for name in logs:
        assert _cap_of_running(s, name) in (f"-Dedpo.log.max={s.log_max_mb}MB", f"EDPO_LOG_MAX_MB={s.log_max_mb}")

    async def workers_ready() -> bool:
        return all([await stack.ready(service) for service in ("order", "warehouse", "factory", "delivery")])
    await until(workers_ready, 120, "every worker to be ready again after the restarts")
