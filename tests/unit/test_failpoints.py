"""Failpoints: EDPO_FAILPOINTS parses into this service's armed points, and the armed pass kills
the process with SIGKILL, not one pass earlier or later."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from edpo.runtime.failpoints import NONE, POINTS, FailpointError, Failpoints, parse

# --- parsing ------------------------------------------------------------------------------------


def test_several_points_of_this_service_with_and_without_a_pass_number() -> None:
    spec = "order.after_start=kill@3, order.after_correlate=kill,order.before_publish=kill@12"
    assert parse(spec, "order") == {"after_start": 3, "after_correlate": 1, "before_publish": 12}


def test_points_of_other_services_are_ignored() -> None:
    spec = "warehouse.after_store=kill@3,order.after_start=kill,factory.before_complete=kill@2"
    assert parse(spec, "order") == {"after_start": 1}
    assert parse(spec, "warehouse") == {"after_store": 3}
    assert parse(spec, "delivery") == {}


@pytest.mark.parametrize("spec", ["", " ", ",", " , ,"])
def test_an_empty_spec_arms_nothing(spec: str) -> None:
    assert parse(spec, "order") == {}
    assert not Failpoints(spec, "order").armed


def test_every_documented_point_parses() -> None:
    spec = ",".join(f"order.{p}=kill@{i + 1}" for i, p in enumerate(POINTS))
    assert parse(spec, "order") == {p: i + 1 for i, p in enumerate(POINTS)}


@pytest.mark.parametrize(
    "bad",
    [
        "order.after_start",  # no action
        "order.after_start=",  # empty action
        "order.after_start=crash",  # unknown verb
        "order.after_stat=kill",  # unknown point
        "order=kill",  # no point
        "after_start=kill",  # no service
        "order.after_start=kill@0",  # passes count from 1
        "order.after_start=kill@-1",
        "order.after_start=kill@x",
        "order.after_start=kill@1.5",
    ],
)
def test_a_bad_spec_raises_with_the_item_and_the_expected_form(bad: str) -> None:
    with pytest.raises(FailpointError) as info:
        parse(bad, "order")
    message = str(info.value)
    assert repr(bad) in message, message
    assert "=kill[@n]" in message and "after_start" in message, message
    assert isinstance(info.value, ValueError)


def test_a_bad_item_of_another_service_is_an_error_too() -> None:
    """A typo in any service's point must not be silently ignored by the others."""
    with pytest.raises(FailpointError, match="warehouse.after_stroe"):
        parse("order.after_start=kill,warehouse.after_stroe=kill", "order")


def test_a_bad_spec_fails_when_the_failpoints_are_built() -> None:
    with pytest.raises(FailpointError):
        Failpoints("order.after_start=kill@0", "order")


# --- counting -------------------------------------------------------------------------------------


def test_unarmed_points_are_not_counted_and_do_nothing() -> None:
    fp = Failpoints("order.after_start=kill@5", "order")
    assert fp.armed_at("after_start")
    assert not fp.armed_at("after_correlate")
    for _ in range(10):
        fp.hit("after_correlate")
        fp.hit("no_such_point")
    assert fp._hits == {}
    assert not NONE.armed
    NONE.hit("after_start")  # the default: nothing armed, nothing happens


def test_passes_before_the_armed_one_are_counted_without_killing() -> None:
    fp = Failpoints("order.after_start=kill@4,order.after_store=kill@2", "order")
    for n in range(1, 4):
        fp.hit("after_start")
        assert fp._hits["after_start"] == n
    fp.hit("after_store")
    assert fp._hits == {"after_start": 3, "after_store": 1}


# --- the kill ---------------------------------------------------------------------------------------

_PROGRAM = textwrap.dedent(
    """
    import sys
    from edpo.runtime.failpoints import Failpoints

    spec, service, point, passes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fp = Failpoints(spec, service)
    for n in range(1, passes + 1):
        print(f"pass {n}", flush=True)
        fp.hit(point)
    print("survived", flush=True)
    """
)


def _run(spec: str, service: str, point: str, passes: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM, spec, service, point, str(passes)],
        check=False, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("armed", [1, 3])
def test_the_armed_pass_kills_the_process_with_sigkill(armed: int) -> None:
    spec = f"order.after_start=kill@{armed}" if armed != 1 else "order.after_start=kill"
    result = _run(spec, "order", "after_start", passes=6)
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stdout, result.stderr)
    assert result.stdout.splitlines() == [f"pass {n}" for n in range(1, armed + 1)], result.stdout
    assert f"failpoint order.after_start reached (pass {armed})" in result.stderr, result.stderr


