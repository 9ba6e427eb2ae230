"""When a worker counts as ready, and what `edpo up` says about one that is not."""

from __future__ import annotations

from edpo.agents.warehouse.web import unstocked_skus
from edpo.dev.workers import Health, not_ready_report
from edpo.runtime.app import readiness_gaps

ME, OTHER = "http://127.0.0.1:6067", "http://127.0.0.1:6167"


def test_a_worker_whose_tables_are_recovered_and_whose_checks_pass_is_ready() -> None:
    assert readiness_gaps(recovered=True, rebalancing=False, checks={"service start-up": True}) == []


def test_a_worker_is_not_ready_before_its_first_table_recovery_completed() -> None:
    gaps = readiness_gaps(recovered=False, rebalancing=False, checks={"service start-up": True})
    assert gaps == ["partition assignment and table recovery"]


def test_a_worker_that_was_ready_is_not_ready_while_its_group_rebalances() -> None:
    assert readiness_gaps(recovered=True, rebalancing=True, checks={}) == ["rebalance"]


def test_every_failed_service_check_is_named() -> None:
    gaps = readiness_gaps(recovered=False, rebalancing=False,
                          checks={"service start-up": False, "changelog partitions assigned": True,
                                  "catalog stock seeded": False})
    assert gaps == ["partition assignment and table recovery", "service start-up", "catalog stock seeded"]


def test_skus_owned_by_this_worker_without_stock_keep_it_from_being_ready() -> None:
    owners = {"A": ME, "B": OTHER, "C": ME}
    stocked = {"A"}
    missing = unstocked_skus(["A", "B", "C"], owner_of=owners.__getitem__, me=ME, stocked=stocked.__contains__)
    assert missing == ["C"], "B is another worker's; A has its stock"


def test_skus_of_other_workers_do_not_count() -> None:
    assert unstocked_skus(["B"], owner_of=lambda sku: OTHER, me=ME, stocked=lambda sku: False) == []


def test_the_timeout_report_names_each_worker_that_is_not_ready_and_why() -> None:
    report = not_ready_report({
        "order-1": Health(True),
        "warehouse-1": Health(False, "waiting for catalog stock seeded"),
        "delivery-1": Health(False, "no answer on http://127.0.0.1:6069/health"),
    }, timeout=180)
    assert report.splitlines() == [
        "not every worker was ready within 180s:",
        "  delivery-1: no answer on http://127.0.0.1:6069/health",
        "  warehouse-1: waiting for catalog stock seeded",
    ]
