"""``GET /metrics``: Prometheus metrics of the whole service, served by the API.

It adds up what every process wrote to the multiprocess directory (the
workers' job counters, this and other API processes' request counters),
and computes the queue's state from the database at scrape time, which is
right however many processes there are. Only addresses in
``IMAGESVC_METRICS_ALLOW`` get an answer; others get the 404 of an unknown path.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ipaddress
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.keys import DATABASE, SETTINGS
from api.openapi import documented
from imagesvc.metrics import writes_to_dir
from imagesvc.settings import Network, Settings
from models.db import Database
from models.jobs import queue_state

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
HTTP = "imagesvc_http_"  # the prefix of the API processes' own metrics
# Methods a client may use; any other is counted as "other", so labels stay few.
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})


# The latency histogram's upper bounds, +Inf last: prometheus-client's default buckets.
BUCKET_BOUNDS = tuple(float(bound) for bound in Histogram.DEFAULT_BUCKETS)
# How often an API process adds the requests it answered to its counters: a scrape of
# another process's /metrics sees them at most this late; its own /metrics, at once.
FLUSH_EVERY_S = 1.0


@dataclass
class Tally:
    """Requests of one (method, route, status) answered since the last flush."""

    seconds: float
    buckets: list[int]  # requests per histogram bucket, by the index of its upper bound

    @classmethod
    def empty(cls) -> Tally:
        return cls(0.0, [0] * len(BUCKET_BOUNDS))

    @property
    def count(self) -> int:
        return sum(self.buckets)

    @classmethod
    def of(cls, durations: list[float]) -> Tally:
        tally = cls.empty()
        for seconds in durations:
            tally.add(seconds)
        return tally

    def add(self, seconds: float) -> None:
        self.seconds += seconds
        # The bucket Histogram.observe counts it in: the first bound it does not exceed.
        self.buckets[bisect.bisect_left(BUCKET_BOUNDS, seconds)] += 1


@dataclass(frozen=True)
class RequestMetrics:
    """This API process's request counters, and the registry that holds them in memory.

    A request's seconds are kept in a plain dict of lists, and tallied and added to
    the counters once a second (``flush``): in the multiprocess mode, every increment of a
    counter, of a histogram's sum and of its bucket takes a lock and writes a file's
    page, three per request, which cost more than the rest of the bookkeeping.
    """

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    # Seconds taken by method, route's resource (None: no route matched) and status;
    # tallied and labelled when flushed.
    _pending: dict[tuple[str, AbstractResource | None, int], list[float]] = field(
        default_factory=dict
    )

    @classmethod
    def create(cls) -> RequestMetrics:
        registry = CollectorRegistry()
        labels = ["method", "route", "status"]
        requests = Counter(
            HTTP + "requests_total", "HTTP requests answered", labels, registry=registry
        )
        latency = Histogram(
            HTTP + "request_duration_seconds",
            "Seconds to answer an HTTP request",
            labels,
            registry=registry,
            buckets=BUCKET_BOUNDS,
        )
        return cls(registry, requests, latency)

    def record(self, request: web.Request, status: int, seconds: float) -> None:
        """Count one answered request and the seconds it took, by method, route and status."""
        method = request.method if request.method in KNOWN_METHODS else "other"
        key = (method, request.match_info.route.resource, status)
        durations = self._pending.get(key)
        if durations is None:
            self._pending[key] = [seconds]
        else:
            durations.append(seconds)

    def flush(self) -> None:
        """Add the requests tallied since the last flush to the counters."""
        while self._pending:  # one by one: a failure loses that tally only, counts none twice
            (method, resource, status), durations = self._pending.popitem()
            labels, tally = (method, route_of(resource), str(status)), Tally.of(durations)
            self.requests.labels(*labels).inc(tally.count)
            observe_many(self.latency.labels(*labels), tally)


def observe_many(histogram: Histogram, tally: Tally) -> None:
    """What ``histogram.observe`` would have counted for each of the tallied requests.

    prometheus-client has no call for a batch: its histogram keeps a value for its sum
    and one per bucket (``_sum``, ``_buckets``, as ``observe`` uses them)."""
    histogram._sum.inc(tally.seconds)
    for bucket, count in zip(histogram._buckets, tally.buckets, strict=True):
        if count:
            bucket.inc(count)


async def flush_request_metrics(app: web.Application) -> AsyncIterator[None]:
    """Flush the app's request metrics every ``FLUSH_EVERY_S``, and once more at the end."""
    metrics = app[REQUEST_METRICS]

    async def flush_forever() -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                metrics.flush()
            except Exception:  # the metrics directory's disk, say: count on, say so
                log.exception("could not add this process's requests to its metrics")

    flushing = asyncio.create_task(flush_forever())
    yield
    flushing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flushing
    metrics.flush()


