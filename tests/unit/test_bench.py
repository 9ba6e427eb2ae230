"""The benchmark's arithmetic: percentiles, CPU from /proc, request counts, the ceiling's BPMN,
the result's shape. No servers, no timing."""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edpo.camunda.engine import variables
from edpo.cli import build_parser
from edpo.config import Settings
from edpo.dev import bench
from edpo.camunda import ORDER_FULFILMENT, ORDER_FULFILMENT_BPMN
from edpo.dev.ceiling import CEILING_KEY, ceiling_bpmn, start_values

BPMN_NS = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"
CAMUNDA_NS = "{http://camunda.org/schema/1.0/bpmn}"
DI_NS = "{http://www.omg.org/spec/BPMN/20100524/DI}"


def stat_line(pid: int, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0,
              comm: str = "proc") -> str:
    """A /proc/PID/stat line with the fields the accounting reads set, the rest plausible."""
    fields = ["S", str(ppid), str(pid), str(pid), "0", "-1", "4194560", "100", "0", "0", "0",
              str(utime), str(stime), str(cutime), str(cstime), "20", "0", "1", "0", "1234", "5678"]
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


def fake_proc(root: Path, lines: list[str]) -> Path:
    for line in lines:
        pid = line.split(" ", 1)[0]
        (root / pid).mkdir()
        (root / pid / "stat").write_text(line)
    (root / "self").mkdir()  # not a pid: skipped
    (root / "meminfo").write_text("MemTotal: 1024 kB\n")
    return root


# --- percentiles -------------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 0) == 1.0
    assert bench.percentile(values, 100) == 5.0
    assert bench.percentile(values, 95) == pytest.approx(4.8)
    assert bench.percentile([7.0], 99) == 7.0
    assert math.isnan(bench.percentile([], 50))


