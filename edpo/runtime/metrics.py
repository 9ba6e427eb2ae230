"""A service worker's Prometheus metrics, served by `ServiceApp` at GET /metrics.

Each worker keeps its metrics in a `CollectorRegistry` of its own (never the process-wide
default), so several apps in one process (the tests) do not collide. Every metric carries the
label `service`; Prometheus adds `instance` (host:port) when it scrapes.

Two kinds of metric:

- counted as things happen (events consumed and produced, handler and external-task durations,
  dead letters): a label lookup and an increment per event, the children cached by label;
- read when scraped (orders by status, outbox and inbox backlog, stock, production, deliveries):
  a service registers a `Part`, an async function returning samples, run with a timeout. A part
  that fails or is slow is left out of that scrape and counted in `edpo_scrape_errors_total`;
  the scrape itself always answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from edpo.models.base import type_of

logger = logging.getLogger(__name__)

# The classic text format (version 0.0.4): what every Prometheus version reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Seconds a part read at scrape time may take before the scrape answers without it (a Prometheus
# scrape times out after 10 s by default).
PART_TIMEOUT = 2.0
# Handler latencies: a table write and a publish take about a millisecond, a database
# transaction a few; retries through an outage take seconds.
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# External tasks mostly wait for a command's acknowledgment (milliseconds) or its resends (seconds).
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# `_created` series double the size of every counter's exposition and say nothing here.
disable_created_metrics()

Sample = tuple[Gauge, tuple[str, ...], float]
Part = Callable[[], Awaitable[Iterable[Sample]]]


class _Letter(msgspec.Struct):
    type: str = ""
    topic: str = ""
    reason: str = ""


_letter_decoder = msgspec.json.Decoder(_Letter)


def message_type(payload: bytes) -> str:
    """The `type` of an encoded message ("?" when the payload is not a message)."""
    try:
        return type_of(payload) or "?"
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "?"


def dead_letter_kind(reason: str) -> str:
    """The kind of a dead letter's reason: undecodable, handler_failed, or uncorrelated (the order
    service's process bridge gave an event up: no process instance took it)."""
    if reason.startswith("undecodable"):
        return "undecodable"
    if reason.startswith("handler failed"):
        return "handler_failed"
    return "uncorrelated"


