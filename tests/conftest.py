"""Shared fixtures: the real servers, started once per test session by the project's own code."""

from __future__ import annotations

import os

import pytest

from edpo.config import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def servers(settings: Settings) -> Settings:
    """Kafka, PostgreSQL and Camunda up and healthy (a no-op when `make test` started them)."""
    from edpo.cli import infra_up

    if os.environ.get("EDPO_TEST_NO_START") != "1":
        infra_up(settings)
    return settings
