"""The running Camunda engine keeps its state in PostgreSQL: database `camunda` of the project's cluster.

Against whatever stack is running (`edpo infra up`, `edpo up`): nothing is started or restarted. The
first test only reads; the statistics test deploys a process of its own, starts instances of it
and deletes them again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from edpo.camunda import ORDER_FULFILMENT
from edpo.camunda.engine import Engine
from edpo.config import Settings
from edpo.dev.servers import CAMUNDA_DATABASE

ECHO = Path(__file__).parent / "bpmn" / "echo_test.bpmn"


@pytest.fixture
async def camunda_db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """The engine's database in the project's PostgreSQL, as the engine's own user."""
    if settings.camunda_db == "h2" or settings.camunda_db_url:
        pytest.skip("the engine runs on another database by request (EDPO_CAMUNDA_DB / EDPO_CAMUNDA_DB_URL)")
    conn = await asyncpg.connect(host=settings.host, port=settings.pg_port, user=CAMUNDA_DATABASE,
                                 database=CAMUNDA_DATABASE)
    try:
        yield conn
    finally:
        await conn.close()


async def test_the_engines_rows_are_in_the_camunda_database_of_the_projects_postgresql(
        settings: Settings, camunda_db: asyncpg.Connection) -> None:
    conn = camunda_db
    await conn.execute("SET default_transaction_read_only = on")
    tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE 'act_%'")}
    assert {"act_ru_execution", "act_re_procdef", "act_ru_job"} <= tables, "the engine's schema is in this database"

    async with Engine.from_settings(settings) as engine:
        # Ids the running engine hands out (UUIDs) name rows of this database, not of another one.
        cleanup_jobs = await engine.request("GET", "/history/cleanup/jobs")
        definitions = await engine.request("GET", "/process-definition")
    assert cleanup_jobs, "the engine schedules history cleanup"
    job_ids = [job["id"] for job in cleanup_jobs]
    stored_jobs = await conn.fetch("SELECT id_ FROM act_ru_job WHERE id_ = ANY($1::text[])", job_ids)
    assert {r["id_"] for r in stored_jobs} == set(job_ids)

    definition_ids = [d["id"] for d in definitions]
    stored = await conn.fetch("SELECT id_, key_ FROM act_re_procdef WHERE id_ = ANY($1::text[])", definition_ids)
    assert {r["id_"] for r in stored} == set(definition_ids)
    if any(d["key"] == ORDER_FULFILMENT for d in definitions):  # deployed once the order service ran
        ttl = await conn.fetchval(
            "SELECT history_ttl_ FROM act_re_procdef WHERE key_ = $1 ORDER BY version_ DESC LIMIT 1", ORDER_FULFILMENT)
        assert ttl == 7, "order_fulfilment.bpmn declares camunda:historyTimeToLive P7D"


async def test_runtime_tables_whose_statistics_fall_behind_are_analyzed_within_seconds(
        settings: Settings, camunda_db: asyncpg.Connection, tmp_path: Path) -> None:
    # RuntimeTableStatistics (infra/camunda): statistics taken while ACT_RU_EXECUTION was nearly
    # empty make the planner scan it sequentially once it fills up; the engine analyzes it again.
    conn = camunda_db
    key = f"stats_{uuid.uuid4().hex[:8]}"
    bpmn = tmp_path / f"{key}.bpmn"
    bpmn.write_text(ECHO.read_text().replace('id="echo_test"', f'id="{key}"')
                    .replace('"echo-payload"', f'"{key}-never-fetched"'))
    async with Engine.from_settings(settings) as engine:
        try:
            await engine.deploy(key, bpmn)
            await conn.execute("ANALYZE act_ru_execution")  # statistics of the table as it is now
            before = await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'act_ru_execution'")
            waiting = int(max(before, 0)) + 300  # instances waiting at their external task
            semaphore = asyncio.Semaphore(20)

            async def start(n: int) -> None:
                async with semaphore:
                    await engine.start_process(key, f"{key}-{n}", {})

            await asyncio.gather(*(start(n) for n in range(waiting)))
            deadline = asyncio.get_running_loop().time() + 30
            while (now := await conn.fetchval(
                    "SELECT reltuples FROM pg_class WHERE relname = 'act_ru_execution'")) < before + waiting / 2:
                assert asyncio.get_running_loop().time() < deadline, f"statistics still count {now} rows"
                await asyncio.sleep(1)
        finally:
            for instance in await engine.active_instances(key):
                await engine.delete_instance(instance["id"])
