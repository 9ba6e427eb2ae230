"""The fuzz run reuses the end-to-end stack: servers plus one worker per service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from edpo.config import Settings
from edpo.config.catalog import load_catalog
from tests.e2e.conftest import SkuLocks, stack  # noqa: F401 - the fixture, shared


@pytest.fixture(scope="session", autouse=True)
def every_sku_in_use(stack: Settings) -> Iterator[None]:  # noqa: F811 - the fixture imported above
    """The fuzzer orders and receives any SKU: an e2e test comparing a SKU's books waits until it is done."""
    locks = SkuLocks(stack.run_dir / "e2e-locks")
    asyncio.run(locks.share(item.sku for item in load_catalog(stack.catalog).skus))
    try:
        yield
    finally:
        locks.release()
