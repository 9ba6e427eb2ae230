"""Each scenario: a steady stream of orders of every path, one fault mid-flow, recovery left to
the system (plus the restart an operator or supervisor would do), then the guarantees:
every order final in the status it should have, exactly once, one process instance per
order, nothing left reserved, every unit of stock accounted for (see conftest.run_scenario).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest

from edpo.dev.process import StackError
from tests.faults.conftest import Outcome, Stack, run_scenario, until

# (service, failpoint, pass that kills): the pass counts from the worker's start, so it falls
# inside the traffic (the warehouse stores 8 SKUs while it seeds at start, for example).
CRASH_POINTS = [
    ("warehouse", "after_store", 30),
    ("warehouse", "before_publish", 40),
    ("warehouse", "after_publish", 30),
    ("warehouse", "before_complete", 6),
    ("factory", "after_store", 2),
    ("factory", "before_publish", 3),
    ("factory", "after_publish", 2),
    ("delivery", "after_store", 6),
    ("delivery", "before_publish", 8),
    ("delivery", "after_publish", 6),
    ("order", "after_store", 12),
    ("order", "before_publish", 20),
    ("order", "after_publish", 5),
    ("order", "after_start", 3),
    ("order", "after_correlate", 5),
]


@pytest.mark.parametrize(("service", "point", "nth"), CRASH_POINTS,
                         ids=[f"{s}.{p}" for s, p, _ in CRASH_POINTS])
async def test_worker_killed_at_its_crash_point_loses_and_doubles_nothing(stack: Stack, service: str, point: str,
                                                                           nth: int) -> None:
    async def arm() -> None:
        """Restart the worker with the failpoint armed; the traffic drives it into the point."""
        await stack.stop_worker(service)
        try:
            await stack.start_worker(service, failpoints=f"{service}.{point}=kill@{nth}")
        except StackError:
            # Work left from before the restart (a replay, a timer) reached the point while the
            # worker started: the crash happened at the point all the same.
            if not stack.failpoint_fired(service, point):
                raise

    async def fault() -> dict[str, float]:
        t0 = time.monotonic()
        died = await stack.wait_dead(service, 1, timeout=90)
        assert died, f"{service}.{point} was never reached: the scenario did not exercise the fault"
        crashed_at = time.monotonic() - t0
        ready = await stack.start_worker(service)
        return {"crash_after_s": round(crashed_at, 1), "restart_ready_s": round(ready, 1)}

    await run_scenario(stack.s, f"kill -9 {service} at {point}", fault, fault_after=0, orders=25, arm=arm)


@pytest.mark.parametrize("server", ["camunda", "kafka", "postgres"])
async def test_server_killed_mid_flow_loses_and_doubles_nothing(stack: Stack, server: str) -> None:
    outage: list[float] = []  # when the server was killed, and when it was back

    async def fault() -> dict[str, float]:
        outage.append(time.monotonic())
        stack.kill_server(server)
        await asyncio.sleep(3)
        ready = await stack.start_server(server)
        outage.append(time.monotonic())
        return {"server_ready_s": round(ready, 1)}

    def answers_while_away(outcome: Outcome) -> None:
        if server == "postgres":
            _assert_orders_answered_503_while_the_database_was_away(outcome, *outage)

    await run_scenario(stack.s, f"kill -9 {server}", fault, fault_after=8, orders=30, verify=answers_while_away)


def _assert_orders_answered_503_while_the_database_was_away(outcome: Outcome, down: float, back: float) -> None:
    """The load generator's POST /orders during the outage were answered 503 with a numeric
    Retry-After (nothing stored, retried with the same Idempotency-Key); no other 5xx, ever."""
    orders = [a for a in outcome.answers if a.url.endswith("/orders")]
    other_5xx = [(a.status, a.url) for a in outcome.answers if a.status and a.status >= 500 and a.status != 503]
    assert not other_5xx, f"answers 5xx other than 503: {other_5xx}"
    during = [a for a in orders if down <= a.at <= back + 5]
    unavailable = [a for a in during if a.status == 503]
    outcome.recovery["answers_503"] = len(unavailable)
    assert unavailable, f"no POST /orders answered 503 while PostgreSQL was away: {[a.status for a in during]}"
    bad_retry_after = [a.retry_after for a in unavailable if not (a.retry_after or "").isdigit()]
    assert not bad_retry_after, f"503 answers without a number of seconds in Retry-After: {bad_retry_after}"


async def test_customers_cancelling_while_the_warehouse_and_the_courier_are_killed(stack: Stack) -> None:
    """Half the customers cancel at a random moment while the warehouse and delivery workers
    are killed with -9 and restarted: an accepted cancellation ends CANCELLED (goods back) or,
    when the courier was first, DELIVERED, never both; a refused one (409) ends as it would
    have; every unit is accounted for."""
    async def fault() -> dict[str, float]:
        stack.kill_worker("warehouse")
        stack.kill_worker("delivery")
        await asyncio.sleep(2)
        t0 = time.monotonic()
        await asyncio.gather(stack.start_worker("warehouse"), stack.start_worker("delivery"))
        return {"restart_ready_s": round(time.monotonic() - t0, 1)}

    outcome = await run_scenario(stack.s, "customers cancel; kill -9 warehouse and delivery", fault, fault_after=8,
                                 orders=30, cancel_share=0.5)
    assert outcome.recovery["cancels_accepted"] >= 5, outcome.recovery  # the scenario exercised cancellation


async def test_second_workers_join_and_one_leaves_mid_flow(stack: Stack) -> None:
    async def fault() -> dict[str, float]:
        t0 = time.monotonic()
        await asyncio.gather(*(stack.start_worker(service, 2) for service in ("warehouse", "order", "delivery",
                                                                                  "factory")))
        joined = time.monotonic() - t0
        await asyncio.sleep(5)
        stack.kill_worker("warehouse", 1)  # the first warehouse worker leaves the hard way
        await asyncio.sleep(2)
        ready = await stack.start_worker("warehouse", 1)
        return {"join_s": round(joined, 1), "rejoin_ready_s": round(ready, 1)}

    try:
        await run_scenario(stack.s, "2 workers each, one joins, one leaves", fault, fault_after=5, orders=30,
                           factories=2)
    finally:
        for service in ("warehouse", "order", "delivery", "factory"):
            await stack.stop_worker(service, 2)


CONSUMED = ["warehouse-commands", "warehouse-events", "stock-commands", "reservation-updates", "factory-commands",
            "factory-events", "delivery-commands", "delivery-events"]


async def test_every_record_twice_plus_garbage_and_oversized_records(stack: Stack) -> None:
    """A duplicator sends every record of every EDPO topic a second time; a garbage and a
    900 kB record land on every consumed topic. Orders finish exactly once and every bad
    record ends on the dead-letter topic, none crashes an agent."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from edpo.topics import BY_NAME, dead_letters_topic

    s = stack.s
    marker = f"faults-garbage-{time.time_ns()}"
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", max_request_size=2_000_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    duplicated = 0

    async def duplicate() -> None:
        nonlocal duplicated
        parts = [TopicPartition(t, p) for t in BY_NAME if t != dead_letters_topic.name
                 for p in range(s.partitions)]  # every EDPO topic has EDPO_PARTITIONS partitions
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for rec in records:
                    if any(k == "edpo-dup" for k, _ in rec.headers or ()):
                        continue
                    await producer.send(tp.topic, rec.value, key=rec.key, partition=tp.partition,
                                        headers=[("edpo-dup", b"1")])
                    duplicated += 1

    async def fault() -> dict[str, float]:
        for topic in CONSUMED:
            await producer.send_and_wait(topic, f"not json {marker}".encode(), key=b"garbage")
            big = ('{"type":"' + marker + '","pad":"' + "x" * 900_000 + '"}').encode()
            await producer.send_and_wait(topic, big, key=b"oversized")
        return {}

    dup_task = asyncio.create_task(duplicate())
    try:
        await run_scenario(s, "every record twice + garbage + 900 kB records", fault, fault_after=3, orders=25)
    finally:
        dup_task.cancel()
    assert duplicated > 100, f"the duplicator only sent {duplicated} records twice"

    # Every garbage record ended as a dead letter (the oversized ones truncated), topic by topic.
    letters = AIOKafkaConsumer(dead_letters_topic.name, bootstrap_servers=s.kafka_bootstrap, group_id=None,
                               auto_offset_reset="earliest", enable_auto_commit=False)
    await letters.start()
    found: dict[str, int] = {}
    try:
        end = await letters.end_offsets(list(letters.assignment()))
        while [tp for tp, off in end.items() if await letters.position(tp) < off]:
            for records in (await letters.getmany(timeout_ms=500)).values():
                for rec in records:
                    text = rec.value.decode(errors="replace")
                    if marker in text:
                        letter = BY_NAME[dead_letters_topic.name].decode(rec.value)
                        found[letter.topic] = found.get(letter.topic, 0) + 1
    finally:
        await letters.stop()
        await consumer.stop()
        await producer.stop()
    missing = [t for t in CONSUMED if found.get(t, 0) < 2]
    assert not missing, f"garbage or oversized records without a dead letter on {missing}; found {found}"
    for service in ("order", "warehouse", "factory", "delivery"):
        assert stack.worker(service).running(), f"{service} died on a bad record"


