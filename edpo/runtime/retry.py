"""The one retry policy of EDPO: exponential backoff with a cap, as a small value.

Every loop that retries uses a `Backoff`: start-up steps that wait for a server, the agent
loop (server outages and failing handlers), unanswered commands, the outbox relay and the
process bridge. Loops that keep their attempt count in a database row ask `delay(n)`; loops in
memory call `retry(...)`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Wait `first` seconds after the first failure, `factor` times longer after each further one, at most `cap`."""

    first: float
    cap: float
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the given number of failures so far (0 or 1: the first pause)."""
        return min(self.first * self.factor ** max(failures - 1, 0), self.cap)

    async def retry(
        self,
        what: str,
        step: Callable[[], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """Run step until it succeeds: a server that is still starting is not fatal."""
        failures = 0
        while True:
            try:
                return await step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the step is retried, whatever went wrong
                failures += 1
                pause = self.delay(failures)
                logger.warning("%s failed (%s: %s); retrying in %.1fs", what, type(e).__name__, e, pause)
                await sleep(pause)


# Waiting for a server at start-up.
STARTUP = Backoff(first=1.0, cap=15.0)
# A handler hit by a server outage: retried until the server is back.
OUTAGE = Backoff(first=0.4, cap=30.0)
# A handler failing for another reason: retried HANDLER_ATTEMPTS times, then dead-lettered.
HANDLER = Backoff(first=0.4, cap=5.0)
HANDLER_ATTEMPTS = 5
# An inbox row whose process instance does not wait for it yet.
CORRELATION = Backoff(first=0.05, cap=5.0)
# An unanswered outbox command: the first wait is the command timeout, then doubling.
OUTBOX_CAP = 60.0
