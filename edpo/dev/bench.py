"""`edpo bench`: latency and throughput of orders through the public API, the engine's ceiling
for the same process, and what each process spends per order.

Run it against a stack whose simulated durations are zero (`make bench` does that) so the
figures measure EDPO's own overhead: Kafka hops, Faust agents, PostgreSQL, Camunda.

Orders are placed with POST /orders; when they finished, and how long they took, is read from
the order service's database (one query every half second over the run's open orders), so the
benchmark does not load the services it measures with status polls. An order's latency is its
DELIVERED history entry's time minus the client's clock just before its POST (same machine).

Modes: single orders one after another (`--runs`), a burst placed at once (`--orders`), open-loop
offered load at fixed rates (`--rate R[,R...] --duration S`), and the engine ceiling after the
burst (edpo/dev/ceiling.py). For each measured mode: CPU seconds of every process group from
/proc, and the engine REST requests the workers sent (their /health `engine_requests`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from edpo.config import MONITOR, SERVICES, Settings
from edpo.runtime.http import bearer

SKU = "CABLE"
FINAL = ("DELIVERED", "CANCELLED", "REJECTED")
PERCENTILES = (50, 95, 99)
FETCH = "POST /external-task/fetchAndLock"
POLL_INTERVAL = 0.5
PROGRESS_EVERY = 3.0
RESULT_VERSION = 1
# The process groups whose CPU is accounted, in report order ("bench" is this client).
GROUPS = (*SERVICES, MONITOR, "camunda", "kafka", "postgres", "bench")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- pure parts: statistics, /proc accounting, request counts ----------------------------------


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = (len(data) - 1) * p / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def latency_summary(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99, mean and max in seconds (None when there is nothing to summarise)."""
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None, "max": None}
    out: dict[str, float | None] = {f"p{p}": round(percentile(values, p), 4) for p in PERCENTILES}
    return out | {"mean": round(statistics.fmean(values), 4), "max": round(max(values), 4)}


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the accounting needs; times in clock ticks."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def own(self) -> int:
        return self.utime + self.stime

    @property
    def reaped_children(self) -> int:
        return self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line. The command name (field 2) may hold spaces and parentheses, so
    the fields are counted from its last ')': state is field 3, ppid 4, utime..cstime 14..17."""
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    pid = int(head.split("(", 1)[0])
    return ProcStat(pid=pid, ppid=int(fields[1]), utime=int(fields[11]), stime=int(fields[12]),
                    cutime=int(fields[13]), cstime=int(fields[14]))


def read_proc(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    """Every process's stat (processes that end while being read are skipped)."""
    stats: dict[int, ProcStat] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        stats[stat.pid] = stat
    return stats


def tree_ticks(stats: Mapping[int, ProcStat], root: int) -> int:
    """CPU ticks of a process and all its descendants, plus those of children they waited for
    after the children exited (cutime+cstime): a PostgreSQL postmaster with its backends, a JVM
    started through a wrapper. A live child is never counted twice: the kernel adds a child to
    its parent's cutime only once it has been reaped."""
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid].own + stats[pid].reaped_children
        todo += children.get(pid, [])
    return total


def cpu_snapshot(groups: Mapping[str, list[int]], proc: Path = Path("/proc")) -> dict[str, float]:
    """CPU seconds used so far by each group of process trees."""
    stats = read_proc(proc)
    hz = os.sysconf("SC_CLK_TCK")
    return {name: sum(tree_ticks(stats, pid) for pid in pids) / hz for name, pids in groups.items()}


def cpu_report(before: Mapping[str, float], after: Mapping[str, float], orders: int) -> dict[str, Any]:
    """CPU seconds per group over a run and milliseconds per order; groups seen only at one end
    (a process that started or ended meanwhile) are left out rather than guessed."""
    seconds = {g: round(max(after[g] - before[g], 0.0), 3) for g in after if g in before}
    per_order = {g: round(1000 * s / orders, 2) for g, s in seconds.items()} if orders else {}
    system = [g for g in seconds if g != "bench"]
    return {
        "seconds": seconds,
        "ms_per_order": per_order,
        "system_ms_per_order": round(sum(per_order.get(g, 0.0) for g in system), 2) if orders else None,
    }


