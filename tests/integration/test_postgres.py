"""PostgreSQL: migrations on an empty database, again as a no-op, and an asyncpg round trip."""

from __future__ import annotations

import uuid

import asyncpg

from edpo.agents.order.migrate import MIGRATIONS_DIR, migrate
from edpo.config import Settings


async def test_migrations_apply_on_empty_database_then_are_a_no_op(servers: Settings) -> None:
    name = f"edpo_test_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(host=servers.host, port=servers.pg_port, user="postgres", database="postgres")
    await admin.execute(f'CREATE DATABASE "{name}" OWNER edpo')
    dsn = f"postgresql://edpo@{servers.host}:{servers.pg_port}/{name}"
    try:
        first = await migrate(dsn)
        assert first == sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
        assert await migrate(dsn) == []

        conn = await asyncpg.connect(dsn)
        try:
            tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
            assert {"orders", "order_lines", "order_history", "outbox", "process_inbox"} <= tables
            count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
            assert count == len(first)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_asyncpg_round_trip_through_the_service_database(servers: Settings) -> None:
    conn = await asyncpg.connect(servers.database_url)
    try:
        token = uuid.uuid4().hex
        assert await conn.fetchval("SELECT $1::text || '!'", token) == token + "!"
        assert await conn.fetchval("SELECT current_user") == "edpo"
    finally:
        await conn.close()
