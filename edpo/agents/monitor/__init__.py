"""The monitor service: a live operations dashboard, a fifth consumer of the existing event topics.

It consumes order-events, warehouse-events, delivery-events, inventory-events, factory-events and
dead-letters with its own consumer group (`edpo-monitor`), keeps read models in tables of its own
(edpo/domain/monitor.py) and serves, at http://HOST:EDPO_MONITOR_PORT/ (default 6070), a page that
follows them live over server-sent events (`GET /feed`): orders by status, placed and delivered per
minute, recent orders, one order's timeline (its events from every service and its process steps
from the engine's history), stock per SKU, factory batches, deliveries, open escalations,
incidents, dead letters and each service's consumer lag. The other four services do not know it.

One worker, whatever `edpo up --instances` says: the dashboard needs the global picture, and a
single member of its consumer group owns every partition, so its tables hold every order and SKU
(GlobalTables on several monitors would give the same picture at the price of every monitor reading
every changelog). The monitor is a read model, not on any order's path: when it is down, orders go
on, and it catches up from its committed offsets when it is back. `edpo worker monitor --instance 2`
is refused.

It publishes nothing to the other services' topics: its agents are read models (runtime.consume):
a record it cannot decode or apply is logged, counted in edpo_events_skipped_total and skipped, and
the record's owner dead-letters it. Its only messages are
its own ticks on `monitor-ticks`: an order finished longer than EDPO_MONITOR_RETENTION ago is
forgotten (Faust changes a table only while handling a record of its partition, so the timer
sends the order's agent a ForgetOrderView, as the delivery service forgets deliveries).

When EDPO_API_TOKEN is set, every read but the page, its static files, the login form and /health
needs the token: as a bearer header (scripts), or as the session cookie a browser gets by posting
the token to `/login` (HttpOnly, SameSite=Strict; docs/security.md).

Layout, as in every service: `handlers.py` (the views each event goes into), `web.py` (the
dashboard and its operations), `watch.py` (the engine and Kafka, looked at from outside) and
here `create_app`, the composition root.
"""

from __future__ import annotations

from datetime import timedelta

from edpo.agents.monitor.handlers import ORDER_EVENTS, RETENTION_SWEEP, SOURCE, Monitor
from edpo.agents.monitor.watch import Urls, Watcher
from edpo.agents.monitor.web import add_routes
from edpo.config import Settings
from edpo.domain.monitor import Board, DeadLetterBox, OrderView, ProductionView, SkuView
from edpo.runtime.app import ServiceApp
from edpo.topics import dead_letters_topic, factory_events_topic, inventory_events_topic, monitor_ticks_topic


def create_app(settings: Settings) -> ServiceApp:
    """The monitor worker: its read models over the event topics, the engine and lag watcher, the dashboard."""
    app = ServiceApp(SOURCE, settings, title="EDPO monitor",
                     description="The live operations dashboard and the read models behind it.")
    orders = app.struct_table("orders_by_id", OrderView, help="Each order's status and timeline")
    stock = app.struct_table("stock_by_sku", SkuView, help="Each SKU's stock as last announced")
    production = app.struct_table("production_by_sku", ProductionView, help="Each SKU's batches in production")
    letters = app.struct_table("dead_letters_by_key", DeadLetterBox, help="Dead letters per record key")
    monitor = Monitor(orders, stock, production, letters, Board(), app.publisher.publish,
                      retention=timedelta(hours=settings.monitor_retention),
                      settled=lambda: app.tables.recovery.completed.is_set() and not app.rebalancing)
    app.on_partitions_assigned.connect(monitor.on_partitions_assigned)
    urls = Urls(settings.camunda_webapp_url)
    watcher = Watcher(app.engine, settings.kafka_bootstrap, urls)
    app.start_with(watcher)

    app.agent_over("orders", monitor.order_handlers(), *ORDER_EVENTS, monitor_ticks_topic, read_model=True)
    app.agent_over("stock", monitor.stock_handlers(), inventory_events_topic, factory_events_topic, read_model=True)
    app.agent_over("dead_letters", monitor.dead_letter_handlers(), dead_letters_topic, read_model=True)
    app.every(RETENTION_SWEEP, monitor.forget_finished)
    add_routes(app, monitor, watcher, urls)
    return app