async def test_dead_letters_replayed_with_edpo_dlq_complete_their_orders(stack: Stack) -> None:
    """The warehouse's handlers fail (not an outage) right after storing their state, again and
    again: their records are retried, then dead-lettered, and the orders behind them stop.
    `edpo dlq replay` sends the records back once the failure is over; each finds its effect
    stored and re-emits what it should have sent (ADR 0003), and every order completes.
    Reconciliation, which would repair the orders by itself, is switched off meanwhile."""
    from edpo.dev.dlq import entries, read_values

    s = stack.s
    scenario_start = time.time()

    async def arm() -> None:
        await stack.stop_worker("order")
        await stack.start_worker("order", env={"EDPO_RECONCILE_INTERVAL": "3600"})
        await stack.stop_worker("warehouse")
        await stack.start_worker("warehouse", failpoints="warehouse.after_store=fail@30+40")

    async def ours() -> list[Any]:
        found, _ = entries(await read_values(s.kafka_bootstrap))
        return [e for e in found if e.letter.source == "edpo" and e.letter.time.timestamp() >= scenario_start
                and e.letter.topic in CONSUMED and "FailpointFailure" in e.letter.error]

    async def fault() -> dict[str, float]:
        seen: list[int] = []

        async def settled() -> bool:  # the failing window is over: no new dead letters for a while
            seen.append(len(await ours()))
            return len(seen) > 12 and seen[-1] > 0 and seen[-1] == seen[-13]

        await until(settled, 120, "the warehouse's dead letters to stop growing")
        letters = await ours()
        t0 = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "edpo.cli", "dlq", "replay", *(e.letter.id for e in letters)],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("replayed") >= len(letters), done.stdout
        return {"dead_letters": len(letters), "replay_s": round(time.monotonic() - t0, 1)}

    try:
        outcome = await run_scenario(s, "handlers failing after store, dead letters replayed", fault, arm=arm,
                                     fault_after=0, orders=25)
    finally:
        await stack.stop_worker("order")
        await stack.start_worker("order")
    assert outcome.recovery["dead_letters"] >= 3
    assert all(e.replayed for e in await ours()), "a dead letter of the scenario was not replayed"
