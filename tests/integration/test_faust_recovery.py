"""Faust: an agent with a RocksDB-backed table survives a restart, with and without its local store."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from edpo.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _counts(port: int) -> dict[str, int] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/counts", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def _wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


class CounterWorker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.apps.counter", "worker", "-l", "warn"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _produce(bootstrap: str, topic: str, words: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for w in words:
            await producer.send(topic, key=w.encode(), value=w.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def test_table_values_survive_restart_from_rocksdb_and_from_changelog(servers: Settings, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, app_id = f"test-words-{suffix}", f"test-counter-{suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 3, 1)])
    await admin.close()

    port = _free_port()
    env = dict(os.environ, TEST_TOPIC=topic, TEST_APP_ID=app_id, TEST_BOOTSTRAP=servers.kafka_bootstrap,
               TEST_DATADIR=str(tmp_path / "data"), TEST_WEB_PORT=str(port), TEST_PARTITIONS="3")
    worker = CounterWorker(env, tmp_path / "worker.log")
    words = ["apple"] * 5 + ["pear"] * 3 + ["plum"] * 7
    expected = {"apple": 5, "pear": 3, "plum": 7}

    worker.start()
    try:
        _wait_for(lambda: _counts(port) is not None, 60, "worker web server")
        await _produce(servers.kafka_bootstrap, topic, words)
        assert await asyncio.to_thread(_wait_for, lambda: _counts(port) == expected and _counts(port), 60,
                                       "counts after first run") == expected
    finally:
        worker.stop()
    assert (tmp_path / "data").exists(), "RocksDB data directory was written"

    # Restart on the same local store.
    worker.start()
    try:
        got = await asyncio.to_thread(_wait_for, lambda: _counts(port), 60, "counts after restart")
        assert got == expected
        await _produce(servers.kafka_bootstrap, topic, ["pear"])
        expected["pear"] += 1
        assert await asyncio.to_thread(_wait_for, lambda: _counts(port) == expected and _counts(port), 60,
                                       "counts after one more word") == expected
    finally:
        worker.stop()

    # Lose the local store: the table is rebuilt from its changelog topic.
    shutil.rmtree(tmp_path / "data")
    worker.start()
    try:
        got = await asyncio.to_thread(_wait_for, lambda: _counts(port) == expected and _counts(port), 90,
                                      "counts recovered from the changelog")
        assert got == expected
    finally:
        worker.stop()
