"""A migrated database of a test's own in the stack's PostgreSQL cluster, dropped afterwards.

The running order worker works off the shared database (its bridge takes pending inbox rows,
its relay sends outbox rows, and a reconciler looks at every quiet open order), so tests of
those library objects use a database nobody else sees.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from edpo.agents.order.migrate import migrate
from edpo.config import Settings


@asynccontextmanager
async def own_database(settings: Settings, prefix: str) -> AsyncIterator[str]:
    """The DSN of a new, migrated database; dropped (connections and all) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(host=settings.host, port=settings.pg_port, user="postgres", database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}" OWNER edpo')
        dsn = f"postgresql://edpo@{settings.host}:{settings.pg_port}/{name}"
        try:
            await migrate(dsn)
            yield dsn
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
