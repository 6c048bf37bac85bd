"""With PostgreSQL or Redis down the API answers at once, says what is down, and recovers."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import common, entity, messaging
from kombu import connection as kombu_connection

from tests.chaos import ChaosEnv, chaos_deployment
from tests.support.backends import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.support.contract import Reply
from tests.support.disks import MiB, make_raw_disk
from workers import redis_broker

# kombu has no type hints: what the consumer test uses of it is held as Any.
Connection: Any = kombu_connection.Connection
Consumer: Any = messaging.Consumer
Exchange: Any = entity.Exchange
Queue: Any = entity.Queue
ignore_errors: Any = common.ignore_errors

pytestmark = pytest.mark.skipif(
    not (TEST_DATABASE_URL and TEST_REDIS_URL),
    reason="stops PostgreSQL and Redis: runs in the PostgreSQL + Redis tier",
)


def service(action: str, name: str) -> None:
    subprocess.run(["bash", "tests/restart-service", name, action], check=True, timeout=120)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[ChaosEnv]:
    with chaos_deployment(tmp_path) as env:
        try:
            env.start_deployment()
            yield env
        finally:
            service("start", "postgresql")
            service("start", "redis")


# Above its waits: stopping and starting a service (at most 120 s each), a job (90 s).
@pytest.mark.timeout(600)
def test_postgresql_down_is_a_quick_503_and_service_resumes(deployment: ChaosEnv) -> None:
    client, instance_id = deployment.client(), stopped_instance(deployment)
    service("stop", "postgresql")
    try:
        started = time.monotonic()
        reply = client.call("GET", "/v2/zone/ac1/images")
        assert time.monotonic() - started < 1.0, "the API must not hang"
        assert (reply.status, reply.body["ret_code"]) == (503, 5100), reply
        assert "database" in reply.body["message"]
        health = client.call("GET", "/healthz")
        assert health.status == 503 and health.body["database"] == "down", health
        assert health.body["broker"] == "ok"
    finally:
        service("start", "postgresql")
    reply = _retry(lambda: client.call("POST", "/v2/zone/ac1/images", {"instance": instance_id}))
    assert reply.status == 202, reply
    deployment.wait_for_status(reply.body["job_id"], {"successful"})
    assert client.call("GET", "/healthz").status == 200


@pytest.mark.timeout(600)
def test_redis_down_still_accepts_jobs_and_they_run_when_it_returns(deployment: ChaosEnv) -> None:
    client, instance_id = deployment.client(), stopped_instance(deployment)
    service("stop", "redis")
    try:
        started = time.monotonic()
        reply = client.call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
        assert time.monotonic() - started < 1.0, "the API must not wait for the broker"
        assert reply.status == 202, "the job row is the truth; it is sent when Redis is back"
        health = client.call("GET", "/healthz")
        assert health.status == 503 and health.body["broker"] == "down", health
        time.sleep(2)
        assert deployment.job_status(reply.body["job_id"]) == "pending"
    finally:
        service("start", "redis")
    deployment.wait_for_status(reply.body["job_id"], {"successful"}, timeout=90)
    assert _retry(lambda: client.call("GET", "/healthz")).status == 200


def stopped_instance(deployment: ChaosEnv) -> str:
    disk = make_raw_disk(deployment.tmp / "disk.raw", size=16 * MiB, data=8 * MiB)
    return deployment.add_instances(disk, 1)[0]


def _retry(call: Callable[[], Reply], attempts: int = 50) -> Reply:
    """As a client does while a dependency comes back."""
    reply = call()
    for _ in range(attempts):
        if reply.status not in (0, 503):
            break
        time.sleep(0.2)
        reply = call()
    return reply


@pytest.mark.timeout(300)
def test_a_consumer_whose_redis_went_away_cleans_up_as_celery_does(tmp_path: Path) -> None:
    """Celery 5.7's consumer, on losing Redis, runs ``collect()`` then ``close()`` on its
    connection (``Consumer.on_connection_error_after_connected``). With a task channel
    holding an unacknowledged message and a second channel (remote control's), kombu's
    own transport raises AttributeError there and the worker dies with it; ours raises
    only what the clean-up ignores, so the consumer reconnects (workers/redis_broker.py).
    Run with kombu's transport instead, this test fails with that AttributeError."""
    redis_broker.register()
    queue_name = f"t-{tmp_path.name}"
    connection = Connection(TEST_REDIS_URL)
    tasks = connection.default_channel
    assert isinstance(tasks, redis_broker.Channel)
    queue = Queue(queue_name, Exchange(queue_name), queue_name, channel=tasks)
    connection.Producer(serializer="json").publish(
        {"job": 1}, exchange=queue.exchange, routing_key=queue_name, declare=[queue]
    )
    held: list[object] = []
    Consumer(tasks, [queue], callbacks=[lambda body, message: held.append(message)]).consume()
    control = connection.channel()  # as remote control's: a fanout queue on a channel of its own
    fanout = Queue(
        f"{queue_name}.control", Exchange(f"{queue_name}.control", "fanout"), auto_delete=True
    )
    Consumer(control, [fanout], no_ack=True, auto_declare=True).consume()
    for _ in range(10):
        if held:
            break
        connection.drain_events(timeout=5)
    assert len(held) == 1, "the task channel holds one unacknowledged message"
    _wait_idle(connection)
    service("stop", "redis")
    try:
        with contextlib.suppress(Exception):  # as Celery: a failed collect is let go
            connection.collect(socket_timeout=1)
        ignore_errors(connection, connection.close)
    finally:
        service("start", "redis")
    with Connection(TEST_REDIS_URL) as cleanup:
        cleanup.default_channel.client.delete(queue_name)


def _wait_idle(connection: Any) -> None:
    """Drain until nothing comes: the consumer is then waiting on Redis, as an idle worker."""
    for _ in range(10):
        try:
            connection.drain_events(timeout=0.3)
        except TimeoutError:
            return
    raise AssertionError("the consumer kept receiving")
