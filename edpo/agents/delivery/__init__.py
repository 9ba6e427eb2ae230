"""The delivery service: accepts StartDelivery commands and simulates the courier.

The outcome of an attempt is decided when it starts (address pattern, random failure rate)
and published when the courier's time is up; a timer notices due deliveries and sends the
service a FinishDelivery tick through Kafka. WithdrawDelivery calls couriers back (a withdrawn
attempt is never reported) and, when final, refuses the order's later attempts. The delivery
service serves no process task: the warehouse's worker sends it StartDelivery and
WithdrawDelivery.

Layout, as in every service: `handlers.py`, `web.py` and here `create_app`, the composition root.
"""

from __future__ import annotations

from edpo.agents.delivery.handlers import SOURCE, Courier
from edpo.agents.delivery.web import add_routes, watch_deliveries
from edpo.config import Settings
from edpo.domain.delivery import Delivery, DeliveryPolicy
from edpo.runtime.app import ServiceApp
from edpo.topics import delivery_commands_topic


def create_app(settings: Settings) -> ServiceApp:
    """The delivery worker: deliveries, the courier's timer and web views."""
    app = ServiceApp(SOURCE, settings)
    deliveries_by_order = app.struct_table("deliveries_by_order", Delivery, help="Delivery attempts per order")
    policy = DeliveryPolicy(unreachable_pattern=settings.unreachable_pattern,
                            failure_rate=settings.delivery_failure_rate, courier_time=settings.courier_time,
                            silent_pattern=settings.silent_pattern,
                            silent_once_pattern=settings.silent_once_pattern)
    courier = Courier(policy, deliveries_by_order, app.publisher.publish, retention=settings.table_retention)

    app.agent_over("courier", courier.handlers(), delivery_commands_topic)
    app.every(settings.tick, courier.finish_due_deliveries)
    watch_deliveries(app.metrics, deliveries_by_order)
    add_routes(app, deliveries_by_order)
    return app
