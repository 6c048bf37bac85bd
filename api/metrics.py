"""``GET /metrics``: Prometheus metrics of the whole service, served by the API.

It adds up what every process wrote to the multiprocess directory (the
workers' job counters, this and other API processes' request counters),
and computes the queue's state from the database at scrape time, which is
right however many processes there are. Only addresses in
``IMAGESVC_METRICS_ALLOW`` get an answer; others get the 404 of an unknown path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
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

METRICS_PATH = "/metrics"
HTTP = "imagesvc_http_"  # the prefix of the API processes' own metrics
# Methods a client may use; any other is counted as "other", so labels stay few.
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})


@dataclass(frozen=True)
class RequestMetrics:
    """This API process's request counters, and the registry that holds them in memory."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    # Each (method, route, status)'s two children: prometheus_client's labels() locks
    # and looks them up on every call, which a request need not pay twice.
    _children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = field(default_factory=dict)

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
        )
        return cls(registry, requests, latency)

    def record(self, request: web.Request, status: int, seconds: float) -> None:
        """Count one answered request and the seconds it took, by method, route and status."""
        method = request.method if request.method in KNOWN_METHODS else "other"
        labels = (method, route_of(request), str(status))
        children = self._children.get(labels)
        if children is None:
            children = self.requests.labels(*labels), self.latency.labels(*labels)
            self._children[labels] = children
        children[0].inc()
        children[1].observe(seconds)


REQUEST_METRICS = web.AppKey("request_metrics", RequestMetrics)


def route_of(request: web.Request) -> str:
    """The route's pattern (``/v2/zone/{zone}/job/{job_id}``), never the path a caller sent."""
    resource = request.match_info.route.resource
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