def test_latency_summary_of_nothing_is_empty_not_zero() -> None:
    assert bench.latency_summary([]) == {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    summary = bench.latency_summary([0.1 * i for i in range(1, 101)])
    assert summary["p50"] == pytest.approx(5.05)
    assert summary["p99"] == pytest.approx(9.901)
    assert summary["max"] == pytest.approx(10.0)


# --- CPU from /proc ------------------------------------------------------------------------------


def test_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    s = bench.parse_stat(stat_line(4321, 17, 150, 30, 9, 1, comm="java (main) x"))
    assert (s.pid, s.ppid, s.utime, s.stime, s.cutime, s.cstime) == (4321, 17, 150, 30, 9, 1)
    assert s.own == 180 and s.reaped_children == 10


def test_a_postmaster_is_charged_its_backends_and_its_exited_children(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, [
        stat_line(100, 1, 10, 5, cutime=40, cstime=2),  # postmaster; 42 ticks of backends that exited
        stat_line(101, 100, 300, 100),                   # a backend
        stat_line(102, 100, 7, 3),                       # the checkpointer
        stat_line(103, 101, 1, 1),                       # a grandchild
        stat_line(200, 1, 999, 999),                     # someone else
        stat_line(300, 1, 50, 50),                       # a worker
    ])
    stats = bench.read_proc(proc)
    assert set(stats) == {100, 101, 102, 103, 200, 300}
    assert bench.tree_ticks(stats, 100) == 15 + 42 + 400 + 10 + 2
    assert bench.tree_ticks(stats, 999) == 0  # gone: nothing, not an error
    hz = os.sysconf("SC_CLK_TCK")
    cpu = bench.cpu_snapshot({"postgres": [100], "order": [300], "gone": [999]}, proc)
    assert cpu == {"postgres": pytest.approx(469 / hz), "order": pytest.approx(100 / hz), "gone": 0.0}


def test_cpu_report_gives_ms_per_order_and_skips_groups_seen_at_one_end() -> None:
    before = {"order": 10.0, "camunda": 100.0, "bench": 1.0, "kafka": 5.0}
    after = {"order": 12.0, "camunda": 106.0, "bench": 1.5, "warehouse": 3.0}
    report = bench.cpu_report(before, after, orders=100)
    assert report["seconds"] == {"order": 2.0, "camunda": 6.0, "bench": 0.5}
    assert report["ms_per_order"] == {"order": 20.0, "camunda": 60.0, "bench": 5.0}
    assert report["system_ms_per_order"] == 80.0  # the client is not the system
    assert bench.cpu_report(before, after, orders=0)["system_ms_per_order"] is None


def test_process_groups_read_worker_pid_files_by_service(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / "order-1.pid").write_text(str(os.getpid()))
    (workers / "order-2.pid").write_text(str(os.getppid()))
    (workers / "warehouse-1.pid").write_text("999999999")  # not running: left out
    groups = bench.process_groups(settings)
    assert sorted(groups["order"]) == sorted([os.getpid(), os.getppid()])
    assert "warehouse" not in groups
    assert groups["bench"] == [os.getpid()]
    assert bench.worker_instances(settings) == [("order", 1), ("order", 2), ("warehouse", 1)]


# --- engine requests --------------------------------------------------------------------------------


def test_request_counts_are_differenced_per_worker_and_summed() -> None:
    before = {"order-1": {"POST /message": 10, "GET /user": 1},
              "warehouse-1": {"POST /external-task/{id}/complete": 5}}
    after = {"order-1": {"POST /message": 30, "GET /user": 1},
             "warehouse-1": {"POST /external-task/{id}/complete": 3},  # restarted: 3 new ones
             "delivery-1": {"POST /external-task/{id}/complete": 4}}   # new worker
    delta = bench.request_delta(before, after)
    assert delta == {"POST /message": 20, "POST /external-task/{id}/complete": 7}
    assert "GET /user" not in delta  # unchanged kinds are not reported


def test_requests_report_counts_per_order_with_and_without_long_polls() -> None:
    report = bench.requests_report({"POST /message": 200, bench.FETCH: 50, "POST /external-task/{id}/complete": 300},
                                   orders=100)
    assert report["total"] == 550
    assert report["per_order"] == 5.5
    assert report["per_order_without_fetch"] == 5.0
    assert list(report["by_kind"]) == ["POST /external-task/{id}/complete", "POST /message", bench.FETCH]
    assert report["by_kind_per_order"]["POST /message"] == 2.0


# --- the ceiling's process ------------------------------------------------------------------------


def _external_tasks(root: ET.Element) -> dict[str, str]:
    return {t.get("id", ""): t.get(f"{CAMUNDA_NS}topic", "") for t in root.iter()
            if t.get(f"{CAMUNDA_NS}type") == "external"}


def test_ceiling_bpmn_keeps_every_external_task_on_renamed_topics_under_another_key() -> None:
    original = ET.fromstring(ORDER_FULFILMENT_BPMN.read_bytes())
    text = ceiling_bpmn(ORDER_FULFILMENT_BPMN.read_text())
    rewritten = ET.fromstring(text.encode())

    before, after = _external_tasks(original), _external_tasks(rewritten)
    assert len(before) >= 5 and before.keys() == after.keys()
    assert all(after[task] == f"ceiling-{topic}" for task, topic in before.items())
    assert {"ceiling-reserve-stock", "ceiling-pack-goods", "ceiling-start-delivery"} <= set(after.values())

    processes = rewritten.findall(f"{BPMN_NS}process")
    assert [p.get("id") for p in processes] == [CEILING_KEY]
    plane = rewritten.find(f".//{DI_NS}BPMNPlane")
    assert plane is not None and plane.get("bpmnElement") == CEILING_KEY
    assert ORDER_FULFILMENT not in text
    # Everything else is the same shape: as many elements, the same messages.
    assert len(list(rewritten.iter())) == len(list(original.iter()))
    assert [m.get("name") for m in rewritten.findall(f"{BPMN_NS}message")] == \
        [m.get("name") for m in original.findall(f"{BPMN_NS}message")]


def test_ceiling_instances_start_with_the_variables_the_order_service_passes() -> None:
    settings = Settings(delivery_attempts=4, delivery_retry_backoff=0)
    values = start_values(settings, "ceiling-x-1")
    assert {"order_id", "delivery_address", "lines", "trace_id", "order_summary", "order_history",
            "missing_summary", "max_delivery_attempts", "delivery_attempt", "delivery_retry_backoff",
            "delivery_timeout", "stock_timeout", "order_deadline"} == set(values)
    typed = variables(values)
    assert typed["lines"]["type"] == "Json"
    assert typed["delivery_attempt"] == {"value": 0, "type": "Integer"}
    assert typed["max_delivery_attempts"]["value"] == 4
    assert typed["delivery_retry_backoff"]["value"] == "PT0S"


# --- the result -----------------------------------------------------------------------------------


def _mode(delivered: int, failed: dict[str, int] | None = None) -> dict[str, object]:
    return {"orders": delivered + sum((failed or {}).values()), "placed": delivered, "delivered": delivered,
            "post_errors": 0, "failed": failed or {}, "latency": bench.latency_summary([0.2, 0.3, 0.9]),
            "cpu": bench.cpu_report({"order": 1.0, "camunda": 2.0}, {"order": 2.0, "camunda": 6.0}, delivered),
            "engine_requests": bench.requests_report({"POST /message": 2 * delivered, bench.FETCH: 3}, delivered)}


def _result() -> dict[str, object]:
    burst = _mode(100) | {"posts_seconds": 1.0, "total_seconds": 10.0, "orders_per_second": 10.0}
    rates = [_mode(50) | {"offered_rate": r, "duration": 10, "achieved_rate": r, "lost": 0, "max_send_lag": 0.01}
             for r in (10.0, 5.0)]
    ceiling = {"process_key": CEILING_KEY, "instances": 100, "ended": 100, "ended_in_history": 100, "failures": 0,
               "seconds": 4.0, "instances_per_second": 25.0, "latency": bench.latency_summary([1.0]),
               "cpu": bench.cpu_report({"camunda": 0.0}, {"camunda": 4.0}, 100),
               "engine_requests": bench.requests_report({"POST /message": 200}, 100)}
    result = {"edpo_bench": bench.RESULT_VERSION, "machine": {"cores": 2, "ram_gib": 23.5}, "settings": {},
              "single": _mode(3) | {"median": 0.3}, "burst": burst, "rates": rates, "ceiling": ceiling}
    return result | {"ratio": bench.ratio(result)}


def test_result_is_json_with_the_ratio_and_a_readable_summary() -> None:
    result = json.loads(json.dumps(_result()))
    assert result["ratio"] == 0.4
    text = "\n".join(bench.summary(result))
    assert "10.0 orders/s" in text and "25.0 instances/s" in text and "system / ceiling = 0.4" in text
    assert "engine requests per order (burst): 2.0" in text
    assert bench.failures(result) == []


def test_lost_and_cancelled_orders_and_unfinished_ceiling_are_failures() -> None:
    result = _result()
    result["rates"][1] = result["rates"][1] | {"failed": {"LOST": 2}}  # type: ignore[index]
    result["ceiling"] = result["ceiling"] | {"ended": 90}  # type: ignore[operator]
    problems = bench.failures(result)
    assert len(problems) == 2
    assert "rate 5/s" in problems[0] and "LOST" in problems[0]
    assert "ceiling: 90/100" in problems[1]
    assert bench.ratio({"burst": result["burst"], "ceiling": None}) is None


def test_plot_draws_percentiles_against_offered_rate(tmp_path: Path) -> None:
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(_result()))
    assert [p[0] for p in bench.plot_points([_result()])] == [5.0, 10.0]
    png = tmp_path / "out" / "bench.png"
    assert bench.plot([source], png) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "none.json"
    empty.write_text(json.dumps(_result() | {"rates": []}))
    assert bench.plot([empty], tmp_path / "none.png") == 1


def test_bench_command_line() -> None:
    args = build_parser().parse_args(["bench", "--orders", "100", "--rate", "5,10", "--duration", "10", "--no-ceiling"])
    assert (args.orders, args.rate, args.duration, args.no_ceiling, args.bench_cmd) == (100, (5.0, 10.0), 10.0, True, None)
    plot = build_parser().parse_args(["bench", "plot", "a.json", "b.json", "-o", "x.png"])
    assert plot.bench_cmd == "plot" and plot.results == [Path("a.json"), Path("b.json")] and plot.output == Path("x.png")
    for bad in ("0", "5,-1", "fast"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "--rate", bad])


def test_orders_lost_in_the_warm_up_are_failures_too() -> None:
    # The warm-up is not measured, but an order it loses is lost all the same.
    result = _result() | {"warmup": {"orders": 50, "delivered": 48, "failed": {"LOST": 2}, "orders_per_second": 9.0}}
    [problem] = bench.failures(result)
    assert "warm-up: 48/50" in problem and "LOST" in problem
    result["warmup"] = {"orders": 50, "delivered": 50, "failed": {}, "orders_per_second": 9.0}
    assert bench.failures(result) == []
