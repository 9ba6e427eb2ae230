"""The envelope every EDPO message carries, and the codec shared by all topics."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Envelope: id, type (the tag = class name = BPMN message name), source, time, correlation and trace ids."""

    id: str = msgspec.field(default_factory=new_id)
    source: str = ""
    time: datetime = msgspec.field(default_factory=utcnow)
    # A reply copies the id of the command it answers; other messages copy their cause's.
    correlation_id: str = ""
    # Same for every message caused, directly or not, by one order placement.
    trace_id: str = ""

    @property
    def type(self) -> str:
        return type(self).__name__


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """An order line: how many of one SKU."""

    sku: str
    quantity: int


M = TypeVar("M", bound=Message)


def caused_by(cause: Message, cls: type[M], *, source: str, reply: bool = False, **fields: Any) -> M:
    """A message caused by another: same trace; a reply carries the command's id as correlation id."""
    return cls(
        source=source,
        correlation_id=cause.id if reply else (cause.correlation_id or cause.id),
        trace_id=cause.trace_id or cause.id,
        **fields,
    )


_encoder = msgspec.json.Encoder()


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)
