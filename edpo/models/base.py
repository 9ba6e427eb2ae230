"""The envelope every EDPO message carries, and the codec shared by all topics."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec


def new_id() -> str:
    return uuid.uuid4().hex


def stable_id(*parts: str) -> str:
    """An id derived from its parts: the same parts always give the same id."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


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


def caused_by(cause: Message, cls: type[M], *, source: str, reply: bool = False, once_per: str | None = None,
              **fields: Any) -> M:
    """A message caused by another: same trace; a reply carries the command's id as correlation id.

    Its id is deterministic, so a handler that runs again on a replayed input re-emits the very
    messages of its first run and receivers deduplicate them by id (docs/adr/0003). An event that
    happens once per business key (the order's StockReserved, an attempt's DeliveryCompleted)
    names that key in `once_per`: its id then derives from the key alone, so the same fact has
    the same id whichever input re-announces it. Other messages derive their id from the cause's
    id and their own content.
    """
    if once_per is not None:
        msg_id = stable_id(cls.__name__, once_per)
    else:
        msg_id = stable_id(cls.__name__, cause.id, _fields_encoder.encode(fields).decode())
    return cls(
        id=msg_id,
        source=source,
        correlation_id=cause.id if reply else (cause.correlation_id or cause.id),
        trace_id=cause.trace_id or cause.id,
        **fields,
    )


_fields_encoder = msgspec.json.Encoder(order="sorted")
_encoder = msgspec.json.Encoder()


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


class _TypeOnly(msgspec.Struct):
    type: str = ""


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def type_of(payload: bytes) -> str:
    """The `type` tag of an encoded message, read without decoding the rest ("" when it has none).
    Raises msgspec.DecodeError / ValidationError when the payload is not a JSON object."""
    return _type_decoder.decode(payload).type