def request_delta(before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]) -> Counter[str]:
    """Engine requests sent between two readings of every worker's counters (worker -> kind ->
    count), summed over workers. A counter that went down belongs to a worker that restarted:
    everything it counted since is new."""
    total: Counter[str] = Counter()
    for worker, kinds in after.items():
        old = before.get(worker, {})
        for kind, n in kinds.items():
            prev = old.get(kind, 0)
            total[kind] += n - prev if n >= prev else n
    return Counter({kind: n for kind, n in total.items() if n > 0})


def requests_report(counts: Mapping[str, int], orders: int) -> dict[str, Any]:
    """Requests by kind, their total, and both per order; also the total without fetch-and-lock,
    whose long polls are sent as often when idle as when busy and so depend on the run's length."""
    total = sum(counts.values())
    work = sum(n for kind, n in counts.items() if kind != FETCH)
    by_kind = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "by_kind": by_kind,
        "total": total,
        "per_order": round(total / orders, 2) if orders else None,
        "per_order_without_fetch": round(work / orders, 2) if orders else None,
        "by_kind_per_order": {k: round(n / orders, 2) for k, n in by_kind.items()} if orders else {},
    }


def machine() -> dict[str, Any]:
    """Cores, RAM and CPU model of this machine."""
    info: dict[str, Any] = {"cores": os.cpu_count()}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


# --- the stack: processes, counters, API, database ----------------------------------------------


def process_groups(settings: Settings) -> dict[str, list[int]]:
    """Root pids by group: each service's workers (RUN_DIR/workers/SERVICE-N.pid), the servers
    (their pid files; PostgreSQL's postmaster.pid), and this process."""
    from edpo.dev.servers import all_servers
    from edpo.dev.workers import running_workers

    groups: dict[str, list[int]] = {}
    for proc in running_workers(settings):
        pid = proc.pid()
        if pid is not None:
            groups.setdefault(proc.name.rsplit("-", 1)[0], []).append(pid)
    for server in all_servers(settings):
        pid = server.proc.pid()
        if pid is not None:
            groups[server.name] = [pid]
    groups["bench"] = [os.getpid()]
    return groups


def worker_instances(settings: Settings) -> list[tuple[str, int]]:
    """(service, instance) of every worker with a pid file."""
    from edpo.dev.workers import running_workers

    found = []
    for proc in running_workers(settings):
        service, _, n = proc.name.rpartition("-")
        if service in SERVICES and n.isdigit():
            found.append((service, int(n)))
    return found


async def engine_counters(http: aiohttp.ClientSession, settings: Settings) -> dict[str, dict[str, int]]:
    """Each worker's cumulative engine requests by kind, from its /health (503s carry them too)."""
    async def one(service: str, n: int) -> tuple[str, dict[str, int]]:
        url = f"http://{settings.host}:{settings.web_port(service, n)}/health"
        try:
            async with http.get(url) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return f"{service}-{n}", {}
        return f"{service}-{n}", dict(body.get("engine_requests") or {})

    return dict(await asyncio.gather(*(one(s, n) for s, n in worker_instances(settings))))


