"""The transactional outbox's one way in: a message kept with its topic and key, in the
caller's transaction, for the relay to send (store.py relays; the bridge dead-letters here)."""

from __future__ import annotations

import asyncpg

from edpo.models import Message, encode
from edpo.topics import route


async def enqueue(conn: asyncpg.Connection, msg: Message, *, command: bool = False) -> None:
    """Keep msg for the relay, routed now (topic and key from topics.py), in the caller's transaction."""
    spec, key = route(msg)
    await conn.execute(
        "INSERT INTO outbox (message_id, topic, key, payload, is_command) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (message_id) DO NOTHING",
        msg.id, spec.name, key, encode(msg), command,
    )
