"""The fuzz run reuses the end-to-end stack: servers plus one worker per service."""

from __future__ import annotations

from tests.e2e.conftest import stack  # noqa: F401 - the fixture, shared
