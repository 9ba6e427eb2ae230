"""A minimal Faust app for the recovery test: counts words per key in a RocksDB-backed table.

Run as `python -m tests.integration.apps.counter worker`; configured by TEST_* variables.
"""

from __future__ import annotations

import os

import faust

TOPIC = os.environ["TEST_TOPIC"]
PARTITIONS = int(os.environ.get("TEST_PARTITIONS", "3"))

app = faust.App(
    os.environ["TEST_APP_ID"],
    broker=f"kafka://{os.environ['TEST_BOOTSTRAP']}",
    store="rocksdb://",
    datadir=os.environ["TEST_DATADIR"],
    web_host="127.0.0.1",
    web_port=int(os.environ["TEST_WEB_PORT"]),
    topic_partitions=PARTITIONS,
    table_standby_replicas=0,
    consumer_auto_offset_reset="earliest",
)
words_topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                        partitions=PARTITIONS)
count_by_word = app.Table("count_by_word", default=int, partitions=PARTITIONS)


@app.agent(words_topic)
async def count(stream: faust.StreamT) -> None:
    """Count each word."""
    # records are keyed by the word itself, so the table is co-partitioned with the topic
    async for word in stream:
        count_by_word[word.decode()] += 1


@app.page("/counts")
async def counts(web, request):  # noqa: ANN001
    return web.json(dict(count_by_word.items()))


if __name__ == "__main__":
    app.main()
