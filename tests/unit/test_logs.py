"""Workers' log lines: the ids of what is handled on every record, text or one JSON object per line."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
from pathlib import Path

import pytest

from edpo.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    current_context,
    log_context,
    logging_config,
)


def _record(message: str = "hello %s", args: tuple = ("world",), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("edpo.test", logging.WARNING, __file__, 1, message, args, None)
    record.created = 1764352800.25  # 2025-11-28T18:00:00.250Z
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_log_context_nests_and_is_gone_after_the_block() -> None:
    assert current_context() == {}
    with log_context(order_id="o-1", trace_id="t-1"):
        with log_context(order_id="o-2", trace_id=None):  # an empty id does not hide the outer one
            assert current_context() == {"order_id": "o-2", "trace_id": "t-1"}
        assert current_context() == {"order_id": "o-1", "trace_id": "t-1"}
    assert current_context() == {}


async def test_each_task_sees_only_the_ids_of_what_it_handles() -> None:
    seen: dict[str, dict[str, str]] = {}

    async def handle(order_id: str) -> None:
        with log_context(order_id=order_id, trace_id=f"trace-{order_id}"):
            await asyncio.sleep(0.01)  # the other task runs meanwhile
            seen[order_id] = current_context()

    await asyncio.gather(handle("a"), handle("b"))
    assert seen == {"a": {"order_id": "a", "trace_id": "trace-a"}, "b": {"order_id": "b", "trace_id": "trace-b"}}


def test_filter_puts_service_and_the_contexts_ids_on_records_of_any_logger() -> None:
    record = _record()
    with log_context(order_id="o-7", trace_id="t-7"):
        assert ContextFilter("warehouse", 2).filter(record)
    assert (record.service, record.instance, record.order_id, record.trace_id) == ("warehouse", "2", "o-7", "t-7")

    outside = _record()
    ContextFilter("warehouse", 2).filter(outside)
    assert outside.order_id == "" and outside.trace_id == ""


def test_an_id_passed_with_the_record_wins_over_the_context() -> None:
    record = _record(order_id="explicit")
    with log_context(order_id="from-context"):
        ContextFilter("order", 1).filter(record)
    assert record.order_id == "explicit"


def test_json_line_has_time_level_service_logger_message_and_ids() -> None:
    record = _record()
    with log_context(order_id="o-1", trace_id="t-1"):
        ContextFilter("order", 1).filter(record)
    line = JsonFormatter().format(record)

    assert "\n" not in line
    assert json.loads(line) == {"time": "2025-11-28T18:00:00.250Z", "level": "WARNING", "service": "order",
                                "instance": "1", "logger": "edpo.test", "message": "hello world",
                                "order_id": "o-1", "trace_id": "t-1"}


def test_json_line_carries_the_exception_and_leaves_unknown_ids_out() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("edpo.test", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info())
    ContextFilter("delivery", 1).filter(record)
    line = JsonFormatter().format(record)

    assert "\n" not in line, "a traceback must not break the one-object-per-line format"
    parsed = json.loads(line)
    assert "order_id" not in parsed and "trace_id" not in parsed
    assert parsed["exception"].startswith("Traceback") and "ValueError: bad\nthing" in parsed["exception"]


def test_text_line_shows_the_order_and_trace_when_known() -> None:
    record = _record()
    with log_context(order_id="o-1", trace_id="t-1"):
        ContextFilter("order", 1).filter(record)
    assert TextFormatter().format(record) == (
        "2025-11-28T18:00:00.250Z WARNING [order-1] edpo.test: hello world (order=o-1 trace=t-1)")

    plain = _record()
    ContextFilter("order", 1).filter(plain)
    assert TextFormatter().format(plain).endswith("edpo.test: hello world")


def test_logging_config_writes_json_lines_to_a_file_that_rotates(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "worker-order-1.log"
    config = logging_config(service="order", instance=1, level="info", log_format="json", log_file=log_file,
                            max_bytes=2000, backups=2)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        with log_context(order_id="o-9"):
            for n in range(100):
                logging.getLogger("edpo.some.module").info("line %d of a long run", n)
        logging.getLogger("edpo.some.module").debug("below the level: not written")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = saved[0], saved[1]

    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["worker-order-1.log", "worker-order-1.log.1", "worker-order-1.log.2"], files
    lines = [json.loads(line) for p in log_file.parent.iterdir() for line in p.read_text().splitlines()]
    assert all(line["service"] == "order" and line["order_id"] == "o-9" for line in lines)
    assert all(p.stat().st_size <= 2000 for p in log_file.parent.iterdir())
    assert lines and not any("below the level" in line["message"] for line in lines)


def test_logging_config_refuses_an_unknown_format_or_level() -> None:
    with pytest.raises(ValueError, match="log format"):
        logging_config(service="order", instance=1, level="info", log_format="xml")
    with pytest.raises(ValueError, match="log level"):
        logging_config(service="order", instance=1, level="loud", log_format="text")


def test_logging_config_without_a_file_logs_to_standard_error(capsys: pytest.CaptureFixture[str]) -> None:
    config = logging_config(service="factory", instance=1, level="warning", log_format="text")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        logging.getLogger("edpo.x").warning("to stderr")
        logging.getLogger("edpo.x").info("not at warning level")
    finally:
        root.handlers, root.level = saved[0], saved[1]
    err = capsys.readouterr().err
    assert "WARNING [factory-1] edpo.x: to stderr" in err and "not at warning level" not in err


def test_rotate_keeps_the_newest_archives_and_drops_the_oldest(tmp_path: Path) -> None:
    from edpo.dev.process import rotate

    out = tmp_path / "worker-order-1.out"
    for run in range(4):
        out.write_text(f"run {run}")
        rotate(out, 2)
    assert not out.exists()
    assert (tmp_path / "worker-order-1.out.1").read_text() == "run 3"
    assert (tmp_path / "worker-order-1.out.2").read_text() == "run 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-order-1.out.1", "worker-order-1.out.2"]


def test_results_the_engine_refuses_for_expected_reasons_are_not_warnings() -> None:
    from edpo.camunda.engine import EngineError
    from edpo.camunda.worker import _expected_refusal

    conflict = EngineError(500, {"type": "OptimisticLockingException", "message": "ENGINE-03005 ... concurrently."})
    gone = EngineError(404, {"type": "RestException", "message": "External task with id 1 does not exist"})
    ended = EngineError(500, {"type": "NullValueException",
                              "message": "Cannot find execution with id 2 for external task 3: execution is null"})
    assert all(_expected_refusal(e) for e in (conflict, gone, ended))
    assert not _expected_refusal(EngineError(500, {"type": "ProcessEngineException", "message": "disk full"}))
    assert not _expected_refusal(ConnectionResetError("engine away"))


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_an_engine_outage_is_logged_once_with_a_reminder_a_minute_and_its_end(
        caplog: pytest.LogCaptureFixture) -> None:
    import aiohttp

    from edpo.camunda.worker import BatchWorker, EngineTaskClient

    class Engine:
        base_url = "http://127.0.0.1:1/engine-rest"
        away = True

        async def request(self, method: str, path: str, **kw: object) -> list:
            if self.away:
                raise aiohttp.ClientConnectionError("Cannot connect to host")
            return []

    engine, clock, pauses = Engine(), _Clock(), []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock.now += seconds

    config = {"asyncResponseTimeout": 5000, "usePriority": True, "lockDuration": 10000, "deserializeValues": False}
    worker = BatchWorker("warehouse-1-0", EngineTaskClient("warehouse-1-0", engine, config, 10),  # type: ignore[arg-type]
                         config, clock=clock, sleep=sleep)
    caplog.set_level(logging.INFO, logger="edpo.camunda.worker")

    for _ in range(80):  # about 2 minutes of polling an engine that is away
        assert await worker.fetch_and_execute("reserve-stock", None) is False
    engine.away = False
    assert await worker.fetch_and_execute("reserve-stock", None) is False  # answered: no tasks

    ours = [r for r in caplog.records if r.name == "edpo.camunda.worker"]
    said = [r.getMessage() for r in ours]
    assert len(said) == 4, said  # away, reminded twice in 150 s, back
    assert "fetching tasks from the engine failed" in said[0] and "ClientConnectionError" in said[0]
    assert all("still failing" in line for line in said[1:-1])
    assert "passes again" in said[-1] and "80 failures" in said[-1]
    assert not any(r.exc_info for r in caplog.records), "no traceback for an outage"
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    assert pauses[:3] == [0.1, 0.2, 0.4] and max(pauses) == 2.0


async def test_a_fetch_failing_for_another_reason_still_reaches_the_librarys_error_log() -> None:
    from edpo.camunda.engine import EngineError
    from edpo.camunda.worker import BatchWorker, EngineTaskClient

    class Engine:
        base_url = "http://127.0.0.1:1/engine-rest"

        async def request(self, method: str, path: str, **kw: object) -> list:
            raise EngineError(400, {"message": "bad request"})

    config = {"asyncResponseTimeout": 5000, "usePriority": True, "lockDuration": 10000, "deserializeValues": False}
    worker = BatchWorker("w", EngineTaskClient("w", Engine(), config, 10), config)  # type: ignore[arg-type]
    with pytest.raises(EngineError):
        await worker.fetch_and_execute("reserve-stock", None)


def test_an_unreachable_server_is_an_outage_a_bad_request_is_not() -> None:
    import aiohttp
    import asyncpg

    from edpo.camunda.engine import EngineError
    from edpo.runtime.consume import server_away

    assert server_away(aiohttp.ClientConnectionError("refused"))
    assert server_away(ConnectionRefusedError())
    assert server_away(asyncpg.CannotConnectNowError("starting up"))
    assert server_away(EngineError(503, "down")) and server_away(EngineError(500, {"type": "ProcessEngineException"}))
    assert not server_away(EngineError(400, {"type": "InvalidRequestException"}))
    assert not server_away(ValueError("a bug"))


async def test_what_an_external_task_handler_logs_names_the_order_and_trace_of_its_task() -> None:
    from camunda.external_task.external_task import ExternalTask

    from edpo.camunda.worker import BatchWorker, EngineTaskClient

    class Engine:
        base_url = "http://127.0.0.1:1/engine-rest"
        requests: list[str] = []

        async def request(self, method: str, path: str, **kw: object) -> list:
            self.requests.append(path)
            return []

    seen: list[dict[str, str]] = []

    async def handler(task: ExternalTask):  # noqa: ANN202
        seen.append(current_context())
        return task.complete({})

    config = {"asyncResponseTimeout": 5000, "usePriority": True, "lockDuration": 10000, "deserializeValues": False}
    engine = Engine()
    worker = BatchWorker("w", EngineTaskClient("w", engine, config, 10), config)  # type: ignore[arg-type]
    task = ExternalTask({"id": "task-1", "topicName": "pack-goods", "businessKey": "o-3", "workerId": "w",
                         "variables": {"trace_id": {"value": "t-3", "type": "String"}}})
    await worker._run(task, handler)

    assert seen == [{"order_id": "o-3", "trace_id": "t-3"}]
    assert engine.requests == ["/external-task/task-1/complete"]
    assert current_context() == {}