def test_a_process_whose_points_are_not_reached_lives() -> None:
    # Armed at pass 4 but only 3 passes; another service's point; another point of this service.
    for spec, point in [("order.after_start=kill@4", "after_start"),
                        ("warehouse.after_start=kill", "after_start"),
                        ("order.after_store=kill", "after_start")]:
        result = _run(spec, "order", point, passes=3)
        assert result.returncode == 0, (spec, result.returncode, result.stderr)
        assert result.stdout.splitlines() == ["pass 1", "pass 2", "pass 3", "survived"], (spec, result.stdout)


def test_an_at_sign_without_a_pass_number_is_an_error() -> None:
    """'kill@' is not read as kill@1."""
    with pytest.raises(FailpointError, match="'order.after_start=kill@'"):
        parse("order.after_start=kill@", "order")


def test_a_non_ascii_digit_is_a_failpoint_error_with_the_item() -> None:
    """'²' passes str.isdigit() but not int(): it must be a FailpointError naming the item, not a bare ValueError."""
    with pytest.raises(FailpointError, match="kill@²"):
        parse("order.after_start=kill@²", "order")


@pytest.mark.parametrize("spec", ["order.after_start=kill,order.after_start=kill@3",
                                  "order.after_start=kill@2, order.after_start=kill@2"])
def test_a_point_given_twice_for_the_same_service_is_an_error(spec: str) -> None:
    """Which of the two would count is not obvious, so neither does."""
    with pytest.raises(FailpointError, match="'order.after_start' given twice"):
        parse(spec, "order")


def test_the_same_point_of_two_services_is_not_given_twice() -> None:
    spec = "order.after_store=kill@2,warehouse.after_store=kill@5"
    assert parse(spec, "order") == {"after_store": 2}
    assert parse(spec, "warehouse") == {"after_store": 5}


def test_fail_raises_on_its_window_of_passes_only() -> None:
    from edpo.runtime.failpoints import FailpointFailure

    points = Failpoints("warehouse.before_publish=fail@2+3", "warehouse")
    outcomes = []
    for _ in range(6):
        try:
            points.hit("before_publish")
            outcomes.append("ok")
        except FailpointFailure:
            outcomes.append("fail")
    assert outcomes == ["ok", "fail", "fail", "fail", "ok", "ok"]
    assert parse("warehouse.before_publish=fail", "warehouse") == {"before_publish": range(1, 2)}


@pytest.mark.parametrize("bad", ["order.after_start=kill@2+3", "order.after_start=fail@2+", "order.after_start=fail@2+0"])
def test_a_kill_has_no_window_and_a_window_is_positive(bad: str) -> None:
    with pytest.raises(FailpointError, match=r"=fail\[@n\[\+k\]\]"):
        parse(bad, "order")


# --- drop: messages lost on the way to their handler -------------------------------------------------


def test_drop_parses_at_before_handle_only() -> None:
    from edpo.runtime.failpoints import Drop

    assert parse("delivery.before_handle=drop@1+2", "delivery") == {"before_handle": Drop(range(1, 3))}
    assert parse("delivery.before_handle=drop", "delivery") == {"before_handle": Drop(range(1, 2))}
    assert parse("delivery.before_handle=kill@4", "delivery") == {"before_handle": 4}
    with pytest.raises(FailpointError, match=r"before_handle=drop\[@n\[\+k\]\]"):
        parse("delivery.after_store=drop@1+2", "delivery")


async def test_drop_loses_the_armed_arrivals_of_each_message_and_hands_on_the_rest() -> None:
    from edpo.models import Message, StartDelivery

    handled: list[str] = []

    async def handle(msg: Message) -> None:
        assert isinstance(msg, StartDelivery)
        handled.append(msg.order_id)

    guarded = Failpoints("delivery.before_handle=drop@1+2", "delivery").before_handle(handle)
    first = StartDelivery(order_id="o-1", attempt=1, delivery_address="Main St 1")
    other = StartDelivery(order_id="o-2", attempt=1, delivery_address="Main St 2")
    for msg in (first, other, first, first, other, first, other):
        await guarded(msg)
    # Counted per message id: each is handled from its third arrival on, the others' arrivals do not count.
    assert handled == ["o-1", "o-1", "o-2"]


def test_an_unarmed_before_handle_leaves_the_handler_as_it_is() -> None:
    from edpo.models import Message

    async def handle(msg: Message) -> None:
        pass

    assert Failpoints("delivery.before_publish=kill", "delivery").before_handle(handle) is handle
    assert Failpoints("delivery.before_handle=drop", "warehouse").before_handle(handle) is handle
