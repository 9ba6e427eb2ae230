"""The order service: REST API, order lifecycle in PostgreSQL, outbox relay, process bridge.

It builds each order's lifecycle from the other services' events (choreography), sends
AcceptOrder through its transactional outbox until the warehouse acknowledges it, starts the
`order_fulfilment` process for accepted orders and correlates the events the process waits for.
Customers cancel through it (POST /orders/{id}/cancel, correlated as CancelRequested), and
GET /orders/{id} shows where the order's process is. It serves the process's cancel-order task.

The only service with a database, hence a package, one room each: `handlers.py` (the handlers
and the background loops), `web.py` (the REST API and the scrape-time gauges), `store.py`
(orders, their lines and history), `outbox.py` and `inbox.py` (each the one owner of its
table), `bridge.py` (inbox -> engine), `reconcile.py`, `migrate.py` and `migrations/`. This
module is the composition root.
"""

from __future__ import annotations

from edpo.agents.order.handlers import LIFECYCLE_TOPICS, OrderBackground, Orders
from edpo.agents.order.store import SOURCE, OrderStore
from edpo.agents.order.web import add_routes, watch_orders
from edpo.config import Settings
from edpo.config.catalog import load_catalog
from edpo.runtime.app import ServiceApp


def create_app(settings: Settings) -> ServiceApp:
    """The order worker: REST API, lifecycle agent, outbox relay, process bridge, cancel-order task."""
    app = ServiceApp(SOURCE, settings, title="EDPO order service",
                     description="Place, follow and cancel orders. Errors: {\"errors\": [{\"field\", \"message\"}]}.")
    app.ready.clear()  # until the database is open and the process deployed
    store = OrderStore(settings.database_url)
    orders = Orders(store, app.failpoints)
    app.start_with(OrderBackground(app, orders, store))
    watch_orders(app.metrics, store, settings.command_attempts)
    app.agent_over("order_lifecycle", orders.handlers(), *LIFECYCLE_TOPICS)
    app.serve_tasks({"cancel-order": orders.cancel_order})
    add_routes(app, orders, load_catalog(settings.catalog))
    return app
