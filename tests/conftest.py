"""Shared fixtures: the real servers, started once per test session by the project's own code."""

from __future__ import annotations

import os

import pytest

from edpo.config import Settings
from tests.stack_check import running_stack_problems


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


@pytest.fixture(scope="session")
def same_settings_as_running_stack(settings: Settings) -> Settings:
    """The suite's settings, once it is clear that workers already running share them.

    Tests that reuse running workers depend on this: when a worker was started with other
    settings, every such test fails with the list of what differs instead of testing that
    other configuration (see tests/stack_check.py)."""
    problems = running_stack_problems(settings)
    if problems:
        pytest.fail(problems, pytrace=False)
    return settings