class Client:
    """The public API as a customer and a warehouse clerk use it."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.orders = f"http://{settings.host}:{settings.web_ports['order']}"
        self.warehouse = f"http://{settings.host}:{settings.web_ports['warehouse']}"

    async def place(self) -> str:
        body = {"customer_id": "bench", "delivery_address": "Bench Street 1", "items": [{"sku": SKU, "quantity": 1}]}
        async with self.http.post(f"{self.orders}/orders", json=body) as r:
            reply = await r.json(content_type=None)
            if r.status != 201:
                raise RuntimeError(f"POST /orders: {r.status} {reply}")
            return reply["order_id"]

    async def available(self) -> int:
        async with self.http.get(f"{self.warehouse}/stock/{SKU}") as r:
            return (await r.json())["available"]

    async def stock_up(self, quantity: int, timeout: float = 60) -> None:
        """Book a receipt so that at least `quantity` units are available, and wait until they are."""
        available = await self.available()
        if available >= quantity:
            return
        async with self.http.post(f"{self.warehouse}/stock/{SKU}/receipts", json={"quantity": quantity - available}) as r:
            if r.status != 202:
                raise RuntimeError(f"POST /stock/{SKU}/receipts: {r.status} {await r.text()}")
        deadline = time.monotonic() + timeout
        while await self.available() < quantity:
            if time.monotonic() > deadline:
                raise RuntimeError(f"stock of {SKU} did not reach {quantity} within {timeout:.0f}s")
            await asyncio.sleep(0.2)


async def finished(db: Any, order_ids: list[str]) -> list[tuple[str, str, float | None]]:
    """(order id, final status, DELIVERED time as epoch seconds) of those orders that ended."""
    rows = await db.fetch(
        "SELECT o.order_id, o.status, (SELECT min(h.at) FROM order_history h"
        "  WHERE h.order_id = o.order_id AND h.status = 'DELIVERED') AS delivered_at"
        " FROM orders o WHERE o.order_id = ANY($1::text[]) AND o.status = ANY($2::text[])",
        order_ids, list(FINAL))
    return [(r["order_id"], r["status"], r["delivered_at"].timestamp() if r["delivered_at"] else None) for r in rows]


# --- one measured run --------------------------------------------------------------------------


@dataclass
class Run:
    """The orders of one mode: when each was sent, how each ended."""

    name: str
    planned: int
    t0: float = field(default_factory=time.time)
    sent: dict[str, float] = field(default_factory=dict)  # order id -> client time before its POST
    post_errors: list[str] = field(default_factory=list)
    posts_done_at: float | None = None
    delivered: dict[str, float] = field(default_factory=dict)  # order id -> DELIVERED time
    failed: dict[str, str] = field(default_factory=dict)  # order id -> CANCELLED / REJECTED / LOST

    @property
    def open(self) -> list[str]:
        return [o for o in self.sent if o not in self.delivered and o not in self.failed]

    def latencies(self) -> list[float]:
        return [self.delivered[o] - self.sent[o] for o in self.delivered]

    def progress(self) -> str:
        return (f"[{self.name}] placed {len(self.sent)}/{self.planned}, delivered {len(self.delivered)}, "
                f"failed {len(self.failed) + len(self.post_errors)}, {time.time() - self.t0:.1f}s")


class Bench:
    """The measured modes against one stack, with the shared HTTP session and database pool."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession, db: Any, timeout: float,
                 quiet: bool = False) -> None:
        self.settings = settings
        self.http = http
        self.client = Client(settings, http)
        self.db = db
        self.timeout = timeout
        self.say: Callable[[str], None] = (lambda line: None) if quiet else _err

    async def _send(self, run: Run) -> None:
        t = time.time()
        try:
            order_id = await self.client.place()
        except (RuntimeError, aiohttp.ClientError, TimeoutError) as e:
            run.post_errors.append(str(e)[:300])
            return
        run.sent[order_id] = t

    async def _collect(self, run: Run, placing: asyncio.Future[Any], interval: float = POLL_INTERVAL) -> None:
        """Poll the database until every placed order ended, or the timeout after the last POST."""
        last_report = time.monotonic()
        deadline: float | None = None
        while True:
            if placing.done() and deadline is None:
                placing.result()
                run.posts_done_at = run.posts_done_at or time.time()
                deadline = time.monotonic() + self.timeout
            pending = run.open
            if pending:
                for order_id, status, at in await finished(self.db, pending):
                    if status == "DELIVERED" and at is not None:
                        run.delivered[order_id] = at
                    else:
                        run.failed[order_id] = status
            if deadline is not None and not run.open:
                return
            if deadline is not None and time.monotonic() > deadline:
                for order_id in run.open:
                    run.failed[order_id] = "LOST"
                return
            if time.monotonic() - last_report >= PROGRESS_EVERY:
                last_report = time.monotonic()
                self.say(run.progress())
            await asyncio.sleep(interval)

    async def measured(self, run: Run, placing: Callable[[], Any], interval: float = POLL_INTERVAL) -> dict[str, Any]:
        """Run `placing` (which sends run's orders) while collecting their ends, with CPU and
        engine requests read before and after."""
        groups = process_groups(self.settings)
        requests_before = await engine_counters(self.http, self.settings)
        cpu_before = cpu_snapshot(groups)
        run.t0 = time.time()
        await self._collect(run, asyncio.ensure_future(placing()), interval)
        cpu_after = cpu_snapshot(groups)
        requests_after = await engine_counters(self.http, self.settings)
        self.say(run.progress())
        done = len(run.delivered)
        return {
            "orders": run.planned,
            "placed": len(run.sent),
            "delivered": done,
            "post_errors": len(run.post_errors),
            "post_error_examples": run.post_errors[:3],
            "failed": dict(Counter(run.failed.values())),
            "failed_orders": dict(list(run.failed.items())[:20]),
            "latency": latency_summary(run.latencies()),
            "cpu": cpu_report(cpu_before, cpu_after, done),
            "engine_requests": requests_report(request_delta(requests_before, requests_after), done),
        }

    async def single(self, runs: int) -> dict[str, Any]:
        """Orders placed one after another, each once the previous one ended."""
        run = Run("single", runs)

        async def placing() -> None:
            for _ in range(runs):
                await self._send(run)
                deadline = time.monotonic() + self.timeout
                while run.open and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)

        result = await self.measured(run, placing, interval=0.05)
        lat = run.latencies()
        return result | {"median": round(statistics.median(lat), 4) if lat else None}

    async def burst(self, n: int, concurrency: int = 50, name: str = "burst") -> dict[str, Any]:
        """n orders at once (at most `concurrency` POSTs in flight)."""
        run = Run(name, n)
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                await self._send(run)

        async def placing() -> None:
            await asyncio.gather(*(one() for _ in range(n)))
            run.posts_done_at = time.time()

        result = await self.measured(run, placing)
        last = max(run.delivered.values(), default=run.t0)
        total = max(last - run.t0, 1e-9)
        return result | {
            "concurrency": concurrency,
            "posts_seconds": round((run.posts_done_at or run.t0) - run.t0, 3),
            "total_seconds": round(total, 3),
            "orders_per_second": round(len(run.delivered) / total, 2) if run.delivered else 0.0,
        }

    async def steady(self, rate: float, duration: float) -> dict[str, Any]:
        """Open loop: POST i at t0 + i/rate whether or not earlier ones answered, for `duration` s."""
        n = max(1, round(rate * duration))
        run = Run(f"rate {rate:g}/s", n)
        lag: list[float] = []

        async def placing() -> None:
            t0 = time.time()
            sends = []
            for i in range(n):
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                lag.append(time.time() - (t0 + i / rate))
                sends.append(asyncio.ensure_future(self._send(run)))
            await asyncio.gather(*sends)
            run.posts_done_at = time.time()

        result = await self.measured(run, placing)
        ends = sorted(run.delivered.values())
        # Completions per second between the first and the last completion: the offered rate
        # when the stack keeps up, its capacity when it does not.
        achieved = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else None
        return result | {
            "offered_rate": rate,
            "duration": duration,
            "achieved_rate": round(achieved, 2) if achieved is not None else None,
            "lost": len(run.failed) + len(run.post_errors),
            "max_send_lag": round(max(lag, default=0.0), 3),
        }


