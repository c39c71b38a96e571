"""B1's limit: a bare confluent-kafka consume loop, with nothing done to the messages.

    .venv/bin/python -m bench.bare_consume BOOTSTRAP TOPIC GROUP COUNT

It joins a fresh group, reads from the earliest offset with ``consume(500, timeout)`` until it has
seen ``COUNT`` messages, and exits. It is a process of its own so that it is timed and charged CPU
exactly as ``dcr-stream run`` is: from spawn to done, all threads (librdkafka's included). It runs
on librdkafka's default fetch settings: the limit is what the client can do, not what we chose.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from confluent_kafka import Consumer

BATCH = 500
TIMEOUT_S = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    bootstrap, topic, group, count = argv if argv is not None else sys.argv[1:]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    wanted, seen = int(count), 0
    while seen < wanted:
        for message in consumer.consume(BATCH, TIMEOUT_S):
            if message.error() is None:
                seen += 1
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
