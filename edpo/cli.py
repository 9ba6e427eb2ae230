"""The `edpo` command: run the stack, run a service worker, talk to the order and stock APIs,
list and replay dead letters, run Kafka's own tools."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

from edpo.config import WORKERS, Settings, refused_instance, settings_table_markdown, workers_to_start
from edpo.dev.process import StackError
from edpo.runtime.http import request_json


def _say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


# --- servers ---------------------------------------------------------------------------------


def infra_up(settings: Settings) -> None:
    from edpo.dev.servers import all_servers
    from edpo.topics import ensure_topics_sync

    for server in all_servers(settings):
        t0 = time.monotonic()
        state = server.up()
        _say(f"{server.name:9} {state:16} {server.describe()}  ({time.monotonic() - t0:.1f}s)")
    ensure_topics_sync(settings)


def infra_down(settings: Settings) -> None:
    from edpo.dev.servers import all_servers

    for server in reversed(all_servers(settings)):
        stopped = server.down()
        _say(f"{server.name:9} {'stopped' if stopped else 'was not running'}")


def infra_status(settings: Settings) -> bool:
    from edpo.dev.servers import all_servers

    ok = True
    for server in all_servers(settings):
        state = server.status()
        ok &= state == "healthy"
        _say(f"{server.name:9} {state:18} {server.describe()}")
    return ok


def stack_up(settings: Settings, instances: int) -> None:
    """Servers, then every worker; returns once each worker reports ready on /health."""
    from edpo.dev.workers import spawn_worker, wait_ready

    infra_up(settings)
    workers = workers_to_start(instances)
    # All start at once and are waited for together: recovery and rebalances overlap.
    states = {f"{service}-{n}": spawn_worker(settings, service, n) for service, n in workers}
    urls = {f"{service}-{n}": f"http://{settings.host}:{settings.web_port(service, n)}/" for service, n in workers}

    def ready(name: str, seconds: float) -> None:
        _say(f"{name:11} {states[name] + ', ready':25} {urls[name]}  ({seconds:.1f}s)")

    wait_ready(settings, workers, timeout=settings.ready_timeout, on_ready=ready)


def stack_down(settings: Settings) -> None:
    from edpo.dev.workers import running_workers

    for proc in running_workers(settings):
        stopped = proc.stop()
        _say(f"{proc.name:11} {'stopped' if stopped else 'was not running'}")
    infra_down(settings)


def stack_status(settings: Settings) -> bool:
    from edpo.dev.workers import running_workers

    ok = infra_status(settings)
    for proc in running_workers(settings):
        alive = proc.running()
        ok &= alive
        _say(f"{proc.name:11} {'running' if alive else 'stopped'}")
    return ok


# --- HTTP helpers for the user-facing verbs --------------------------------------------------------


def _http(settings: Settings, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    try:
        status, reply = request_json(method, url, body, settings.api_token)
    except urllib.error.URLError as e:
        raise StackError(f"cannot reach {url}: {e.reason}; is the stack up (`edpo up`)?") from None
    if status == 401:
        raise StackError(f"{url} needs the API token: set EDPO_API_TOKEN to the one the workers were started with")
    return status, reply


def _parse_item(text: str) -> dict[str, Any]:
    sku, sep, qty = text.rpartition(":")
    if not sep or not sku or not qty.isdigit():
        raise StackError(f"--item expects SKU:QTY, got {text!r}")
    return {"sku": sku, "quantity": int(qty)}


def order_place(settings: Settings, args: argparse.Namespace) -> int:
    body = {
        "customer_id": args.customer,
        "delivery_address": args.address,
        "items": [_parse_item(i) for i in args.item],
    }
    status, reply = _http(settings, "POST", f"http://{settings.host}:{settings.web_ports['order']}/orders", body)
    _say(json.dumps(reply, indent=2))
    return 0 if status == 201 else 1


def order_show(settings: Settings, args: argparse.Namespace) -> int:
    status, reply = _http(settings, "GET", f"http://{settings.host}:{settings.web_ports['order']}/orders/{args.order_id}")
    _say(json.dumps(reply, indent=2))
    return 0 if status == 200 else 1


def order_cancel(settings: Settings, args: argparse.Namespace) -> int:
    """POST /orders/{id}/cancel: 0 when accepted (202), 1 with the reason otherwise."""
    status, reply = _http(settings, "POST",
                          f"http://{settings.host}:{settings.web_ports['order']}/orders/{args.order_id}/cancel")
    if status == 202:
        _say(f"cancellation of {args.order_id} accepted; the order moves to CANCELLED once its goods are back "
             f"(`edpo order show {args.order_id}`)")
        return 0
    _say(json.dumps(reply, indent=2))
    return 1


def stock_show(settings: Settings) -> int:
    """Every SKU's stock, page by page."""
    base = f"http://{settings.host}:{settings.web_ports['warehouse']}/stock"
    _say(f"{'SKU':16} {'ON HAND':>8} {'RESERVED':>9} {'AVAILABLE':>10}")
    cursor = None
    while True:
        status, reply = _http(settings, "GET", base + (f"?after={urllib.parse.quote(cursor)}" if cursor else ""))
        if status != 200:
            _say(json.dumps(reply))
            return 1
        for row in reply["stock"]:
            _say(f"{row['sku']:16} {row['on_hand']:8} {row['reserved']:9} {row['available']:10}")
        cursor = reply.get("next")
        if not cursor:
            return 0


