"""The one settings object, read from ``IMAGESVC_*`` environment variables.

It is built once in ``main`` (or by a test) and handed down; nothing reads the
environment at import time.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from models.instances import HOST_PATTERN
from models.quotas import Quota
from models.tables import LOCAL_HOST

EMBEDDED_BROKER_SCHEME = "embedded"

# Loopback and the private ranges: where a Prometheus server inside the cloud scrapes from.
DEFAULT_METRICS_ALLOW = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Settings(BaseSettings):
    """Everything an API process, a worker or the scheduler needs to know."""

    model_config = SettingsConfigDict(env_prefix="IMAGESVC_", frozen=True)

    data_dir: Path = Field(default=Path("var"), description="Image store, SQLite file, broker")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite")
    broker_url: str = Field(default="", description="Celery broker URL; empty means embedded")
    store_url: str = Field(
        default="",
        pattern=r"^((file|s3)://.*)?$",
        description="Image store: file:///path or s3://bucket/prefix; empty: data_dir/images",
    )
    zones: Annotated[tuple[str, ...], NoDecode] = ("ac1",)
    queue: str = Field(default="imagesvc", pattern=r"^[A-Za-z0-9_-]+$")
    token_ttl: int = Field(default=3600, gt=0, description="Access token lifetime, seconds")
    worker_concurrency: int = Field(default=2, gt=0)
    dispatch_grace: float = Field(
        default=30.0, gt=0, description="Seconds a pending job may wait before re-dispatch"
    )
    sweep_interval: float = Field(default=10.0, gt=0, description="Scheduler period, seconds")
    heartbeat_interval: float = Field(
        default=2.0, gt=0, description="Seconds between a working job's heartbeats"
    )
    heartbeat_timeout: float = Field(
        default=30.0, gt=0, description="Seconds of silence after which a working job is lost"
    )
    max_attempts: int = Field(default=3, ge=1, description="Runs of a job before it fails")
    orphan_grace: float = Field(
        default=3600.0, ge=0, description="Age in seconds before an unowned file is removed"
    )
    # Tests only: the API process exits between committing a job and sending it.
    fault_after_commit: bool = False
    deleted_retention: float = Field(
        default=7200.0, ge=0, description="Seconds a deleted image stays recoverable"
    )
    ceased_retention: float = Field(
        default=30 * 86400.0, ge=0, description="Seconds a ceased row stays listable for audit"
    )
    quota_images: int = Field(default=100, ge=0, description="Non-ceased images per account")
    quota_gb: int = Field(default=2000, ge=0, description="GB of non-ceased images per account")
    broker_polling_interval: float = Field(default=0.2, gt=0)
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one readable line per event; json: one object a line"
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    metrics_dir: str = Field(
        default="", description="Multiprocess metrics directory; empty: data_dir/metrics"
    )
    metrics_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_METRICS_ALLOW, description="Networks GET /metrics answers, comma-separated"
    )
    compute_host: str = Field(
        default=LOCAL_HOST,
        pattern=f"^{HOST_PATTERN}$",
        description="A worker's compute host: it runs the captures of that host's instances",
    )
    # Hostile clients (docs/security.md): every wait on a client is bounded.
    header_timeout: float = Field(
        default=15.0, gt=0, le=30, description="Seconds to send a request's headers, or idle"
    )
    # At most 28: with the 2 s an unread body lingers (api/app.py), a stall ends within 30 s.
    body_timeout: float = Field(
        default=15.0, gt=0, le=28, description="Seconds to send a request's body"
    )
    throttle_failures: int = Field(
        default=20, ge=1, description="Failed client logins per api_key or address per window"
    )
    throttle_window: float = Field(
        default=60.0, gt=0, description="Seconds over which failed client logins are counted"
    )
    hash_workers: int = Field(default=1, ge=1, description="Threads that verify secrets")
    hash_queue: int = Field(
        default=32, ge=1, description="Secret checks waiting at most; more are refused (429)"
    )
    hash_per_address: int = Field(
        default=4, ge=1, description="Secret checks waiting at most for one client address"
    )
    write_pool_size: int = Field(
        default=16,
        ge=1,
        description="PostgreSQL connections an API process writes on: its writes at once",
    )

    @field_validator("zones", "metrics_allow", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """``IMAGESVC_ZONES`` and ``IMAGESVC_METRICS_ALLOW`` are comma-separated lists."""
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("zones")
    @classmethod
    def _at_least_one_zone(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one zone is required")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().upper()
            if not isinstance(logging.getLevelNamesMapping().get(value), int):
                raise ValueError(f"unknown log level {value!r}")
        return value

    @field_validator("metrics_allow")
    @classmethod
    def _valid_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value

    @property
    def metrics_networks(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(net, strict=False) for net in self.metrics_allow)

    @property
    def resolved_metrics_dir(self) -> Path:
        return Path(self.metrics_dir) if self.metrics_dir else self.data_dir / "metrics"

    @property
    def default_quota(self) -> Quota:
        """The quota of an account the operator has not given one of its own."""
        return Quota(images=self.quota_images, gb=self.quota_gb)

    @property
    def image_dir(self) -> Path:
        """The directory store's path: the data dir's ``images/``, or the ``file://`` store's.
        (With an S3 store, the data dir's ``images/``, which stays empty.)"""
        if self.store_url.startswith("file://"):
            return Path(urlsplit(self.store_url).path)
        return self.data_dir / "images"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'imagesvc.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        # A host name, though the embedded broker ignores it, keeps kombu from warning.
        return self.broker_url or f"{EMBEDDED_BROKER_SCHEME}://localhost"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file, when the database is one."""
        url = make_url(self.resolved_database_url)
        if url.get_backend_name() != "sqlite" or not url.database:
            return None
        return Path(url.database)

    def ensure_dirs(self) -> None:
        """Create the directories the embedded defaults write into, readable by us alone.

        The SQLite file holds secret hashes and token digests, and the store
        holds tenants' disks: neither is for other local users (mode 0600/0700).
        """
        for path in (self.data_dir, self.image_dir, self.broker_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)
        sqlite_file = self.sqlite_file
        if sqlite_file is not None and sqlite_file.parent.is_dir():
            # SQLite gives its -wal and -shm files the mode of the database file.
            os.close(os.open(sqlite_file, os.O_CREAT | os.O_WRONLY, 0o600))
            sqlite_file.chmod(0o600)
