"""The transactional outbox's one way in: a message kept with its topic and key, in the
caller's transaction, for the relay to send (store.py relays; the bridge dead-letters here)."""

from __future__ import annotations

import asyncpg

from edpo.models import Message, encode
from edpo.topics import route


def outbox_row(msg: Message) -> tuple[str, str, str, bytes]:
    """(message_id, topic, key, payload) of msg's outbox row: routed now (topics.py), encoded once."""
    spec, key = route(msg)
    return msg.id, spec.name, key, encode(msg)


async def enqueue(conn: asyncpg.Connection, msg: Message, *, command: bool = False) -> None:
    """Keep msg for the relay, in the caller's transaction."""
    await conn.execute(
        "INSERT INTO outbox (message_id, topic, key, payload, is_command) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (message_id) DO NOTHING",
        *outbox_row(msg), command,
    )
