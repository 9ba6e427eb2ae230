"""The engine's log: expected outcomes take no room, real errors keep their stack traces."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from edpo.camunda.engine import Engine, EngineError
from edpo.config import Settings


async def eventually_true(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


def _log_text(settings: Settings) -> str:
    """The engine's log, with its newest archive (a rotation may fall between two lines)."""
    log = settings.log_dir / "camunda.log"
    return "".join(p.read_text(errors="replace") for p in (Path(f"{log}.1"), log) if p.exists())


async def test_a_message_no_instance_waits_for_leaves_no_stack_trace_in_the_engine_log(servers: Settings,
                                                                                        engine: Engine) -> None:
    name = f"NoOneWaits{uuid.uuid4().hex}"
    real_error = f"nosuchexecution{uuid.uuid4().hex}"

    with pytest.raises(EngineError) as missed:
        await engine.correlate(name, "order-that-has-no-process")
    assert missed.value.is_no_match
    # A real error after it, so the log has been written past the miss when we look.
    with pytest.raises(EngineError) as failed:
        await engine.request("GET", f"/process-instance/{real_error}/variables/anything")
    assert failed.value.status == 500

    assert await eventually_true(lambda: real_error in _log_text(servers), 10), "the engine did not log the error"
    text = _log_text(servers)
    assert name not in text, "an expected correlation miss was logged (at most a DEBUG line is allowed)"
    after = text[text.index(real_error):]
    assert "\tat org.camunda.bpm.engine" in after[:20000], "a real error lost its stack trace"
