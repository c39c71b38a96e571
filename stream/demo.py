"""``dcr-stream demo``: the first-run experience on embedded defaults.

Until the delivery pipeline exists this is a smoke check of the platform it will run on: it starts
the local Kafka broker, produces call-intent events to a fresh topic, consumes them back and prints
a summary. Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream.devkafka import LocalKafka

_TOPIC = "call-intents"
_PARTITIONS = 4


def _event(i: int, now_ms: int) -> bytes:
    return json.dumps(
        {
            "client_account_id": "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11",
            "caller": f"+91 80 4{i % 10_000:04d} 1000",
            "receiver": f"+91 98{i:08d}",
            "label_id": "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a",
            "call_reason": "Your order is out for delivery",
            "starts_at": now_ms,
            "ends_at": now_ms + 3_600_000,
        }
    ).encode()


def run(*, events: int) -> int:
    started = time.monotonic()
    with LocalKafka() as broker:
        print(f"Kafka {broker.version} at {broker.bootstrap_servers}", flush=True)
        # The broker is stopped under the clients' feet at the end: that is not worth a log line.
        quiet: dict[str, str | int | float | bool] = {
            "bootstrap.servers": broker.bootstrap_servers,
            "log.connection.close": False,
        }
        admin = AdminClient(quiet)
        admin.create_topics([NewTopic(_TOPIC, num_partitions=_PARTITIONS)])[_TOPIC].result(30)

        producer = Producer({**quiet, "linger.ms": 20})
        now_ms = int(time.time() * 1000)
        for i in range(events):
            producer.produce(_TOPIC, key=str(i).encode(), value=_event(i, now_ms))
            producer.poll(0)
        producer.flush(30)

        consumer = Consumer(
            {
                **quiet,
                "group.id": f"dcr-demo-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([_TOPIC])
        received = 0
        deadline = time.monotonic() + 60
        while received < events and time.monotonic() < deadline:
            received += sum(1 for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
        consumer.close()
    elapsed = time.monotonic() - started
    print(f"events produced: {events}")
    print(f"events consumed: {received}")
    print(f"elapsed:         {elapsed:.1f} s (broker start and stop included)")
    return 0 if received == events else 1