async def ceiling(settings: Settings, instances: int, quiet: bool) -> dict[str, Any]:
    """The engine alone, with no-op workers, through the same BPMN shape (edpo/dev/ceiling.py)."""
    from edpo.dev.ceiling import CEILING_KEY, run_ceiling

    groups = process_groups(settings)
    before = cpu_snapshot(groups)
    run = await run_ceiling(settings, instances, progress=(lambda line: None) if quiet else _err)
    after = cpu_snapshot(groups)
    return {
        "process_key": CEILING_KEY,
        "instances": instances,
        "ended": run.done,
        "ended_in_history": run.finished_in_history,
        "failures": len(run.failures),
        "failure_examples": run.failures[:3],
        "seconds": round(run.seconds, 3),
        "instances_per_second": round(run.done / run.seconds, 2) if run.done else 0.0,
        "latency": latency_summary(run.latencies),
        "cpu": cpu_report(before, after, run.done),
        "engine_requests": requests_report(run.requests, run.done),
    }


# --- the command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    orders: int = 600
    runs: int = 3
    rates: tuple[float, ...] = ()
    duration: float = 30
    warmup: int = 50
    ceiling: bool = True
    ceiling_orders: int | None = None
    timeout: float = 300
    json: bool = False
    out: Path | None = None


