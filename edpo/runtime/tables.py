"""State of the Faust services: tables of msgspec structs, and the memory of timers."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

import faust
import msgspec

from edpo.runtime.failpoints import NONE, Failpoints

T = TypeVar("T")


class Table(Protocol[T]):
    """What handlers need of a table (a StructTable, or a dict-backed fake in unit tests)."""

    def get(self, key: str) -> T | None: ...

    def set(self, key: str, value: T) -> None: ...

    def delete(self, key: str) -> None: ...

    def local_items(self) -> list[tuple[str, T]]: ...


class StructTable(Generic[T]):
    """A RocksDB-backed Faust table holding msgspec structs as JSON bytes, keyed by str."""

    def __init__(self, app: faust.App, name: str, type_: type[T], *, help: str = "",
                 failpoints: Failpoints = NONE) -> None:
        self.table = app.Table(
            name,
            key_type=bytes,  # bytes in and out: faust picks its "raw" codec; msgspec encodes
            value_type=bytes,
            partitions=app.conf.topic_partitions,
            help=help,
        )
        self._decoder = msgspec.json.Decoder(type_)
        self._encoder = msgspec.json.Encoder()
        self.failpoints = failpoints

    def get(self, key: str) -> T | None:
        return self._load(self.table.get(key.encode()))

    def _load(self, stored: bytes | None) -> T | None:
        return None if stored is None else self._decoder.decode(stored)

    def set(self, key: str, value: T) -> None:
        self.table[key.encode()] = self._encoder.encode(value)
        self.failpoints.hit("after_store")

    def delete(self, key: str) -> None:
        """Drop the entry (a tombstone in the changelog, so compaction forgets it too)."""
        self.table.pop(key.encode(), None)
        self.failpoints.hit("after_store")

    def local_items(self) -> list[tuple[str, T]]:
        """The entries of partitions this worker owns (no standbys are kept)."""
        return [(k.decode(), self._decoder.decode(v)) for k, v in list(self.table.items())]


class TickThrottle:
    """Remembers which ticks a timer sent recently, so it does not resend while the agent
    catches up (a cache, not state: losing it only means one duplicate tick, which the
    domain ignores)."""

    def __init__(self, resend_after: float = 5.0, forget_after: float = 60.0) -> None:
        self.resend_after, self.forget_after = resend_after, forget_after
        self._sent: dict[Any, float] = {}

    def should_send(self, key: Any, now: float) -> bool:
        if now - self._sent.get(key, 0.0) <= self.resend_after:
            return False
        self._sent[key] = now
        return True

    def prune(self, now: float) -> None:
        for key, at in list(self._sent.items()):
            if now - at > self.forget_after:
                del self._sent[key]
