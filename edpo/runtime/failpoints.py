"""Crash points for fault injection: kill this worker at the exact worst moment.

`EDPO_FAILPOINTS="warehouse.after_store=kill@3,order.after_start=kill"` makes the warehouse
worker kill itself (SIGKILL, as `kill -9` would) the third time it has stored a table entry,
and the order worker the first time it has started a process instance. Points of every service:

- `<service>.after_store`: a table entry (or the order service's transaction) is written, its
  messages are not sent yet;
- `<service>.before_publish`: a message is about to go to the producer;
- `<service>.after_publish`: messages are on Kafka, the input's offset is not committed;
- `<service>.before_complete`: an external task's work is done, the engine is not told yet;
- `order.after_start` / `order.after_correlate`: the engine took it, the inbox row is not updated;
- `<service>.before_handle`: an agent decoded a message and is about to hand it to its handler.

`=fail@n+k` makes passes n to n+k-1 raise FailpointFailure instead (a handler failure that is
not an outage: retried, then dead-lettered), e.g. `warehouse.before_publish=fail@30+40`.
Dead letters themselves never pass `before_publish`: they are the safety net under test.

`=drop@n+k` (at `before_handle` only) loses messages on the way: the arrivals n to n+k-1 of
each message, counted by its id, are not handled and their offsets are committed, e.g.
`delivery.before_handle=drop@1+2` handles every command only when its sender sends it a third time.

Unset (the default) every check is one dictionary lookup that finds nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edpo.models import Message

logger = logging.getLogger(__name__)

POINTS = ("after_store", "before_publish", "after_publish", "before_complete", "after_start", "after_correlate",
          "before_handle")
# The one point where a message can be lost on the way: its handler has not seen it yet.
DROP_POINT = "before_handle"
Handler = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Drop:
    """The arrivals of each message (counted by its id) that are not handled."""

    arrivals: range


class FailpointError(ValueError):
    """EDPO_FAILPOINTS does not parse."""


def parse(spec: str, service: str) -> dict[str, int | range | Drop]:
    """This service's points from "svc.point=kill[@n],svc.point=fail@n[+k],svc.before_handle=drop@n[+k],..." ->
    {point: the pass that kills, the passes that fail, or the arrivals of each message that are dropped}."""
    armed: dict[str, int | range | Drop] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        svc, _, point = name.strip().partition(".")
        verb, at, when = action.strip().partition("@")
        nth, plus, many = when.partition("+")
        counted = not at or _positive(nth)
        if point not in POINTS or verb not in ("kill", "fail", "drop") or not counted \
                or (plus and not _positive(many)) or (verb == "kill" and plus) \
                or (verb == "drop" and point != DROP_POINT):
            raise FailpointError(f"bad failpoint {item!r}: expected <service>.<{'|'.join(POINTS)}>=kill[@n] or "
                                 f"=fail[@n[+k]], or <service>.{DROP_POINT}=drop[@n[+k]], n, k >= 1")
        if svc == service:
            if point in armed:
                raise FailpointError(f"failpoint {name.strip()!r} given twice")
            first = int(nth or 1)
            passes = range(first, first + int(many or 1))
            armed[point] = first if verb == "kill" else passes if verb == "fail" else Drop(passes)
    return armed


def _positive(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) >= 1


class FailpointFailure(RuntimeError):
    """Raised on a `fail` pass: a handler failure that is not a server outage."""


class Failpoints:
    """The armed points of one worker and how often each was reached."""

    def __init__(self, spec: str, service: str) -> None:
        self.armed = parse(spec, service)
        self.service = service
        self._hits: dict[str, int] = {}
        # Arrivals per message id at a drop point: kept for the worker's life (fault injection only).
        self._arrivals: dict[str, int] = {}

    def armed_at(self, point: str) -> bool:
        return point in self.armed

    def hit(self, point: str) -> None:
        """Count a pass through point; kill the process on the armed pass, or raise
        FailpointFailure on the failing ones."""
        if point not in self.armed:
            return
        armed = self.armed[point]
        if isinstance(armed, Drop):
            return  # counted per message by `dropped`
        self._hits[point] = n = self._hits.get(point, 0) + 1
        if isinstance(armed, range):
            if n in armed:
                logger.error("failpoint %s.%s failing (pass %d)", self.service, point, n)
                raise FailpointFailure(f"failpoint {self.service}.{point} (pass {n})")
            return
        if n == armed:
            logger.critical("failpoint %s.%s reached (pass %d): killing this worker", self.service, point, n)
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def dropped(self, point: str, msg: Message) -> bool:
        """Count an arrival of msg at point; True if this arrival is to be lost (not handled)."""
        armed = self.armed.get(point)
        if not isinstance(armed, Drop):
            return False
        self._arrivals[msg.id] = n = self._arrivals.get(msg.id, 0) + 1
        if n not in armed.arrivals:
            return False
        logger.warning("failpoint %s.%s dropping %s %s (arrival %d)", self.service, point, msg.type, msg.id, n)
        return True

    def before_handle(self, handle: Handler) -> Handler:
        """handle, passing `before_handle` first when it is armed: a kill or fail pass happens, a
        dropped arrival returns without handling (the agent then commits the record's offset)."""
        if DROP_POINT not in self.armed:
            return handle  # the default: not even a lookup per message

        async def guarded(msg: Message) -> None:
            self.hit(DROP_POINT)
            if not self.dropped(DROP_POINT, msg):
                await handle(msg)

        guarded.__doc__ = handle.__doc__
        return guarded


NONE = Failpoints("", "")