def _commit(settings: Settings) -> str | None:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=settings.root, capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def settings_that_matter(settings: Settings) -> dict[str, Any]:
    instances = Counter(service for service, _ in worker_instances(settings))
    return {
        "workers_per_service": dict(instances),
        "partitions": settings.partitions,
        "task_batch": settings.task_batch,
        "task_concurrency": settings.task_concurrency,
        "task_pollers": settings.task_pollers,
        "tick": settings.tick,
        "camunda_db": settings.camunda_db,
        "camunda_db_pool": settings.camunda_db_pool,
        "camunda_heap": settings.camunda_heap,
        "factory_lead_time": settings.factory_lead_time,
        "courier_time": settings.courier_time,
        "delivery_retry_backoff": settings.delivery_retry_backoff,
    }


def ratio(result: Mapping[str, Any]) -> float | None:
    """The system's burst orders/s divided by the engine ceiling's instances/s."""
    burst, ceil = result.get("burst"), result.get("ceiling")
    if not burst or not ceil or not ceil.get("instances_per_second"):
        return None
    return round(burst["orders_per_second"] / ceil["instances_per_second"], 3)


def failures(result: Mapping[str, Any]) -> list[str]:
    """What went wrong in a result: orders not delivered, POSTs refused, ceiling instances not ended."""
    problems = []
    warmup = result.get("warmup")
    if warmup and (warmup["failed"] or warmup["delivered"] < warmup["orders"]):
        problems.append(f"warm-up: {warmup['delivered']}/{warmup['orders']} delivered, not delivered: "
                        f"{warmup['failed'] or 0}")
    modes = [("single", result.get("single")), ("burst", result.get("burst")),
             *((f"rate {r['offered_rate']:g}/s", r) for r in result.get("rates") or [])]
    for name, mode in modes:
        if mode and (mode["failed"] or mode["post_errors"]):
            problems.append(f"{name}: {mode['post_errors']} POSTs failed, not delivered: {mode['failed'] or 0}")
    ceil = result.get("ceiling")
    if ceil and (ceil["failures"] or ceil["ended"] < ceil["instances"]):
        problems.append(f"ceiling: {ceil['ended']}/{ceil['instances']} ended, {ceil['failures']} failures")
    return problems


async def _run(settings: Settings, opts: Options) -> dict[str, Any]:
    import asyncpg

    result: dict[str, Any] = {
        "edpo_bench": RESULT_VERSION,
        "id": uuid.uuid4().hex[:12],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["edpo", *sys.argv[1:]]),
        "commit": _commit(settings),
        "machine": machine(),
        "settings": settings_that_matter(settings),
        "warmup": None, "single": None, "burst": None, "rates": [], "ceiling": None, "ratio": None,
    }
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=500)
    async with aiohttp.ClientSession(timeout=timeout, headers=bearer(settings.api_token), connector=connector) as http, \
            asyncpg.create_pool(settings.database_url, min_size=1, max_size=2) as db:
        bench = Bench(settings, http, db, opts.timeout, quiet=False)
        needed = 1 + opts.warmup + opts.runs + opts.orders + sum(round(r * opts.duration) for r in opts.rates)
        await bench.client.stock_up(needed)
        if opts.warmup:
            # Connections, the engine's JIT, Faust's first rebalance: not what is measured.
            w = await bench.burst(opts.warmup, name="warm-up")
            result["warmup"] = {k: w[k] for k in ("orders", "delivered", "failed", "orders_per_second")}
        if opts.runs:
            result["single"] = await bench.single(opts.runs)
        if opts.orders:
            result["burst"] = await bench.burst(opts.orders)
        if opts.ceiling:
            result["ceiling"] = await ceiling(settings, opts.ceiling_orders or opts.orders or 600, quiet=False)
            result["ratio"] = ratio(result)
        for rate in opts.rates:
            await bench.client.stock_up(round(rate * opts.duration) + 1)
            result["rates"].append(await bench.steady(rate, opts.duration))
    return result


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f}"


