"""A million images in seconds: the scale benchmark's rows, made by PostgreSQL itself.

``generate_series`` inserts every row in one statement per table, so growing
from 10,000 to 1,000,000 images takes seconds, not the hours the ORM would.
The distribution is the issue's: the benchmark's caller owns 100 images, the
rest belong to 10,000 other tenants, 1 in 100 images is a public system image,
about 1 in 7 is ceased; every image has a job, the caller's too.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select, text

from models.accounts import client_record, create_account, issue_token
from models.db import Database
from models.tables import Account

ZONE = "ac1"
CALLER_IMAGES = 100
TENANTS = 10_000
OS_FAMILIES = ("ubuntu", "centos", "debian", "fedora", "windows")

# Row i of the generated images: 1 in 100 public (system), 1 in 7 ceased,
# 1 in 50 deleted, the rest available; spread over one year.
_IMAGES = """
INSERT INTO images (image_id, zone, owner, image_name, description, size, virtual_size,
    byte_size, disk_format, checksum, processor_type, platform, os_family, visibility,
    provider, recommended_type, default_user, default_passwd, status, transition_status,
    create_time, status_time)
SELECT :prefix || lpad(to_hex(i), 8, '0'), :zone,
    CASE WHEN :owner <> '' THEN :owner
         WHEN i % 100 = 0 THEN 'system'
         ELSE 'tenant-' || ((i * 7919) % :tenants) END,
    os || '-' || substr(md5(i::text), 1, 8), '', 20, 21474836480, 1073741824, 'qcow2',
    md5(i::text), CASE WHEN i % 4 = 0 THEN '32bit' ELSE '64bit' END,
    CASE WHEN os = 'windows' THEN 'windows' ELSE 'linux' END, os,
    CASE WHEN :owner = '' AND i % 100 = 0 THEN 'public' ELSE 'private' END,
    CASE WHEN :owner = '' AND i % 100 = 0 THEN 'system' ELSE 'self' END,
    'c1m2', 'root', '',
    CASE WHEN i % 7 = 3 THEN 'ceased' WHEN i % 50 = 1 THEN 'deleted' ELSE 'available' END,
    '', t, t
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i,
    LATERAL (SELECT (ARRAY['ubuntu','centos','debian','fedora','windows'])[1 + i % 5] AS os,
        TIMESTAMPTZ '2026-01-01' - (i * 7919 % 31536000) * INTERVAL '1 second' AS t) AS row
"""

_JOBS = """
INSERT INTO jobs (job_id, zone, owner, action, status, resource_ids, progress, attempts,
    create_time, begin_time, finished_time, status_time, worker)
SELECT replace(image_id, 'img-', 'j-'), zone, owner,
    CASE WHEN status = 'ceased' THEN 'DeleteImages' ELSE 'CaptureInstance' END,
    CASE WHEN status = 'deleted' THEN 'failed' ELSE 'successful' END,
    json_build_array(image_id), 100, 1, create_time, create_time, create_time, create_time, ''
FROM images WHERE image_id LIKE :prefix || '%' AND length(image_id) = length(:prefix) + 8
    AND image_id > :after
"""


@dataclass(frozen=True)
class BenchCaller:
    """The account the benchmark lists as, and its bearer token."""

    account_id: str
    token: str


def create_caller(database: Database) -> BenchCaller:
    """The benchmark's account, its token, and its own 100 images with their jobs."""
    with database.transaction() as session:
        credentials = create_account(session, "bench caller")
    with database.transaction() as session:
        # The bench made this account just now: its secret needs no check.
        client = client_record(session, credentials.api_key)
        token = issue_token(session, client, 7 * 24 * 3600)
    _insert(database.engine, "img-c", 1, CALLER_IMAGES, credentials.account_id)
    return BenchCaller(credentials.account_id, token.access_token)


def caller_of(database: Database) -> str:
    """The account id of the benchmark's caller (the only account)."""
    with database.reading() as session:
        return str(session.scalars(select(Account.account_id)).one())


def grow_to(database: Database, images_now: int, images_wanted: int) -> None:
    """Add other tenants' and public images (and their jobs) until there are ``images_wanted``.

    ``images_now`` counts the caller's 100 too.
    """
    first = images_now - CALLER_IMAGES + 1
    last = images_wanted - CALLER_IMAGES
    if last >= first:
        _insert(database.engine, "img-", first, last, "")
    with database.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        # As autovacuum would: the statistics and the visibility map that lets
        # counts be index-only scans.
        autocommit.execute(text("VACUUM ANALYZE images"))
        autocommit.execute(text("VACUUM ANALYZE jobs"))


def _insert(engine: Engine, prefix: str, first: int, last: int, owner: str) -> None:
    after = prefix + format(first - 1, "08x")
    values = {"prefix": prefix, "zone": ZONE, "owner": owner, "tenants": TENANTS}
    with engine.begin() as connection:
        connection.execute(text(_IMAGES), {**values, "first": first, "last": last})
        prefix_filter = {"prefix": prefix, "after": after}
        connection.execute(text(_JOBS), prefix_filter)
