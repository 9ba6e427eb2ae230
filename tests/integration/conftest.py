"""Fixtures shared by the integration tests (each talks to one real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from edpo.camunda.engine import Engine
from edpo.config import Settings


@pytest.fixture
async def engine(servers: Settings) -> AsyncIterator[Engine]:
    """A REST client of the running engine, closed after the test."""
    async with Engine.from_settings(servers) as e:
        yield e
