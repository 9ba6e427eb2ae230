"""Crash points for fault injection: kill this worker at the exact worst moment.

`EDPO_FAILPOINTS="warehouse.after_store=kill@3,order.after_start=kill"` makes the warehouse
worker kill itself (SIGKILL, as `kill -9` would) the third time it has stored a table entry,
and the order worker the first time it has started a process instance. Points of every service:

- `<service>.after_store`: a table entry (or the order service's transaction) is written, its
  messages are not sent yet;
- `<service>.before_publish`: a message is about to go to the producer;
- `<service>.after_publish`: messages are on Kafka, the input's offset is not committed;
- `<service>.before_complete`: an external task's work is done, the engine is not told yet;
- `order.after_start` / `order.after_correlate`: the engine took it, the inbox row is not updated.

Unset (the default) every check is one dictionary lookup that finds nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

POINTS = ("after_store", "before_publish", "after_publish", "before_complete", "after_start", "after_correlate")


class FailpointError(ValueError):
    """EDPO_FAILPOINTS does not parse."""


def parse(spec: str, service: str) -> dict[str, int]:
    """This service's points from "svc.point=kill[@n],..." -> {point: hit number that kills}."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        svc, _, point = name.strip().partition(".")
        verb, at, nth = action.strip().partition("@")
        counted = not at or (nth.isascii() and nth.isdigit() and int(nth) >= 1)
        if point not in POINTS or verb != "kill" or not counted:
            raise FailpointError(f"bad failpoint {item!r}: expected <service>.<{'|'.join(POINTS)}>=kill[@n], n >= 1")
        if svc == service:
            if point in armed:
                raise FailpointError(f"failpoint {name.strip()!r} given twice")
            armed[point] = int(nth or 1)
    return armed


class Failpoints:
    """The armed points of one worker and how often each was reached."""

    def __init__(self, spec: str, service: str) -> None:
        self.armed = parse(spec, service)
        self.service = service
        self._hits: dict[str, int] = {}

    def armed_at(self, point: str) -> bool:
        return point in self.armed

    def hit(self, point: str) -> None:
        """Count a pass through point; kill the process on the armed pass."""
        if point not in self.armed:
            return
        self._hits[point] = n = self._hits.get(point, 0) + 1
        if n == self.armed[point]:
            logger.critical("failpoint %s.%s reached (pass %d): killing this worker", self.service, point, n)
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


NONE = Failpoints("", "")
