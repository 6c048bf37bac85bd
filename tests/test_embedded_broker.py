"""The embedded broker: several processes share one queue, each message goes to one of them."""

from __future__ import annotations

import multiprocessing
import queue
from pathlib import Path
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from workers import embedded_broker

MESSAGES = 300


def _connection(broker_dir: Path) -> Connection:
    embedded_broker.register()
    options = embedded_broker.transport_options(broker_dir, polling_interval=0.01)
    return Connection(f"{embedded_broker.SCHEME}://", transport_options=options)  # type: ignore[no-untyped-call]


def _jobs_queue() -> Queue:
    jobs = Exchange("jobs", type="direct")  # type: ignore[no-untyped-call]
    return Queue("jobs", jobs, routing_key="jobs")  # type: ignore[no-untyped-call]


def _consume(broker_dir: Path, results: Any) -> None:
    received: list[int] = []
    with _connection(broker_dir) as connection:
        consumer_queue = connection.SimpleQueue(_jobs_queue())
        while True:
            try:
                message = consumer_queue.get(timeout=1.5)
            except queue.Empty:
                break
            received.append(message.payload["n"])
            message.ack()
        consumer_queue.close()
    results.put(received)


def test_each_message_reaches_exactly_one_of_several_consumer_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    consumers = [context.Process(target=_consume, args=(tmp_path, results)) for _ in range(3)]
    for process in consumers:
        process.start()
    with _connection(tmp_path) as connection:
        producer_queue = connection.SimpleQueue(_jobs_queue())
        for n in range(MESSAGES):
            producer_queue.put({"n": n})
        producer_queue.close()
    received = [results.get(timeout=60) for _ in consumers]
    for process in consumers:
        process.join(timeout=30)
        assert process.exitcode == 0
    everything = sorted(n for batch in received for n in batch)
    assert everything == list(range(MESSAGES)), "a message was lost or delivered twice"
    assert all(batch == sorted(batch) for batch in received), "each consumer sees send order"
    assert not list((tmp_path / "queue").iterdir())
    assert not list((tmp_path / "claimed").iterdir())
