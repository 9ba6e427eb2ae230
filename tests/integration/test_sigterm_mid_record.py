"""At-least-once across a stop: a worker that gets SIGTERM while a record is in its handler leaves that record
uncommitted (`edpo.runtime.consume`), and the restarted worker handles it.

The worker is a Faust app running EDPO's agent loop over a topic of the test's own (tests/integration/apps/held.py),
in a process of its own that gets a real SIGTERM; its handler holds one chosen record until the test releases it.
The group's committed offset is read from Kafka.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from edpo.config import Settings
from edpo.models import FinishDelivery, encode

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 5
HELD = 2  # the offset of the record the handler holds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _eventually(check: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)
    return found


async def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset of tp (the next record it will read), None if nothing is committed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
    finally:
        await admin.close()
    found = offsets.get(tp)
    return found.offset if found is not None and found.offset >= 0 else None


async def _committed_within(bootstrap: str, group: str, tp: TopicPartition, expected: int,
                            timeout: float = 30.0) -> int | None:
    """The committed offset once it is expected, or as it is at the deadline."""
    deadline = time.monotonic() + timeout
    while (committed := await _committed(bootstrap, group, tp)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    return committed


class Worker:
    """The held app as a process of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.integration.apps.held", "worker", "-l", "info"],
                                         cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code once the worker has stopped (SIGKILL after timeout)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the worker did not stop within {timeout}s of SIGTERM; see {self.log}") from None

    def stop_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_a_record_in_the_handler_at_sigterm_stays_uncommitted_and_is_handled_after_restart(
    servers: Settings, tmp_path: Path
) -> None:
    bootstrap = servers.kafka_bootstrap
    suffix = uuid.uuid4().hex[:8]
    topic, group = f"test-held-{suffix}", f"test-held-{suffix}"
    tp = TopicPartition(topic, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()

    orders = [f"{suffix}-r{n}" for n in range(RECORDS)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for order_id in orders:  # one partition: offsets 0..RECORDS-1 in this order
            await producer.send_and_wait(topic, key=order_id.encode(),
                                         value=encode(FinishDelivery(order_id=order_id, attempt=1, source="test")))
    finally:
        await producer.stop()

    journal, release = tmp_path / "journal", tmp_path / "release"
    env = dict(os.environ, TEST_TOPIC=topic, TEST_APP_ID=group, TEST_BOOTSTRAP=bootstrap,
               TEST_DATADIR=str(tmp_path / "data"), TEST_WEB_PORT=str(_free_port()), TEST_JOURNAL=str(journal),
               TEST_HOLD=orders[HELD], TEST_RELEASE=str(release))
    worker = Worker(env, tmp_path / "worker.log")

    def noted() -> list[str]:
        return journal.read_text().splitlines() if journal.exists() else []

    try:
        worker.start()
        await _eventually(lambda: f"start {orders[HELD]}" in noted(), "the held record in the handler")
        # The records before it are handled and committed (every second) while the handler holds this one.
        assert await _committed_within(bootstrap, group, tp, HELD) == HELD
        exit_code = worker.terminate()
        assert exit_code == 0, f"the worker exited with {exit_code}; see {worker.log}"
        assert f"done {orders[HELD]}" not in noted()

        # Stopped mid-record: the group's committed offset is that record's, not past it.
        assert await _committed(bootstrap, group, tp) == HELD

        release.touch()
        worker.start()
        await _eventually(lambda: f"done {orders[-1]}" in noted(), "every record handled after the restart")
        # The offset moves past the held record once the restarted worker has handled it.
        assert await _committed_within(bootstrap, group, tp, RECORDS) == RECORDS
        assert worker.terminate() == 0
    finally:
        worker.stop_if_running()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic, f"{group}-__assignor-__leader"])  # the test's and the one Faust made
        finally:
            await admin.close()

    # The held record was started twice (the stop cut the first run short) and finished once; the records
    # committed before the stop were not handled again.
    lines = noted()
    assert [lines.count(f"start {o}") for o in orders] == [1, 1, 2, 1, 1], lines
    assert [lines.count(f"done {o}") for o in orders] == [1] * RECORDS, lines