def summary(result: Mapping[str, Any]) -> list[str]:
    """The readable form of a result."""
    m = result["machine"]
    lines = [f"machine: {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, {m.get('cpu', '?')}; "
             f"commit {result.get('commit')}"]
    if s := result.get("single"):
        lines.append(f"single orders ({s['orders']}, one after another): POST -> DELIVERED median "
                     f"{_ms(s['median'])} ms, max {_ms(s['latency']['max'])} ms")
    if b := result.get("burst"):
        lat = b["latency"]
        lines.append(f"burst of {b['orders']}: all POSTs answered after {b['posts_seconds']:.2f}s, all DELIVERED after "
                     f"{b['total_seconds']:.2f}s -> {b['orders_per_second']:.1f} orders/s; latency p50 {_ms(lat['p50'])}"
                     f" / p95 {_ms(lat['p95'])} / p99 {_ms(lat['p99'])} ms")
    if c := result.get("ceiling"):
        lines.append(f"engine ceiling ({c['instances']} instances of {c['process_key']}, no-op workers): "
                     f"{c['instances_per_second']:.1f} instances/s, latency p50 {_ms(c['latency']['p50'])} ms; "
                     f"system / ceiling = {result.get('ratio')}")
    for r in result.get("rates") or []:
        lat = r["latency"]
        lines.append(f"offered {r['offered_rate']:g}/s for {r['duration']:g}s: completed {r['achieved_rate']}/s, "
                     f"p50 {_ms(lat['p50'])} / p95 {_ms(lat['p95'])} / p99 {_ms(lat['p99'])} ms, lost {r['lost']}")
    for name, mode in [("burst", result.get("burst")), *((f"rate {r['offered_rate']:g}/s", r) for r in
                                                          result.get("rates") or []), ("ceiling", result.get("ceiling"))]:
        if not mode:
            continue
        per = mode["cpu"]["ms_per_order"]
        lines.append(f"CPU ms per order ({name}): " + ", ".join(f"{g} {per[g]:.1f}" for g in GROUPS if g in per)
                     + f"; system total {mode['cpu']['system_ms_per_order']}")
        req = mode["engine_requests"]
        kinds = ", ".join(f"{k} {v}" for k, v in req["by_kind_per_order"].items() if k != FETCH)
        lines.append(f"engine requests per order ({name}): {req['per_order_without_fetch']} ({kinds}), "
                     f"plus {req['by_kind_per_order'].get(FETCH, 0)} fetch-and-lock")
    return lines


def run_bench(settings: Settings, opts: Options) -> int:
    """`edpo bench`: run the modes, print the summary or the JSON; 1 when orders were lost."""
    result = asyncio.run(_run(settings, opts))
    text = json.dumps(result, indent=2)
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(text + "\n")
    if opts.json:
        _out(text)
    else:
        for line in summary(result):
            _out(line)
    problems = failures(result)
    for p in problems:
        _err(f"edpo bench: {p}")
    return 1 if problems else 0


# --- the plot -------------------------------------------------------------------------------------


def plot_points(results: Iterable[Mapping[str, Any]]) -> list[tuple[float, float, float, float]]:
    """(offered rate, p50, p95, p99) in seconds of every rate run in the results, by rate."""
    points = []
    for result in results:
        for r in result.get("rates") or []:
            lat = r["latency"]
            if lat["p50"] is not None:
                points.append((float(r["offered_rate"]), lat["p50"], lat["p95"], lat["p99"]))
    return sorted(points)


def plot(results: list[Path], out: Path, title: str | None = None) -> int:
    """docs/benchmarks.png: latency percentiles against offered rate, from `edpo bench --out` files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = [json.loads(p.read_text()) for p in results]
    points = plot_points(loaded)
    if not points:
        _err("edpo bench plot: no rate runs (--rate) in these results")
        return 1
    rates = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, label in ((1, "p50"), (2, "p95"), (3, "p99")):
        ax.plot(rates, [p[i] for p in points], marker="o", label=label)
    ceilings = [r["ceiling"]["instances_per_second"] for r in loaded if r.get("ceiling")]
    if ceilings:
        ax.axvline(statistics.median(ceilings), color="grey", linestyle="--",
                   label=f"engine ceiling {statistics.median(ceilings):.0f}/s")
    bursts = [r["burst"]["orders_per_second"] for r in loaded if r.get("burst")]
    if bursts:
        ax.axvline(statistics.median(bursts), color="black", linestyle=":",
                   label=f"burst throughput {statistics.median(bursts):.0f}/s")
    m = loaded[0]["machine"]
    ax.set_xlabel("offered rate (orders/s, open loop)")
    ax.set_ylabel("POST -> DELIVERED (s)")
    ax.set_title(title or f"EDPO latency against offered load ({m.get('cores')} cores, {m.get('ram_gib')} GiB)",
                 fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _out(f"wrote {out} ({len(points)} points from {len(results)} result(s))")
    return 0
