"""The locks that keep e2e tests sharing one stack off a SKU whose books another test compares
(conftest.SkuLocks); no stack needed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from .conftest import SkuLocks


async def test_an_owner_waits_for_the_tests_ordering_its_sku_and_they_wait_for_it(tmp_path: Path) -> None:
    first, second, owner, later = (SkuLocks(tmp_path) for _ in range(4))
    await first.share(["LAMP", "CABLE"])
    await second.share(["LAMP"])  # tests ordering the same SKU do not wait for each other

    async def release(locks: SkuLocks, after: float) -> None:
        await asyncio.sleep(after)
        locks.release()

    t0 = time.monotonic()
    releases = asyncio.gather(release(first, 0.5), release(second, 1.0))
    await owner.own("LAMP")
    assert time.monotonic() - t0 >= 1.0, "the owner took the SKU while tests still ordered it"
    await releases

    t0 = time.monotonic()
    releasing = asyncio.create_task(release(owner, 0.5))
    await later.share(["LAMP"])
    assert time.monotonic() - t0 >= 0.5, "a test ordered a SKU another test owned"
    await releasing
    later.release()


async def test_an_owner_orders_only_what_it_owns_and_nobody_owns_cable(tmp_path: Path) -> None:
    owner = SkuLocks(tmp_path)
    await owner.own("LAMP")
    await owner.share(["LAMP"])
    with pytest.raises(AssertionError, match="orders only those"):
        await owner.share(["DOCK"])
    with pytest.raises(AssertionError, match="CABLE"):
        await SkuLocks(tmp_path).own("CABLE")
    owner.release()
