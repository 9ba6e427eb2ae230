"""Every Kafka topic of EDPO, declared once: name, key, partitions, message types, who talks.

This is also where a message's route is decided: each message type belongs to exactly one
topic, and the topic's `key` names the message field that is its Kafka key. `route()` reads
that, and the one publisher of every service (`edpo.runtime.publish`) uses it.

docs/messages.md is generated from this list (``python -m edpo.topics``), and the topics are
created from it before any worker starts, so partition counts always match (Faust requires
co-partitioned topics for its tables).
"""

from __future__ import annotations

import asyncio
import logging
import typing
from dataclasses import dataclass, field
from typing import Any, Union

import msgspec

from edpo import models as m
from edpo.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str  # the field of every message on this topic that is its Kafka key
    value: Any  # a msgspec tagged union
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    doc: str
    internal: bool = False
    decoder: msgspec.json.Decoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.value))

    def decode(self, raw: bytes) -> Any:
        return self.decoder.decode(raw)

    @property
    def types(self) -> tuple[type[m.Message], ...]:
        return typing.get_args(self.value) or (self.value,)

    @property
    def message_types(self) -> list[str]:
        return [t.__name__ for t in self.types]


order_events_topic = TopicSpec(
    "order-events", "order_id", m.OrderEvent, ("order",), ("monitor", "analytics"),
    "Lifecycle of each order as the order service records it.",
)
warehouse_commands_topic = TopicSpec(
    "warehouse-commands", "order_id", m.WarehouseCommand, ("order", "camunda workers"), ("warehouse",),
    "Commands to the warehouse; each is answered on warehouse-events with its id as correlation id.",
)
warehouse_events_topic = TopicSpec(
    "warehouse-events", "order_id", m.WarehouseEvent, ("warehouse",),
    ("order", "camunda bridge", "command clients", "monitor"),
    "Acknowledgments and fulfilment progress: acceptance, reservation, picking, packing, release, shipping.",
)
stock_commands_topic = TopicSpec(
    "stock-commands", "sku", m.StockCommand, ("warehouse",), ("warehouse",),
    "Per-SKU work split off orders so that each SKU's stock is owned by exactly one partition.",
    internal=True,
)
reservation_updates_topic = TopicSpec(
    "reservation-updates", "order_id", m.ReservationUpdate, ("warehouse",), ("warehouse",),
    "Per-SKU reservation results routed back to the partition that owns the order.",
    internal=True,
)
inventory_events_topic = TopicSpec(
    "inventory-events", "sku", m.InventoryEvent, ("warehouse",), ("monitor",),
    "Stock level of a SKU after every change.",
)
factory_commands_topic = TopicSpec(
    "factory-commands", "sku", m.FactoryCommand, ("camunda workers", "factory"), ("factory",),
    "Replenishment requests; the factory coalesces them per SKU into production batches.",
)
factory_events_topic = TopicSpec(
    "factory-events", "sku", m.FactoryEvent, ("factory",), ("warehouse", "monitor"),
    "Production progress; ItemsManufactured puts the goods into the warehouse.",
)
delivery_commands_topic = TopicSpec(
    "delivery-commands", "order_id", m.DeliveryCommand, ("camunda workers", "delivery"), ("delivery",),
    "StartDelivery from the warehouse's worker; answered on delivery-events.",
)
delivery_events_topic = TopicSpec(
    "delivery-events", "order_id", m.DeliveryEvent, ("delivery",),
    ("order", "warehouse", "camunda bridge", "command clients", "monitor"),
    "Acknowledgments and courier outcomes.",
)
monitor_ticks_topic = TopicSpec(
    "monitor-ticks", "order_id", m.MonitorTick, ("monitor",), ("monitor",),
    "The monitor's timer telling its order agent which finished orders to forget.",
    internal=True,
)
dead_letters_topic = TopicSpec(
    # A replay mark has its dead letter's key, so it lands in the same partition, after it.
    "dead-letters", "key", Union[m.DeadLetter, m.DeadLetterReplayed], ("every service", "edpo dlq replay"),
    ("operators (edpo dlq)", "monitor"),
    "Records that could not be decoded or handled, with the reason; nothing is dropped silently. "
    "DeadLetterReplayed marks a dead letter sent back to its topic.",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    order_events_topic,
    warehouse_commands_topic,
    warehouse_events_topic,
    stock_commands_topic,
    reservation_updates_topic,
    inventory_events_topic,
    factory_commands_topic,
    factory_events_topic,
    delivery_commands_topic,
    delivery_events_topic,
    monitor_ticks_topic,
    dead_letters_topic,
)
BY_NAME = {t.name: t for t in ALL_TOPICS}
# Each message type travels on exactly one topic.
TOPIC_OF: dict[type[m.Message], TopicSpec] = {cls: spec for spec in ALL_TOPICS for cls in spec.types}
assert len(TOPIC_OF) == sum(len(spec.types) for spec in ALL_TOPICS), "a message type is declared on two topics"


def route(msg: m.Message) -> tuple[TopicSpec, str]:
    """The topic a message goes to and its key, both from the declarations above."""
    spec = TOPIC_OF[type(msg)]
    return spec, getattr(msg, spec.key) or ""


async def ensure_topics(bootstrap: str, partitions: int, extra: tuple[str, ...] = (),
                        compacted: tuple[str, ...] = ()) -> list[str]:
    """Create missing topics with the configured partition count (`compacted` ones with
    cleanup.policy=compact, as Faust makes table changelogs); returns the names created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t.name for t in ALL_TOPICS] + list(extra) + list(compacted)
        missing = [n for n in wanted if n not in existing]
        if missing:
            try:
                await admin.create_topics([
                    NewTopic(n, partitions, 1, topic_configs={"cleanup.policy": "compact"} if n in compacted else {})
                    for n in missing])
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            logger.info("created topics %s", missing)
        return missing
    finally:
        await admin.close()


def ensure_topics_sync(settings: Settings) -> list[str]:
    return asyncio.run(ensure_topics(settings.kafka_bootstrap, settings.partitions))


def catalog_markdown() -> str:
    """docs/messages.md: every topic with key, partitions, producers, consumers and types."""
    out = [
        "# Message catalog",
        "",
        "Generated from `edpo/topics.py` by `python -m edpo.topics > docs/messages.md`.",
        "Every topic has `EDPO_PARTITIONS` partitions (default 4). Every message is JSON with the",
        "envelope fields `type` (= class name = BPMN message name), `id`, `source`, `time`,",
        "`correlation_id` (a reply copies the id of the command it answers) and `trace_id`.",
        "",
        "| Topic | Key | Producers | Consumers | Message types | Purpose |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in ALL_TOPICS:
        name = f"`{t.name}`" + (" (internal)" if t.internal else "")
        out.append(
            f"| {name} | `{t.key}` | {', '.join(t.producers)} | {', '.join(t.consumers)} | "
            f"{', '.join(t.message_types)} | {t.doc} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(catalog_markdown(), end="")  # noqa: T201 - a generator script, not a service
