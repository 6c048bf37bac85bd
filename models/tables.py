"""The tables. Statuses are stored as their string values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The compute host of every instance registered without one, served by ``imagesvc up``.
LOCAL_HOST = "local"

PUBLIC_ONLY = "visibility = 'public'"
# The jobs the sweep and the queue's state look for: not yet settled.
UNSETTLED_JOBS = "status IN ('pending', 'working')"
# Columns a listing filters public images by, carried in their index.
PUBLIC_LISTING_COLUMNS = (
    "owner",
    "status",
    "provider",
    "processor_type",
    "os_family",
    "image_name",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    api_key: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(256))
    # None: the deployment's default (IMAGESVC_QUOTA_IMAGES / IMAGESVC_QUOTA_GB).
    quota_images: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_gb: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set by the operator: the account's secret and tokens stop working at once.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class AccessToken(Base):
    __tablename__ = "access_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.account_id", ondelete="CASCADE"), index=True
    )
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Instance(Base):
    """The compute service's inventory, as far as this service needs it."""

    __tablename__ = "instances"

    instance_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    zone: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"), index=True)
    instance_name: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16))
    disk_path: Mapped[str] = mapped_column(Text)
    disk_format: Mapped[str] = mapped_column(String(16))
    # The disk's virtual size in bytes, as the compute service knows it.
    disk_size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    os_family: Mapped[str] = mapped_column(String(64), default="")
    platform: Mapped[str] = mapped_column(String(16), default="linux")
    processor_type: Mapped[str] = mapped_column(String(16), default="64bit")
    default_user: Mapped[str] = mapped_column(String(64), default="")
    recommended_type: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The compute host whose disk this is: its captures run on that host's workers.
    host: Mapped[str] = mapped_column(String(64), default=LOCAL_HOST, server_default=LOCAL_HOST)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_zone_create_time", "zone", "create_time", "image_id"),
        Index("ix_images_status_status_time", "status", "status_time"),
        # A caller's listing reads two ranges: their own images and the public
        # ones (models.scoping); PostgreSQL answers counts from the index alone.
        Index(
            "ix_images_zone_owner_create_time",
            "zone",
            "owner",
            "create_time",
            "image_id",
            postgresql_include=["status"],
        ),
        Index(
            "ix_images_public_zone_create_time",
            "zone",
            "create_time",
            "image_id",
            postgresql_include=list(PUBLIC_LISTING_COLUMNS),
            postgresql_where=text(PUBLIC_ONLY),
            sqlite_where=text(PUBLIC_ONLY),
        ),
        # PostgreSQL also has pg_trgm GIN indexes on lower(image_id) and
        # lower(image_name) of public images, for search_word (migration 0007).
        # One capture of an instance at a time: the database refuses the second.
        Index(
            "uq_images_capturing_instance",
            "source_instance_id",
            unique=True,
            sqlite_where=text("transition_status = 'creating'"),
            postgresql_where=text("transition_status = 'creating'"),
        ),
    )

    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    zone: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(32), index=True)
    image_name: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    byte_size: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_format: Mapped[str] = mapped_column(String(16), default="")
    checksum: Mapped[str] = mapped_column(String(64), default="")
    # How ``checksum`` was computed (workers.checksum): like Glance's os_hash_algo.
    checksum_algorithm: Mapped[str] = mapped_column(String(32), default="", server_default="")
    file_name: Mapped[str | None] = mapped_column(String(128), default=None)
    processor_type: Mapped[str] = mapped_column(String(16))
    platform: Mapped[str] = mapped_column(String(16))
    os_family: Mapped[str] = mapped_column(String(64))
    visibility: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(16))
    recommended_type: Mapped[str] = mapped_column(String(64), default="")
    default_user: Mapped[str] = mapped_column(String(64), default="")
    default_passwd: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16))
    transition_status: Mapped[str] = mapped_column(String(16), default="")
    source_instance_id: Mapped[str | None] = mapped_column(String(32), default=None)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set by the operator; kept while the image is suspended so resume restores it.
    deprecated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class PublicImageCount(Base):
    """How many public images each combination of listing filters matches.

    PostgreSQL only: triggers on ``images`` keep it exact (migration 0007), so
    an exact ``total_count`` does not grow with the public images.
    """

    __tablename__ = "public_image_counts"

    zone: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    processor_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    # lower(os_family): the filter is case-insensitive.
    os_family: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    images: Mapped[int] = mapped_column(BigInteger)


class PublicImageGeneration(Base):
    """A number that changes whenever a zone's public images do.

    PostgreSQL only: triggers on ``images`` bump it in the changing transaction
    (migration 0012), so a public count remembered with a generation is exact
    while a statement reads that generation (models/images.py, searches).
    """

    __tablename__ = "public_image_generations"

    zone: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_create_time", "owner", "create_time", "job_id"),
        Index(
            "ix_jobs_zone_owner_create_time",
            "zone",
            "owner",
            "create_time",
            "job_id",
            postgresql_include=["status", "action"],
        ),
        # The sweep's and the queue state's: only unsettled jobs (migration 0013), so a
        # settle writes no entry into them.
        Index(
            "ix_jobs_unsettled_status_send_requested_at",
            "status",
            "send_requested_at",
            postgresql_where=text(UNSETTLED_JOBS),
            sqlite_where=text(UNSETTLED_JOBS),
        ),
        Index(
            "ix_jobs_unsettled_status_heartbeat_at",
            "status",
            "heartbeat_at",
            postgresql_where=text(UNSETTLED_JOBS),
            sqlite_where=text(UNSETTLED_JOBS),
        ),
    )

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    zone: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    resource_ids: Mapped[list[str]] = mapped_column(JSON)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    # models.states.JobPhase of a working job, written by its heartbeat.
    phase: Mapped[str] = mapped_column(String(16), default="", server_default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    begin_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    status_time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    send_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    worker: Mapped[str] = mapped_column(String(128), default="", server_default="")
    # The X-Request-Id of the API request that made the job, to join API and worker logs.
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # The compute host whose workers must run the job ('' for any: no disk work).
    host: Mapped[str] = mapped_column(String(64), default="", server_default="")


class ClientRequest(Base):
    """A caller's ``request_id``, remembered so that a retried request gets the same job."""

    __tablename__ = "client_requests"

    owner: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
