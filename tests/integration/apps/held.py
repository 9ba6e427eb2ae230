"""A Faust app for the SIGTERM test: EDPO's agent loop (`edpo.runtime.consume`) over a topic of the test's own,
whose handler holds one chosen record until a file exists, and notes every record it starts and finishes.

Run as `python -m tests.integration.apps.held worker`; configured by TEST_* variables.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import faust

from edpo.models import Message
from edpo.runtime.consume import consume
from edpo.runtime.publish import Publisher, raw_topic
from edpo.topics import BY_NAME, TopicSpec, delivery_commands_topic

TOPIC = os.environ["TEST_TOPIC"]
JOURNAL = Path(os.environ["TEST_JOURNAL"])
HOLD = os.environ["TEST_HOLD"]  # the order id of the record to hold
RELEASE = Path(os.environ["TEST_RELEASE"])  # the held record is finished once this file exists

# Declared like EDPO's own topics (in this process only), so that the agent loop decodes its records.
spec = BY_NAME[TOPIC] = TopicSpec(TOPIC, "order_id", delivery_commands_topic.value, ("test",), ("test",),
                                  "The SIGTERM test's records.")

app = faust.App(
    os.environ["TEST_APP_ID"],
    broker=f"kafka://{os.environ['TEST_BOOTSTRAP']}",
    datadir=os.environ["TEST_DATADIR"],
    web_host="127.0.0.1",
    web_port=int(os.environ["TEST_WEB_PORT"]),
    topic_partitions=1,
    consumer_auto_offset_reset="earliest",
    # As every EDPO worker (edpo.runtime.app.ServiceApp): offsets committed every second or 100 records, and a
    # stopping worker does not wait for its streams to run dry.
    broker_commit_every=100,
    broker_commit_interval=1.0,
    stream_wait_empty=False,
)
publisher = Publisher(app)


def note(line: str) -> None:
    with JOURNAL.open("a") as journal:
        journal.write(f"{line}\n")


async def handle(msg: Message) -> None:
    """Note the start, hold the chosen record until released, note the end."""
    order_id = getattr(msg, "order_id", "")
    note(f"start {order_id}")
    while order_id == HOLD and not RELEASE.exists():
        await asyncio.sleep(0.1)
    note(f"done {order_id}")


@app.agent(raw_topic(app, spec), name="held")
async def held(stream: faust.StreamT) -> None:
    """EDPO's agent loop over the test's topic."""
    await consume(stream.events(), {kind: handle for kind in spec.types}, name="held", publish=publisher.publish)


if __name__ == "__main__":
    app.main()