# --- entry point --------------------------------------------------------------------------------


def _rates(text: str) -> tuple[float, ...]:
    """--rate 5,10,20: positive orders per second."""
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 5,10,20, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return rates


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edpo", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    infra = sub.add_parser("infra", help="the three servers: Kafka, Camunda, PostgreSQL")
    infra.add_argument("action", choices=["up", "down", "status"])

    for verb, text in [("up", "servers + one worker per service"), ("down", "stop everything"), ("status", "report")]:
        sp = sub.add_parser(verb, help=text)
        if verb == "up":
            sp.add_argument("--instances", type=int, default=1, help="workers per service")

    w = sub.add_parser("worker", help="run one service worker in the foreground")
    w.add_argument("service", choices=WORKERS)
    w.add_argument("--instance", type=int, default=1, help="instance number (web port + 100 per instance)")
    w.add_argument("--log-file", type=Path, metavar="FILE",
                   help="log to FILE, rotated at EDPO_LOG_MAX_MB (default: standard error); `edpo up` passes "
                   "RUN_DIR/logs/worker-SERVICE-N.log")

    o = sub.add_parser("order", help="place, show or cancel orders")
    osub = o.add_subparsers(dest="order_cmd", required=True)
    place = osub.add_parser("place")
    place.add_argument("--item", action="append", required=True, metavar="SKU:QTY")
    place.add_argument("--address", required=True)
    place.add_argument("--customer", default="cli-customer")
    show = osub.add_parser("show")
    show.add_argument("order_id")
    cancel = osub.add_parser("cancel", help="cancel an order that has not shipped (its goods go back to stock)")
    cancel.add_argument("order_id")

    sub.add_parser("stock", help="stock levels per SKU")
    sub.add_parser("demo", help="place the sample orders and follow them live")
    b = sub.add_parser("bench", help="latency and throughput through the public API, the engine's ceiling, CPU and "
                       "engine requests per order (see docs/benchmarks.md)")
    b.add_argument("--orders", type=int, default=600, metavar="N", help="burst: N orders placed at once (0: none)")
    b.add_argument("--rate", type=_rates, default=(), metavar="R[,R...]",
                   help="steady offered load: orders per second, open loop, one run per rate")
    b.add_argument("--duration", type=float, default=30, metavar="S", help="seconds each --rate run places orders")
    b.add_argument("--runs", type=int, default=3, metavar="K", help="single orders one after another (0: none)")
    b.add_argument("--warmup", type=int, default=50, metavar="N", help="unmeasured burst first (0: none)")
    b.add_argument("--no-ceiling", action="store_true", help="skip the engine-ceiling run")
    b.add_argument("--ceiling-orders", type=int, metavar="N", help="ceiling instances (default: --orders, or 600)")
    b.add_argument("--timeout", type=float, default=300, metavar="S",
                   help="seconds after the last POST before unfinished orders count as lost")
    b.add_argument("--json", action="store_true", help="print the result as one JSON object")
    b.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON result to FILE")
    bsub = b.add_subparsers(dest="bench_cmd")
    bplot = bsub.add_parser("plot", help="latency percentiles against offered rate (PNG) from --out files")
    bplot.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    bplot.add_argument("-o", "--output", type=Path, default=Path("docs/benchmarks.png"), metavar="PNG")
    bplot.add_argument("--title", help="the picture's title (default: the machine's cores and RAM)")
    sub.add_parser("config", help="print the configuration table (markdown)")

    k = sub.add_parser("kafka", help="Kafka's own tools against the stack's broker (arguments after -- go to the tool)")
    ksub = k.add_subparsers(dest="kafka_cmd", required=True)
    kgroups = ksub.add_parser("groups", help="consumer groups with offsets and lag per partition "
                              "(kafka-consumer-groups --describe)")
    kgroups.add_argument("group", nargs="?", help="one group, e.g. edpo-warehouse (default: all)")
    ktopics = ksub.add_parser("topics", help="list the topics, or describe one (kafka-topics)")
    ktopics.add_argument("topic", nargs="?", help="describe this topic: partitions, leaders, configs")
    kconsume = ksub.add_parser("consume", help="print a topic's records with key and time (kafka-console-consumer)")
    kconsume.add_argument("topic")
    kconsume.add_argument("--from-beginning", action="store_true", help="from the oldest record, not only new ones")
    kconsume.add_argument("--max", type=int, metavar="N", help="stop after N records (default: run until Ctrl-C)")

    d = sub.add_parser("dlq", help="dead letters: list them, send them back to their topic")
    dsub = d.add_subparsers(dest="dlq_cmd", required=True)
    dlist = dsub.add_parser("list", help="one line per dead letter on the dead-letter topic")
    dlist.add_argument("--json", action="store_true", help="one JSON object per line, with payload and error")
    dlist.add_argument("--limit", type=int, default=100, help="most dead letters shown (default 100)")
    dlist.add_argument("--after", metavar="ID", help="start after this dead letter (the id the last page named)")
    replay = dsub.add_parser("replay", help="send dead letters' payloads back to their topics, with their keys")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids (see `edpo dlq list`)")
    replay.add_argument("--all", action="store_true", help="every dead letter not replayed yet (truncated ones are refused, without failing)")
    replay.add_argument("--force", action="store_true", help="replay dead letters replayed already, too")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if argv[:1] == ["kafka"] and "--" in argv:  # the rest goes to Kafka's tool as it is
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # health checks poll a broker that is starting
    try:
        match args.cmd:
            case "infra":
                if args.action == "up":
                    infra_up(settings)
                elif args.action == "down":
                    infra_down(settings)
                else:
                    return 0 if infra_status(settings) else 1
            case "up":
                stack_up(settings, args.instances)
            case "down":
                stack_down(settings)
            case "status":
                return 0 if stack_status(settings) else 1
            case "worker":
                if refusal := refused_instance(args.service, args.instance):
                    raise StackError(refusal)
                from edpo.agents import run

                return run(args.service, settings.for_instance(args.instance), args.log_file)
            case "order":
                verbs = {"place": order_place, "show": order_show, "cancel": order_cancel}
                return verbs[args.order_cmd](settings, args)
            case "stock":
                return stock_show(settings)
            case "demo":
                from edpo.dev.demo import run_demo

                return run_demo(settings)
            case "bench":
                from edpo.dev import bench

                if args.bench_cmd == "plot":
                    return bench.plot(args.results, args.output, args.title)
                return bench.run_bench(settings, bench.Options(
                    orders=args.orders, runs=args.runs, rates=args.rate, duration=args.duration, warmup=args.warmup,
                    ceiling=not args.no_ceiling, ceiling_orders=args.ceiling_orders, timeout=args.timeout,
                    json=args.json, out=args.out))
            case "config":
                _say(settings_table_markdown())
            case "kafka":
                from edpo.dev import kafka

                tool_args = kafka.tool_arguments(args.kafka_cmd, group=getattr(args, "group", None),
                                                 topic=getattr(args, "topic", None),
                                                 from_beginning=getattr(args, "from_beginning", False),
                                                 max_messages=getattr(args, "max", None))
                return kafka.run(settings, args.kafka_cmd, tool_args, extra)
            case "dlq":
                from edpo.dev import dlq

                if args.dlq_cmd == "list":
                    return dlq.list_command(settings, as_json_lines=args.json, say=_say, limit=max(1, args.limit),
                                            after=args.after)
                return dlq.replay_command(settings, args.ids, everything=args.all, force=args.force, say=_say)
    except StackError as e:
        sys.stderr.write(f"edpo: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
