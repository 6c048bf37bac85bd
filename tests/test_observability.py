"""What operators see: JSON job lines from a worker, metrics across processes, request ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import HttpVersion11
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from api.access_log import WAITING, WRITE_EVERY_S, SafeAccessLogger
from api.app import create_app
from api.metrics import (
    BUCKET_BOUNDS,
    FLUSH_EVERY_S,
    REQUEST_METRICS,
    Tally,
    is_allowed,
    observe_many,
)
from imagesvc.logs import JsonFormatter, ServiceHandler, TextFormatter, write_lines
from imagesvc.settings import DEFAULT_METRICS_ALLOW, Settings
from models.db import Database
from models.migrate import upgrade
from models.tables import Job
from tests.support.databases import scratch_database
from tests.support.processes import ServiceProcess
from tests.support.tenants import Tenant, sign_up

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def metric_values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by name and labels; each series appears once."""
    samples = [
        ((sample.name, frozenset(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    values = dict(samples)
    assert len(values) == len(samples), "a series appears twice"
    return values


def sample(values: dict[Any, float], name: str, **labels: str) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: TestClient[Any, Any]) -> dict[Any, float]:
    response = await client.get("/metrics")
    assert response.status == 200, await response.text()
    return metric_values(await response.text())


async def logged_requests(caplog: pytest.LogCaptureFixture, request_id: str) -> list[Any]:
    for _ in range(100):
        found = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
        if found:
            return found
        await asyncio.sleep(0.01)
    return []


def recorded_request_id(database: Database, job_id: str) -> str | None:
    with database.reading() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.request_id


async def test_a_json_worker_logs_one_object_per_line_and_one_line_per_job_outcome(
    aiohttp_client: AiohttpClient,
    service_settings: Settings,
    database: Database,
    disk_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # A worker of its own, on its own queue, so that it runs this test's jobs.
    settings = service_settings.model_copy(
        update={"log_format": "json", "queue": f"test-{secrets.token_hex(4)}"}
    )
    live_before = set(settings.resolved_metrics_dir.glob("gauge_live*"))
    worker = ServiceProcess(settings, "worker", "--concurrency", "1")
    try:
        worker.wait_for_output(" ready.")
        tenant = await sign_up(await aiohttp_client(create_app(settings)), database, tmp_path)
        good, lost = disk_factory(), disk_factory()
        captured = await tenant.capture(tenant.add_instance(good))
        doomed_instance = tenant.add_instance(lost)
        lost.unlink()  # the instance's disk is gone: its capture fails
        doomed = await tenant.capture(doomed_instance)
        assert (captured.status, doomed.status) == (202, 202), (captured, doomed)
        assert (await tenant.wait_job(captured.body["job_id"]))["status"] == "successful"
        assert (await tenant.wait_job(doomed.body["job_id"]))["status"] == "failed"
        worker.wait_for_output('"job failed"')
    finally:
        worker.stop()
    lines = list(worker.output)  # the warm-shutdown notice too: a line in the format
    # Its pool's processes counted running jobs while they lived, and forgot them on exit.
    assert set(settings.resolved_metrics_dir.glob("gauge_live*")) <= live_before
    entries = [json.loads(line) for line in lines if line.strip()]
    assert all(isinstance(entry, dict) for entry in entries)

    def job_lines(job_id: str) -> list[dict[str, Any]]:
        return [e for e in entries if e.get("job_id") == job_id]

    started, finished = job_lines(captured.body["job_id"])
    assert (started["message"], finished["message"]) == ("job started", "job finished")
    assert finished["level"] == "INFO" and finished["status"] == "successful"
    assert finished["action"] == "CaptureInstance"
    assert finished["owner"] == tenant.account_id
    assert finished["image_ids"] == [captured.body["image_id"]]
    assert finished["bytes"] == good.stat().st_size
    assert finished["duration_s"] >= 0
    assert finished["request_id"].startswith("req-")

    failed = job_lines(doomed.body["job_id"])[-1]
    assert failed["message"] == "job failed" and failed["level"] == "WARNING", failed
    assert failed["status"] == "failed" and failed["error_code"], failed
    # Celery's own per-task lines are not shown: ours say what happened.
    assert not any("succeeded in" in e["message"] for e in entries), entries
    [stopping] = [e for e in entries if e["message"].startswith("Warm shutdown")]
    assert stopping["signal"] == "SIGTERM", stopping


async def test_metrics_count_the_jobs_a_worker_process_ran(
    tenant: Tenant, client: TestClient[Any, Any], raw_disk: Path
) -> None:
    capture = {"action": "CaptureInstance", "status": "successful"}
    before = await scrape(client)
    reply = await tenant.capture(tenant.add_instance(raw_disk))
    assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"
    # The worker counts a job just after it commits the job's outcome.
    after = await scrape(client)
    finished = sample(before, "imagesvc_jobs_finished_total", **capture)
    for _ in range(100):
        if sample(after, "imagesvc_jobs_finished_total", **capture) > finished:
            break
        await asyncio.sleep(0.05)
        after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("imagesvc_jobs_started_total", action="CaptureInstance") >= 1
    assert grew("imagesvc_jobs_finished_total", **capture) >= 1
    assert grew("imagesvc_job_duration_seconds_count", **capture) >= 1
    assert grew("imagesvc_bytes_copied_total", action="CaptureInstance") >= raw_disk.stat().st_size
    route = {"method": "POST", "route": "/v2/zone/{zone}/images", "status": "202"}
    assert grew("imagesvc_http_requests_total", **route) == 1
    assert ("imagesvc_jobs_pending", frozenset()) in after
    assert sample(after, "imagesvc_store_free_bytes") > 0


async def test_metrics_are_refused_to_addresses_outside_the_allow_list(
    aiohttp_client: AiohttpClient, service_settings: Settings
) -> None:
    settings = service_settings.model_copy(update={"metrics_allow": ("10.0.0.0/8",)})
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/metrics")
    assert response.status == 404
    assert (await response.json())["ret_code"] == 2100
    assert "imagesvc_" not in await response.text()


async def test_an_api_process_adds_its_requests_to_its_counters_without_a_scrape(
    aiohttp_client: AiohttpClient, service_settings: Settings
) -> None:
    # Other API processes' scrapes read this one's counters from its files, so the
    # requests it tallied must reach them on its own, not only when it serves /metrics.
    app = create_app(service_settings)
    client = await aiohttp_client(app)
    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    labels = {"method": "GET", "route": "/healthz", "status": "200"}

    def counted() -> float | None:
        registry = app[REQUEST_METRICS].registry
        return registry.get_sample_value("imagesvc_http_requests_total", labels)

    for _ in range(int(FLUSH_EVERY_S * 40)):
        if counted():
            break
        await asyncio.sleep(0.05)
    assert counted() == 3
    count = app[REQUEST_METRICS].registry.get_sample_value(
        "imagesvc_http_request_duration_seconds_count", labels
    )
    assert count == 3


async def test_the_request_id_is_returned_logged_and_recorded_on_the_job(
    aiohttp_client: AiohttpClient,
    service_settings: Settings,
    database: Database,
    raw_disk: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")  # before any connection opens
    server = TestServer(create_app(service_settings))
    await server.start_server(access_log_class=SafeAccessLogger)  # as `imagesvc api` runs it
    client = await aiohttp_client(server)
    tenant = await sign_up(client, database, tmp_path)
    instance = tenant.add_instance(raw_disk, status="running")  # refused: nothing is sent
    body = {"instance": instance}
    response = await client.post(
        "/v2/zone/ac1/images",
        json=body,
        headers={"Authorization": f"Bearer {tenant.token}", "X-Request-Id": "trace-1.a"},
    )
    assert response.status == 409 and response.headers["X-Request-Id"] == "trace-1.a"
    access = await logged_requests(caplog, "trace-1.a")  # written once the response is out
    assert len(access) == 1 and '"POST /v2/zone/ac1/images HTTP/1.1" 409' in access[0].getMessage()

    auth = {"Authorization": f"Bearer {tenant.token}"}
    async with client.get("/v2/zone/ac1/jobs", headers={**auth, "X-Request-Id": "bad id"}) as got:
        assert got.status == 200  # an invalid id is not echoed: the API makes one
        assert got.headers["X-Request-Id"].startswith("req-")

    stopped = tenant.add_instance(raw_disk)
    async with client.post(
        "/v2/zone/ac1/images",
        json={"instance": stopped},
        headers={"Authorization": f"Bearer {tenant.token}", "X-Request-Id": "trace-2"},
    ) as response:
        assert response.status == 202 and response.headers["X-Request-Id"] == "trace-2"
        assert recorded_request_id(database, (await response.json())["job_id"]) == "trace-2"


async def test_a_made_up_request_id_is_no_idempotency_key(
    tenant: Tenant, raw_disk: Path, database: Database
) -> None:
    jobs = []
    for _ in range(2):
        async with tenant.client.post(
            "/v2/zone/ac1/images",
            json={"instance": tenant.add_instance(raw_disk)},
            headers={"Authorization": f"Bearer {tenant.token}"},
        ) as response:
            assert response.status == 202
            made = response.headers["X-Request-Id"]
            job_id = (await response.json())["job_id"]
        assert made.startswith("req-") and recorded_request_id(database, job_id) == made
        jobs.append(job_id)
    assert jobs[0] != jobs[1]
    for job_id in jobs:
        await tenant.wait_job(job_id)


def test_jobs_of_the_earlier_release_keep_working_after_the_request_id_migration(
    tmp_path: Path,
) -> None:
    with scratch_database(tmp_path) as url:
        upgrade(url, "0004")
        engine = create_engine(url, poolclass=NullPool)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO jobs (job_id, zone, owner, action, status, resource_ids,"
                    " progress, attempts, create_time, status_time, worker)"
                    " VALUES ('j-old', 'ac1', 'usr-old', 'DeleteImages', 'successful',"
                    " '[\"img-old\"]', 100, 1, :now, :now, '')"
                ),
                {"now": datetime.now(UTC).replace(tzinfo=None)},
            )
        upgrade(url)
        with Session(engine) as session:
            job = session.get(Job, "j-old")
            assert job is not None and job.status == "successful" and job.request_id is None
        engine.dispose()


def test_requests_tallied_then_flushed_count_as_if_each_was_observed() -> None:
    # On and around the bounds, past the last finite one, and twice the same.
    durations = [0.0, 0.005, 0.0050001, 0.3, 0.3, 9.99, 10.0, 10.5, 1234.0]
    registries = CollectorRegistry(), CollectorRegistry()
    one_by_one, batched = (
        Histogram("latency", "seconds", registry=registry, buckets=BUCKET_BOUNDS)
        for registry in registries
    )
    tally = Tally.empty()
    for seconds in durations:
        one_by_one.observe(seconds)
        tally.add(seconds)
    observe_many(batched, tally)

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        every = [(s.name, s.labels, s.value) for f in registry.collect() for s in f.samples]
        return [sample for sample in every if not sample[0].endswith("_created")]

    assert tally.count == len(durations)
    expected = samples(registries[0])
    assert ("latency_bucket", {"le": "0.005"}, 2.0) in expected, expected
    assert samples(registries[1]) == expected


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:10.1.2.3", True),  # an IPv4 peer on a dual-stack socket
        ("192.168.4.5", True),
        ("8.8.8.8", False),
        ("2001:db8::1", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_the_default_allow_list_is_loopback_and_private_ranges(
    remote: str | None, allowed: bool
) -> None:
    networks = Settings(metrics_allow=DEFAULT_METRICS_ALLOW).metrics_networks
    assert is_allowed(remote, networks) is allowed


def test_text_lines_carry_the_same_fields_as_json_lines() -> None:
    record = logging.makeLogRecord(
        {
            "name": "workers.job_runner",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "job failed",
            "job_id": "j-1",
            "image_ids": ["img-1", "img-2"],
            "error": 'disk "a" gone',
            "duration_s": 1.23456,
        }
    )
    text = TextFormatter().format(record)
    assert text.endswith(
        'WARNING job failed job_id=j-1 image_ids=img-1,img-2 error="disk \\"a\\" gone" '
        "duration_s=1.235"
    ), text
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job failed" and entry["level"] == "WARNING"
    assert entry["image_ids"] == ["img-1", "img-2"] and entry["error"] == 'disk "a" gone'


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_a_line_written_without_a_record_is_the_records_line(
    formatter: type[TextFormatter] | type[JsonFormatter],
) -> None:
    """write_lines (the access log's path, when only the service's handler listens) writes
    what the record would have: the same line but for the time stamp."""
    stream = io.StringIO()
    service = ServiceHandler(stream)
    service.setFormatter(formatter())
    root, logger = logging.getLogger(), logging.getLogger("aiohttp.access")
    handlers, level = root.handlers[:], root.level
    message, fields = 'x "GET /y HTTP/1.1" 200 5 0.001s', {"request_id": "req-1", "odd": 'a "b"'}
    capture = _Capture()
    try:
        root.handlers[:] = [service]  # as configure_logging leaves it
        root.setLevel(logging.INFO)
        write_lines(logger, logging.INFO, [(time.time(), message, fields)])
        assert stream.getvalue(), "nothing written"
        record = logger.makeRecord(
            logger.name, logging.INFO, "(x)", 0, message, (), None, extra=fields
        )
        logger.handle(record)
        # With a handler of someone else's too (a test's capture), a record, as before.
        root.addHandler(capture)
        write_lines(logger, logging.INFO, [(time.time(), "captured", {"request_id": "req-2"})])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    fast, recorded, via_record = stream.getvalue().splitlines()
    assert _without_time(fast) == _without_time(recorded), (fast, recorded)
    assert "captured" in via_record and [r.getMessage() for r in capture.seen] == ["captured"]
    assert capture.seen[0].request_id == "req-2"  # type: ignore[attr-defined]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)


def _without_time(line: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d{3}", "<time>", line)


def test_an_unknown_log_level_or_network_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="LOUD"):
        Settings(log_level="loud")
    with pytest.raises(ValueError, match=r"10\.0\.0\.300"):
        Settings(metrics_allow=("10.0.0.300/8",))


async def test_access_lines_wait_for_one_write_each_with_its_own_time() -> None:
    """A request's access line waits up to WRITE_EVERY_S, then goes out with the others
    in one write, each with the time its request was answered."""
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    service = ServiceHandler(Stream())
    service.setFormatter(TextFormatter())
    root, logger = logging.getLogger(), logging.getLogger("aiohttp.access")
    handlers, level = root.handlers[:], root.level
    answered = [datetime(2026, 11, 28, 12, 0, second, tzinfo=UTC).timestamp() for second in (1, 2)]
    try:
        root.handlers[:] = [service]  # as configure_logging leaves it
        root.setLevel(logging.INFO)
        for when, query in zip(answered, ("?secret=1", ""), strict=True):
            entry = (when, "10.0.0.1", "GET", f"/v2/x{query}", HttpVersion11, 200, 5, 0.001, "r")
            WAITING.add(logger, entry)
        assert writes == [], "written at once"
        await asyncio.sleep(WRITE_EVERY_S * 4)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert len(writes) == 1, writes
    first, second = writes[0].splitlines()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(answered[0]))
    assert first.startswith(stamp) and ":02,000 " in second, (first, second)
    assert first.endswith('10.0.0.1 "GET /v2/x HTTP/1.1" 200 5 0.001s request_id=r'), first


async def test_a_stopping_api_writes_the_access_lines_still_waiting(
    service_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    server = TestServer(create_app(service_settings))
    await server.start_server(access_log_class=SafeAccessLogger)
    async with TestClient(server) as client:
        for _ in range(3):
            async with client.get("/healthz", headers={"X-Request-Id": "last-lines"}) as got:
                assert got.status == 200
    # The client's close stopped the server at once, before the lines' timer.
    assert len([r for r in caplog.records if getattr(r, "request_id", None) == "last-lines"]) == 3
