"""The warehouse service: stock per SKU and reservations per order in RocksDB-backed tables.

Two agents own two kinds of state. `order_desk` (keyed by order id) accepts orders, splits a
reservation into per-SKU lines and gathers their results; `stock_keeper` (keyed by SKU) owns
each SKU's stock on exactly one partition, so an order whose SKUs live on different
partitions is served by several stock keepers and completes when all have answered. A
release of an order the desk does not know yet is kept as a tombstone, so a ReserveStock it
overtook reserves nothing. The warehouse also serves the process's reserve, pack,
start-delivery, withdraw-delivery and release tasks.

Layout, as in every service: `handlers.py` (a class over the service's state, with everything
it sends passed in), `web.py` (its REST operations and the metrics read at scrape time), and
here `create_app`, the composition root that wires them to Faust, the Camunda worker and the web.
"""

from __future__ import annotations

from edpo.agents.warehouse.handlers import SOURCE, Warehouse
from edpo.agents.warehouse.web import add_routes, ready_when_seeded, watch_stock
from edpo.config import Settings
from edpo.config.catalog import load_catalog
from edpo.domain.reservation import OrderReservation
from edpo.domain.stock import SkuStock
from edpo.runtime.app import ServiceApp
from edpo.runtime.commands import CommandClient
from edpo.runtime.retry import STARTUP
from edpo.topics import (
    delivery_events_topic,
    factory_events_topic,
    reservation_updates_topic,
    stock_commands_topic,
    warehouse_commands_topic,
    warehouse_events_topic,
)


def create_app(settings: Settings) -> ServiceApp:
    """The warehouse worker: tables, agents, process tasks and web views."""
    app = ServiceApp(SOURCE, settings)
    stock_by_sku = app.struct_table("stock_by_sku", SkuStock, help="Stock per SKU: on hand, reserved, waiting orders")
    reservations_by_order = app.struct_table(
        "reservations_by_order", OrderReservation, help="Each order's lines and how much of each is reserved"
    )
    commands = CommandClient(settings.kafka_bootstrap, app.publisher.publish,
                             [warehouse_events_topic, delivery_events_topic],
                             timeout=settings.command_timeout, attempts=settings.command_attempts)
    app.start_with(commands)
    warehouse = Warehouse(load_catalog(settings.catalog), stock_by_sku, reservations_by_order, app.publisher.publish,
                          commands, retention=settings.table_retention)

    app.agent_over("order_desk", warehouse.order_desk_handlers(),
                   warehouse_commands_topic, reservation_updates_topic, delivery_events_topic)
    app.agent_over("stock_keeper", warehouse.stock_keeper_handlers(), stock_commands_topic, factory_events_topic)

    async def seed_stock() -> None:
        """Seed the catalog's starting stock, retried while Kafka is not reachable."""
        await STARTUP.retry("stock seed", warehouse.seed_stock)

    app.task(seed_stock)
    app.every(max(1.0, settings.table_retention / 10), warehouse.forget_closed_orders)
    app.serve_tasks({
        "reserve-stock": warehouse.reserve_stock,
        "pack-goods": warehouse.pack_goods,
        "start-delivery": warehouse.start_delivery,
        "withdraw-delivery": warehouse.withdraw_delivery,
        "release-stock": warehouse.release_stock,
    })
    ready_when_seeded(app, warehouse, stock_by_sku)
    watch_stock(app.metrics, stock_by_sku)
    add_routes(app, warehouse, stock_by_sku, reservations_by_order)
    return app