REQUEST_METRICS = web.AppKey("request_metrics", RequestMetrics)


def route_of(resource: AbstractResource | None) -> str:
    """The route's pattern (``/v2/zone/{zone}/job/{job_id}``), never the path a caller sent."""
    return resource.canonical if resource is not None else "unmatched"


def is_allowed(remote: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether the peer's address is in one of ``networks``."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False  # a Unix socket peer, or none
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@documented(content_type="text/plain", errors=(404,))
async def serve_metrics(request: web.Request) -> web.Response:
    """Prometheus metrics for addresses in `IMAGESVC_METRICS_ALLOW`; others get a 404."""
    settings = request.app[SETTINGS]
    if not is_allowed(request.remote, settings.metrics_networks):
        raise web.HTTPNotFound
    request.app[REQUEST_METRICS].flush()  # this process's own requests, up to this one
    registry = await asyncio.to_thread(
        gather_metrics, settings, request.app[DATABASE], request.app[REQUEST_METRICS]
    )
    # The text format the scraper asks for in Accept (Prometheus 2 and 3 differ).
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = await asyncio.to_thread(encode, registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def gather_metrics(
    settings: Settings, database: Database, own: RequestMetrics
) -> CollectorRegistry:
    """A registry of every process's metrics and the service's state, read when collected."""
    registry = CollectorRegistry(auto_describe=False)
    directory = str(settings.resolved_metrics_dir)
    if writes_to_dir(settings.resolved_metrics_dir):
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        # This process keeps its request counters in memory (a test, an embedded app): it
        # reports those, and from the files only what the workers counted, never the same
        # series twice.
        registry.register(own.registry)
        if settings.resolved_metrics_dir.is_dir():
            files = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
            registry.register(WorkerMetrics(files))
    registry.register(ServiceStateCollector(settings, database))
    return registry


class WorkerMetrics(Collector):
    """The families of the multiprocess files but the API processes' request metrics."""

    def __init__(self, files: MultiProcessCollector) -> None:
        self._files = files

    def collect(self) -> Iterator[Metric]:
        families: Iterator[Metric] = self._files.collect()  # type: ignore[no-untyped-call]
        return (family for family in families if not family.name.startswith(HTTP))


class ServiceStateCollector(Collector):
    """Gauges read at scrape time: the job queue from the database, the store's disk."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self._settings = settings
        self._database = database

    def collect(self) -> Iterator[Metric]:
        with self._database.reading() as session:
            state = queue_state(session)
        yield GaugeMetricFamily(
            "imagesvc_jobs_pending", "Jobs waiting for a worker", value=state.pending
        )
        yield GaugeMetricFamily(
            "imagesvc_jobs_working", "Jobs a worker is running", value=state.working
        )
        yield GaugeMetricFamily(
            "imagesvc_oldest_pending_job_age_seconds",
            "Seconds the longest-waiting pending job has waited; 0 when none waits",
            value=state.oldest_pending_age,
        )
        usage = shutil.disk_usage(self._settings.image_dir)
        yield GaugeMetricFamily(
            "imagesvc_store_free_bytes", "Free bytes on the image store's file system", usage.free
        )
        yield GaugeMetricFamily(
            "imagesvc_store_size_bytes", "Size of the image store's file system", usage.total
        )
