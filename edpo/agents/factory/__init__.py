"""The factory service: coalesces ManufactureItems requests per SKU into production batches.

A batch takes the configured lead time; a timer notices finished batches and sends the
factory a CompleteProduction tick through Kafka (tables are only written by agents), and the
finished goods go to the warehouse as ItemsManufactured. The factory also serves the
process's request-replenishment task.

Layout, as in every service: `handlers.py` (a class over the service's state, with everything
it sends passed in), `web.py` (its REST operations and the metrics read at scrape time), and
here `create_app`, the composition root that wires them to Faust, the Camunda worker and the web.
"""

from __future__ import annotations

from edpo.agents.factory.handlers import SOURCE, Factory
from edpo.agents.factory.web import add_routes, watch_production
from edpo.config import Settings
from edpo.domain.factory import ProductionLine, ProductionPlan
from edpo.runtime.app import ServiceApp
from edpo.runtime.commands import CommandClient
from edpo.topics import factory_commands_topic, factory_events_topic


def create_app(settings: Settings) -> ServiceApp:
    """The factory worker: production lines, their timer, the replenishment task and a web view."""
    app = ServiceApp(SOURCE, settings)
    production_by_sku = app.struct_table("production_by_sku", ProductionLine, help="Production line per SKU")
    plan = ProductionPlan(lead_time=settings.factory_lead_time, min_batch=settings.factory_min_batch,
                          capacity=settings.factory_capacity)
    commands = CommandClient(settings.kafka_bootstrap, app.publisher.publish, [factory_events_topic],
                             timeout=settings.command_timeout, attempts=settings.command_attempts)
    app.start_with(commands)
    factory = Factory(plan, production_by_sku, app.publisher.publish, commands)

    app.agent_over("production", factory.handlers(), factory_commands_topic)
    app.every(settings.tick, factory.finish_due_batches)
    app.serve_tasks({"request-replenishment": factory.request_replenishment})
    watch_production(app.metrics, production_by_sku)
    add_routes(app, production_by_sku)
    return app