class AgentMetrics:
    """What one agent's loop (runtime.consume) reports: records consumed, skipped, dead-lettered,
    and how long its handler took."""

    def __init__(self, metrics: Metrics | None, agent: str) -> None:
        self._metrics = metrics
        self._agent = agent
        self._consumed: dict[tuple[str, str], Any] = {}
        self._latency = metrics.handler_seconds.labels(metrics.service, agent) if metrics else None

    def consumed(self, topic: str, kind: str) -> None:
        if self._metrics is None:
            return
        child = self._consumed.get((topic, kind))
        if child is None:
            child = self._consumed[(topic, kind)] = self._metrics.consumed.labels(self._metrics.service, topic, kind)
        child.inc()

    def skipped(self, topic: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.skipped.labels(self._metrics.service, topic, reason).inc()

    def handled(self, seconds: float) -> None:
        if self._latency is not None:
            self._latency.observe(seconds)

    def retried(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.handler_retries.labels(self._metrics.service, self._agent, kind).inc()


# For loops run without a worker (unit tests): reports nothing.
NO_AGENT_METRICS = AgentMetrics(None, "")


class Metrics:
    """The Prometheus metrics of one service worker, in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter("edpo_events_consumed", "Records decoded and handed to an agent's handler, by topic "
                                "and message type", ["service", "topic", "type"], registry=r)
        self.skipped = Counter("edpo_events_skipped", "Records skipped: a message type the topic does not declare, "
                               "or a topic nobody declared", ["service", "topic", "reason"], registry=r)
        self.produced = Counter("edpo_events_produced", "Messages sent to Kafka (handed to the producer), by topic "
                                "and message type", ["service", "topic", "type"], registry=r)
        self.dead_letters = Counter("edpo_dead_letters", "Dead letters sent, by the topic of the record given up "
                                    "and why (undecodable, handler_failed, uncorrelated)",
                                    ["service", "topic", "kind"], registry=r)
        self.handler_seconds = Histogram("edpo_handler_seconds", "Time an agent's handler took for one record, "
                                         "retries included", ["service", "agent"], buckets=HANDLER_BUCKETS, registry=r)
        self.handler_retries = Counter("edpo_handler_retries", "Handler runs that failed and were tried again: "
                                       "outage (a server away) or failure (anything else)",
                                       ["service", "agent", "kind"], registry=r)
        self.task_seconds = Histogram("edpo_external_task_seconds", "Time an external task's handler took, by "
                                      "BPMN topic", ["service", "topic"], buckets=TASK_BUCKETS, registry=r)
        self.tasks = Counter("edpo_external_tasks", "External tasks handled, by BPMN topic and outcome (completed, "
                             "bpmn_error, failed: retried, then an incident)", ["service", "topic", "outcome"],
                             registry=r)
        self.scrape_errors = Counter("edpo_scrape_errors", "Parts of a scrape left out because reading them failed "
                                     "or took longer than 2 s (a database away, say)", ["service", "part"], registry=r)
        self._produced: dict[tuple[str, str], Any] = {}
        self._tasks: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._parts: dict[str, tuple[Part, tuple[Gauge, ...]]] = {}
        self._failing: set[str] = set()

    # --- counted as things happen ------------------------------------------------------------

    def agent(self, name: str) -> AgentMetrics:
        return AgentMetrics(self, name)

    def sent(self, topic: str, kind: str) -> None:
        """A message handed to the producer."""
        child = self._produced.get((topic, kind))
        if child is None:
            child = self._produced[(topic, kind)] = self.produced.labels(self.service, topic, kind)
        child.inc()

    def dead_letter(self, topic: str, reason: str) -> None:
        self.dead_letters.labels(self.service, topic, dead_letter_kind(reason)).inc()

    def dead_letter_payload(self, payload: bytes) -> None:
        """A dead letter sent already encoded (the order service's outbox)."""
        try:
            letter = _letter_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            letter = _Letter(type="DeadLetter", topic="?")
        if letter.type == "DeadLetter":  # not a mark of a replay, say
            self.dead_letter(letter.topic, letter.reason)

    def external_task(self, topic: str, outcome: str, seconds: float) -> None:
        """An external task's handler returned (completed, bpmn_error) or raised (failed)."""
        cached = self._tasks.get(topic)
        if cached is None:
            cached = self._tasks[topic] = (self.task_seconds.labels(self.service, topic), {})
        latency, outcomes = cached
        latency.observe(seconds)
        child = outcomes.get(outcome)
        if child is None:
            child = outcomes[outcome] = self.tasks.labels(self.service, topic, outcome)
        child.inc()

    # --- read when scraped -------------------------------------------------------------------

    def gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        """A gauge of this worker (labels: service, then `labels`) for a part read at scrape time."""
        return Gauge(name, documentation, ["service", *labels], registry=self.registry)

    def at_scrape(self, part: str, read: Part, *gauges: Gauge) -> None:
        """Read `part` at every scrape: read() returns (gauge, label values without service, value)
        for the gauges given; their samples are replaced by what it returned, or dropped when it fails."""
        self._parts[part] = (read, gauges)

    def collect_counters(self, name: str, documentation: str, label: str,
                         source: Callable[[], Mapping[str, int] | None]) -> None:
        """Expose a dict of counts kept elsewhere ({label value: count}) as the counter `name`."""
        self.registry.register(_DictCounters(name, documentation, self.service, label, source))

    async def refresh(self) -> None:
        """Run every part, each with its own timeout; one failing leaves the others alone."""
        names = list(self._parts)
        results = await asyncio.gather(*(asyncio.wait_for(self._parts[n][0](), PART_TIMEOUT) for n in names),
                                       return_exceptions=True)
        for name, result in zip(names, results):
            gauges = self._parts[name][1]
            for g in gauges:
                g.clear()
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                self.scrape_errors.labels(self.service, name).inc()
                log = logger.debug if name in self._failing else logger.warning
                log("metrics: %s left out of the scrape (%s: %s)", name, type(result).__name__, result)
                self._failing.add(name)
                continue
            self._failing.discard(name)
            try:
                for gauge, labels, value in result:
                    gauge.labels(self.service, *labels).set(value)
            except Exception as e:  # noqa: BLE001 - a part's bad sample must not fail the scrape
                for g in gauges:
                    g.clear()
                self.scrape_errors.labels(self.service, name).inc()
                logger.warning("metrics: %s left out of the scrape (%s: %s)", name, type(e).__name__, e)

    async def exposition(self) -> bytes:
        """Every metric in Prometheus's text format, the scrape-time parts read afresh."""
        await self.refresh()
        return generate_latest(self.registry)


class _DictCounters(Collector):
    """Counts kept in a dict elsewhere (the /health counters, the engine's requests), read at scrape."""

    def __init__(self, name: str, documentation: str, service: str, label: str,
                 source: Callable[[], Mapping[str, int] | None]) -> None:
        self.name, self.documentation, self.service, self.label, self.source = name, documentation, service, label, source

    def describe(self) -> Iterable[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, labels=["service", self.label])]

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["service", self.label])
        for key, value in sorted((self.source() or {}).items()):
            family.add_metric([self.service, key], value)
        return [family]
