"""What users do to images: capture, delete, modify, list.

Each function is one unit of work inside a caller-supplied session; the
functions that start slow work return the Job to dispatch after commit.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Awaitable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Executable,
    Integer,
    Row,
    Select,
    SQLColumnExpression,
    String,
    Table,
    and_,
    bindparam,
    cast,
    extract,
    func,
    literal_column,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import ids
from models.accounts import BEARER
from models.catalogue import CataloguedListing, EntryFilter, Render, entry_filter
from models.client_requests import remember, replay
from models.errors import AccessDenied, InvalidParameter, ResourceNotFound, StateConflict
from models.instances import InstanceInfo, require_host_name, require_stopped
from models.jobs import job_row, new_job
from models.quotas import (
    Quota,
    quota_of,
    require_room_beside,
    require_room_for_added,
    usage_beside,
)
from models.reads import (
    Listed,
    Listing,
    Reads,
    RememberedPublicTotal,
    listed_as_bearer,
    listed_from_catalogue,
)
from models.scoping import (
    Caller,
    is_public,
    one_of,
    public_images_in,
    visible_image_ranges,
    visible_images,
)
from models.statements import (
    Db,
    Statements,
    insert_values,
    inserting,
    new_row,
    statements_of,
)
from models.states import (
    ImageAction,
    ImageStatus,
    JobAction,
    JobStatus,
    ProcessorType,
    Provider,
    TransitionStatus,
    Visibility,
)
from models.tables import (
    LOCAL_HOST,
    Image,
    Job,
    PublicImageCount,
    PublicImageGeneration,
    utcnow,
)
from models.transitions import can_move, move_images, moved_changeable_images, refusal

GIB = 1024**3
DEFAULT_HIDDEN = (ImageStatus.CEASED,)

_IMAGES = typing.cast(Table, Image.__table__)
_JOBS = typing.cast(Table, Job.__table__)
# A capture's image and job, and the owner's usage beside them (PostgreSQL).
_CAPTURE_AND_USAGE = usage_beside(inserting(_IMAGES), inserting(_JOBS))
_IMAGE = select(*_IMAGES.c).where(_IMAGES.c.image_id == bindparam("image_id", type_=String))


@dataclass(frozen=True)
class Capture:
    job: Job
    image: Image


@dataclass(frozen=True)
class CaptureRequest:
    """What a caller asked to capture; ``instance`` is None if the inventory has no such one."""

    instance_id: str
    instance: InstanceInfo | None
    image_name: str | None = None
    request_id: str | None = None


def capture_instance(
    db: Db,
    caller: Caller,
    wanted: CaptureRequest,
    default_quota: Quota,
    *,
    locked_quota: Quota | None = None,
) -> Capture:
    """Record a pending image of a stopped instance and its job.

    The image's ``size`` is reserved from the instance's disk size at once, so
    that concurrent captures count against the quota before any copy ends.
    A ``request_id`` already used in the last 24 h gets the earlier capture,
    whatever has become of the instance since. ``locked_quota``: the caller's
    quota, read earlier in this unit of work with its account row locked
    (``accounts.BEARER_LOCKING_QUOTA``); None, read and locked here.
    """
    statements = statements_of(db)
    action = JobAction.CAPTURE_INSTANCE
    job_id = ids.job_id()
    earlier = _replay_or_remember(statements, caller, wanted.request_id, action, job_id)
    if earlier is not None:
        return Capture(earlier, _image_of(statements, earlier))
    instance = wanted.instance
    if instance is None:
        raise ResourceNotFound(f"instance {wanted.instance_id} not found")
    require_stopped(instance)
    size = size_in_gb(instance.disk_size)
    quota = locked_quota or quota_of(statements, caller.account_id, default_quota, lock=True)
    image = _new_image(
        caller.zone,
        caller.account_id,
        wanted.image_name or "",
        instance.attributes(),
        source_instance_id=instance.instance_id,
        size=size,
    )
    resources = [image.image_id, instance.instance_id]
    job = job_row(caller, action, resources, job_id=job_id, host=instance.host)
    try:
        _record_capture(statements, caller, quota, image, job)
    except IntegrityError as exc:  # the partial unique index: a capture is under way
        raise _already_capturing(instance.instance_id) from exc
    return Capture(job, image)


def _record_capture(
    statements: Statements, caller: Caller, quota: Quota, image: Image, job: Job
) -> None:
    """Insert the image and its job, within the caller's quota (locked before).

    PostgreSQL: both inserts and the usage in one statement. SQLite has no
    data-modifying ``WITH``: three statements. Either way the unit is refused
    (and so rolled back) past the quota, and the image's insert fails first on a
    capture already under way.
    """
    image_values = insert_values(_IMAGES, image)
    job_values = insert_values(_JOBS, job)
    if statements.dialect_name == "postgresql":
        values = {**image_values, **job_values, "account_id": caller.account_id}
        require_room_beside(quota, statements.rows(_CAPTURE_AND_USAGE, values)[0], image.size)
        return
    statements.count(inserting(_IMAGES), image_values)
    require_room_for_added(statements, caller.account_id, quota, image.size)
    statements.count(inserting(_JOBS), job_values)


def _replay_or_remember(
    statements: Statements, caller: Caller, request_id: str | None, action: JobAction, job_id: str
) -> Job | None:
    """The earlier job of a repeated ``request_id``; else the key is taken for ``job_id``."""
    if not request_id:
        return None
    earlier = replay(statements, caller, request_id, action)
    if earlier is None:
        remember(statements, caller, request_id, action, job_id)
    return earlier


def _image_of(statements: Statements, capture_job: Job) -> Image:
    image_id = capture_job.resource_ids[0]
    row = statements.first(_IMAGE, {"image_id": image_id})
    if row is None:
        raise ResourceNotFound(f"image {image_id} of that request has been purged")
    return Image(**row._mapping)


def _already_capturing(instance_id: str) -> StateConflict:
    return StateConflict(f"instance {instance_id} is already being captured; wait for it")


def delete_images(
    db: Db, caller: Caller, image_ids: Sequence[str], request_id: str | None = None
) -> Job:
    """Start deleting the caller's images: all of them, or none.

    With a ``request_id`` already used in the last 24 h, the earlier job.
    """
    statements = statements_of(db)
    action = JobAction.DELETE_IMAGES
    job_id = ids.job_id()
    earlier = _replay_or_remember(statements, caller, request_id, action, job_id)
    if earlier is not None:
        return earlier
    wanted = list(dict.fromkeys(image_ids))
    job = job_row(caller, action, wanted, job_id=job_id)
    if statements.dialect_name == "postgresql":  # the moves and the job in one statement
        _begin_delete(statements, caller, wanted, (_JOBS, insert_values(_JOBS, job)))
        return job
    _begin_delete(statements, caller, wanted)
    return new_job(statements, caller, action, wanted, job_id=job_id)


def recover_images(db: Db, caller: Caller, image_ids: Sequence[str], retention: float) -> Job:
    """Start bringing the caller's deleted images back, if still within ``retention`` seconds."""
    statements = statements_of(db)
    cutoff = utcnow() - timedelta(seconds=retention)
    wanted = list(dict.fromkeys(image_ids))
    rows = _lock_own(statements, caller, wanted, "recover")
    gone = [row for row in rows.values() if _is_ceased(row, cutoff)]
    if gone:
        names = ", ".join(row.image_id for row in gone)
        raise StateConflict(
            f"cannot recover image {names}: it is ceased, its storage freed "
            f"(deleted images can be recovered for {retention:.0f} s)"
        )
    _require_movable(rows, ImageAction.BEGIN_RECOVER)
    within_window = Image.status_time > cutoff
    if move_images(statements, wanted, ImageAction.BEGIN_RECOVER, within_window) != len(wanted):
        raise StateConflict("images changed while being recovered; retry")
    return new_job(statements, caller, JobAction.RECOVER_IMAGES, wanted)


def _is_ceased(image: Any, cutoff: datetime) -> bool:
    expired = image.status == ImageStatus.DELETED and image.status_time <= cutoff
    return bool(expired or image.status == ImageStatus.CEASED)


def _begin_delete(
    statements: Statements,
    caller: Caller,
    wanted: list[str],
    then: tuple[Table, dict[str, Any]] | None = None,
) -> None:
    """Begin deleting all the caller's images, or refuse naming the offenders.

    One compare-and-set update moves every image the caller may change and
    that may be deleted. Only if it moves fewer than asked are those moves
    undone (deleting leaves ``status`` alone, so the undo is exact: a refusal
    leaves the images as they were, even in a unit that goes on to commit)
    and the others read, to say why: not found, not theirs, or in a state
    that forbids it. ``then`` (PostgreSQL): the job's row, inserted by the same
    statement if every image moved (transitions.moved_changeable_images).
    """
    action = ImageAction.BEGIN_DELETE
    moved = moved_changeable_images(statements, caller, wanted, action, then)
    if len(moved) == len(wanted):
        return
    move_images(statements, list(moved), ImageAction.CANCEL_DELETE)
    rows = _lock_own(statements, caller, wanted, action.value)
    _require_movable(rows, action)
    raise StateConflict(f"images changed during {action.value}; retry")


def _lock_own(
    statements: Statements, caller: Caller, image_ids: list[str], verb: str
) -> dict[str, Any]:
    """The caller's own images ``image_ids``, locked: rows by id; refuses those not
    found, or not theirs."""
    rows = _lock_visible(statements, caller, image_ids)
    _require_found(image_ids, rows)
    _require_own(caller, rows, verb)
    return rows


def _require_movable(rows: dict[str, Any], action: ImageAction) -> None:
    blocked = [row for row in rows.values() if not can_move(row, action)]
    if blocked:
        raise refusal(action, blocked)


def modify_image(
    db: Db,
    caller: Caller,
    image_id: str,
    image_name: str | None,
    description: str | None,
) -> Job:
    """Change an image's name and/or description; the job is already successful."""
    if image_name is None and description is None:
        raise InvalidParameter("give image_name or description (or both) to modify")
    statements = statements_of(db)
    rows = _lock_own(statements, caller, [image_id], "modify")
    _require_movable(rows, ImageAction.MODIFY)
    changes = {"image_name": image_name, "description": description}
    values = {key: value for key, value in changes.items() if value is not None}
    if move_images(statements, [image_id], ImageAction.MODIFY, **values) != 1:
        raise StateConflict(f"image {image_id} changed while being modified; retry")
    return new_job(
        statements,
        caller,
        JobAction.MODIFY_IMAGE_ATTRIBUTES,
        [image_id],
        status=JobStatus.SUCCESSFUL,
    )


def _lock_visible(statements: Statements, caller: Caller, image_ids: list[str]) -> dict[str, Any]:
    # Built per call: only refusals, recoveries and modifications read rows first.
    stmt = visible_images(caller).with_only_columns(*_IMAGES.c)
    locked = stmt.where(Image.image_id.in_(image_ids)).with_for_update()
    return {row.image_id: row for row in statements.rows(locked, {})}


def _require_found(wanted: list[str], rows: dict[str, Any]) -> None:
    missing = [image_id for image_id in wanted if image_id not in rows]
    if missing:
        raise ResourceNotFound(f"image {', '.join(missing)} not found")


def _require_own(caller: Caller, rows: dict[str, Any], verb: str) -> None:
    """Users change only images they own and captured; visible is not enough."""
    foreign = [
        row
        for row in rows.values()
        if row.owner != caller.account_id or row.provider != Provider.SELF.value
    ]
    if foreign:
        names = ", ".join(f"{row.image_id} (provider {row.provider})" for row in foreign)
        raise AccessDenied(f"cannot {verb} {names}: only your own images can be changed")


# The statements of an image listing (models/reads.py).
ImageListing = Listing


@dataclass(frozen=True)
class ImageFilters:
    """What a listing of images asks for; every field is optional."""

    images: Sequence[str] = ()
    processor_type: ProcessorType | None = None
    os_family: str | None = None
    visibility: Visibility | None = None
    provider: Provider | None = None
    status: Sequence[ImageStatus] = ()
    search_word: str | None = None
    offset: int = 0
    limit: int = 10

    def __post_init__(self) -> None:
        # Tuples, whatever the caller gave: filters are hashable, so the statements and
        # values of a listing are built once per set of filters (_bearer_listing).
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "status", tuple(self.status))


def list_images(
    session: Session, caller: Caller, filters: ImageFilters | None = None
) -> tuple[list[Row[Any]], int]:
    """Public images and the caller's own, newest first; and the filtered total.

    Rows, not ORM objects: a page is read-only.
    """
    listing = image_listing(
        caller, filters or ImageFilters(), public_counts=_has_public_counts(session)
    )
    total = int(session.scalar(listing.total, listing.values) or 0)
    return list(session.execute(listing.page, listing.values)), total


def list_images_as_bearer(
    reads: Reads, digest: str, zone: str, filters: ImageFilters, render: Render | None = None
) -> Awaitable[Listed]:
    """:func:`list_images` for the account of the bearer token whose digest is
    ``digest``, in two statements: the token's check and the total, then the
    page (a search on PostgreSQL: a third, once per generation of the zone's
    public images, reads their part, :func:`_remembered_search`).

    With ``render`` (the page writer's, for one row), a listing on PostgreSQL
    that is unfiltered or filtered only by attributes (catalogue.entry_filter) takes
    its public entries from the zone's public catalogue, rendered with it
    (``Listed.rendered``), and reads only the caller's own part
    (catalogue.PublicCatalogues, :func:`catalogued_listing`).
    AuthenticationFailed if the token is unknown, expired or its account
    disabled (read now, never cached: a revocation takes effect at once)."""
    listing = _bearer_listing(zone, filters, reads.dialect_name == "postgresql")
    if listing.keep is not None and render is not None:  # the catalogue answers them
        return listed_from_catalogue(
            reads,
            digest,
            catalogued_listing(listing.wanted),
            listing.page,
            listing.values,
            render,
            listing.keep,
        )
    return listed_as_bearer(
        reads, digest, listing.first, listing.page, listing.values, custom_plans=listing.searching
    )


# Sets of filters (per zone) whose statements and values are kept: listings are
# polled with the same few query strings.
MAX_BEARER_LISTINGS = 1024


@dataclass(frozen=True)
class BearerListing:
    """What :func:`list_images_as_bearer` runs for one set of filters in one zone:
    the filters by name and their values (read-only: every request shares them),
    the page, what a catalogue keeps for them (catalogue.entry_filter; None on
    SQLite, or when a catalogue cannot answer them), and the first statement when
    it does not."""

    wanted: frozenset[str]
    values: Mapping[str, Any]
    page: Select[Any]
    keep: EntryFilter | None
    first: Executable | RememberedPublicTotal
    searching: bool  # its plan depends on the word (Reads.run)


@functools.lru_cache(maxsize=MAX_BEARER_LISTINGS)
def _bearer_listing(zone: str, filters: ImageFilters, postgresql: bool) -> BearerListing:
    wanted, values = _listing_values(zone, filters)
    searching = "pattern" in wanted
    first: Executable | RememberedPublicTotal = _bearer_total(wanted, postgresql)
    if searching and postgresql:
        first = _remembered_search(wanted, values)
    return BearerListing(
        wanted=wanted,
        values=MappingProxyType(values),
        page=_listing_statements(wanted, postgresql)[1],
        keep=entry_filter(wanted, values, _HIDDEN) if postgresql else None,
        first=first,
        searching=searching,
    )


# Searches whose page needs at most this many public keys remember them too.
MAX_REMEMBERED_HEAD = 200


def _remembered_search(wanted: frozenset[str], values: dict[str, Any]) -> RememberedPublicTotal:
    """A search's first statements, and with a short enough page (``head``, offset +
    limit) the page that takes the remembered public keys (``public_head``)."""
    with_head = values["head"] <= MAX_REMEMBERED_HEAD
    key = (_search_key(wanted, values), values["head"] if with_head else None)
    own, counted = _bearer_search_parts(wanted, with_head)
    return RememberedPublicTotal(key, own, counted, _head_page(wanted) if with_head else None)


def listing_filters(zone: str, filters: ImageFilters) -> tuple[frozenset[str], dict[str, Any]]:
    """The filters a listing in ``zone`` applies, by name, and the values of their
    parameters (the bench's plans: bench/scale_report.py)."""
    return _listing_values(zone, filters)


def bearer_search_parts(
    zone: str, filters: ImageFilters
) -> tuple[Select[Any], Select[Any], Select[Any], dict[str, Any]]:
    """A short search's statements on PostgreSQL (the first per request, the same
    with the public part read, and the page on the remembered public keys) and
    their values but the token's ``digest``: what the bench explains
    (bench/scale_report.py)."""
    wanted, values = _listing_values(zone, filters)
    return (*_bearer_search_parts(wanted, with_head=True), _head_page(wanted), values)


def _search_key(wanted: frozenset[str], values: dict[str, Any]) -> Hashable:
    """What the public part of a search's total depends on: its zone and filters."""
    filters = sorted(wanted & values.keys())
    return values["zone"], wanted, tuple((name, _hashable(values[name])) for name in filters)


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


def _has_public_counts(session: Session) -> bool:
    """PostgreSQL keeps public_image_counts (migration 0007); SQLite counts rows."""
    return session.get_bind().dialect.name == "postgresql"


def image_listing(
    caller: Caller, filters: ImageFilters, *, public_counts: bool = False
) -> ImageListing:
    """The statements of :func:`list_images` and the values of their parameters.

    Both the page and the exact total are answered per visibility range
    (scoping.visible_image_ranges), each from its own index, so their cost
    follows the caller's rows and the public rows, not the table's size. With
    ``public_counts`` (PostgreSQL), the public images of a total come from
    ``public_image_counts`` whenever it can answer the filters (all but
    ``images`` and ``search_word``), so the total follows the caller's rows only.
    """
    wanted, values = _listing_values(caller.zone, filters)
    values["owner"] = caller.account_id
    total, page = _listing_statements(wanted, public_counts)
    return ImageListing(total, page, values)


def _listing_values(zone: str, filters: ImageFilters) -> tuple[frozenset[str], dict[str, Any]]:
    """The filters a listing applies, by name, and the values of their parameters."""
    f = filters
    values: dict[str, Any] = {"zone": zone}
    values |= {"head": f.offset + f.limit, "offset": f.offset, "limit": f.limit}
    if f.images:
        values["images"] = list(f.images)
    if f.processor_type:
        values["processor_type"] = f.processor_type.value
    if f.os_family:
        values["os_family"] = f.os_family.lower()
    if f.visibility:
        values["visibility"] = f.visibility.value
    if f.provider:
        values["provider"] = f.provider.value
    if f.status:
        values["status"] = [s.value for s in f.status]
    if f.search_word:
        values["pattern"] = f"%{_escape_like(f.search_word.lower())}%"
    hidden = () if f.status or f.images else ("hidden",)
    return frozenset(values.keys() & _FILTER_NAMES).union(hidden), values


def _escape_like(word: str) -> str:
    return word.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _filters(postgresql: bool) -> dict[str, ColumnElement[bool]]:
    """Each filter of a listing, by the name of its parameter."""
    pattern = bindparam("pattern", type_=String)
    return {
        "images": one_of(Image.image_id, "images", postgresql),
        "processor_type": Image.processor_type == bindparam("processor_type", type_=String),
        "os_family": func.lower(Image.os_family) == bindparam("os_family", type_=String),
        "visibility": Image.visibility == bindparam("visibility", type_=String),
        "provider": Image.provider == bindparam("provider", type_=String),
        "status": one_of(Image.status, "status", postgresql),
        "hidden": _not_hidden(Image.status),
        # Case-insensitive substring of the id or the name (trigram-indexed on PostgreSQL).
        "pattern": or_(
            func.lower(Image.image_id).like(pattern, escape="/"),
            func.lower(Image.image_name).like(pattern, escape="/"),
        ),
    }


def _not_hidden(status: SQLColumnExpression[str]) -> ColumnElement[bool]:
    """Not a status a listing leaves out by default: literals, as constant as the rule."""
    return and_(*(status != literal_column(f"'{hidden.value}'") for hidden in DEFAULT_HIDDEN))


_FILTER_NAMES = frozenset(_filters(postgresql=False))


def _counted_filters() -> dict[str, ColumnElement[bool]]:
    """The filters public_image_counts answers (PostgreSQL only), on its columns."""
    return {
        "processor_type": PublicImageCount.processor_type
        == bindparam("processor_type", type_=String),
        "os_family": PublicImageCount.os_family == bindparam("os_family", type_=String),
        "visibility": literal_column(f"'{Visibility.PUBLIC.value}'")
        == bindparam("visibility", type_=String),
        "provider": PublicImageCount.provider == bindparam("provider", type_=String),
        "status": one_of(PublicImageCount.status, "status", postgresql=True),
        "hidden": _not_hidden(PublicImageCount.status),
    }


_COUNTED_NAMES = frozenset(_counted_filters())


@functools.cache
def _listing_statements(
    wanted: frozenset[str], postgresql: bool
) -> tuple[Select[Any], Select[Any]]:
    """The total and the page for one set of filters, built once: their values
    are all parameters, so each request only binds them (building the
    statements cost more than running them)."""
    zone, owner = bindparam("zone", type_=String), bindparam("owner", type_=String)
    ranges = _ranges(wanted, postgresql, zone, owner)
    return select(_total(wanted, postgresql, zone, ranges)), _page_of(ranges)


@functools.cache
def _bearer_total(wanted: frozenset[str], postgresql: bool) -> Select[Any]:
    """The bearer token's row (accounts.BEARER) and the total of its account's
    listing, in one statement: no row if the token is unknown."""
    zone = bindparam("zone", type_=String)
    ranges = _ranges(wanted, postgresql, zone, BEARER.c.account_id)
    return select(BEARER, _total(wanted, postgresql, zone, ranges).label("total"))


@functools.cache
def _bearer_search_parts(
    wanted: frozenset[str], with_head: bool
) -> tuple[Select[Any], Select[Any]]:
    """A search's first statement (PostgreSQL), in the two forms of
    reads.RememberedPublicTotal: with the zone's public generation (migration
    0012) and the caller's own images that are not public, counted; the second
    also counts every public image of the zone that matches, and ``with_head``
    lists the first ``head`` of them, newest first (``public_head``).

    An exact count of a common word looks at every public image it matches
    (10,000 at 1,000,000 images), and a rare word's page reads its trigram
    matches' rows; public images change rarely, so that part is read once per
    generation, and the caller's own part, from the owner's index, on each request.
    """
    zone = bindparam("zone", type_=String)
    conditions = _conditions(wanted, postgresql=True)
    own = visible_image_ranges(zone, BEARER.c.account_id)[0] & conditions
    generation = select(PublicImageGeneration.generation).where(PublicImageGeneration.zone == zone)
    parts = (
        *BEARER.c,
        func.coalesce(generation.scalar_subquery(), 0).label("generation"),
        select(func.count()).where(own, ~is_public()).scalar_subquery().label("own"),
    )
    public = select(func.count()).where(public_images_in(zone), conditions).scalar_subquery()
    counted = [*parts, public.label("public")]
    if with_head:
        counted.append(_public_head(zone, conditions).label("public_head"))
    return select(*parts), select(*counted)


def _public_head(zone: ColumnElement[str], conditions: ColumnElement[bool]) -> Any:
    """The ids of the first ``head`` public images of the zone that match, newest first."""
    head = (
        select(Image.image_id)
        .where(public_images_in(zone), conditions)
        .order_by(Image.create_time.desc(), Image.image_id.desc())
        .limit(bindparam("head", type_=BigInteger))
        .subquery()
    )
    return select(func.array_agg(head.c.image_id)).scalar_subquery()


@functools.cache
def _head_page(wanted: frozenset[str]) -> Select[Any]:
    """A search's page from the caller's own images that are not public and the
    remembered public keys (``public_head``), read by primary key: what a search
    page reads no longer depends on how the word matches the public images.
    The keys are filtered again, so a row changed since stays out."""
    zone, owner = bindparam("zone", type_=String), bindparam("owner", type_=String)
    conditions = _conditions(wanted, postgresql=True)
    own = visible_image_ranges(zone, owner)[0] & ~is_public() & conditions
    remembered = one_of(Image.image_id, "public_head", postgresql=True)
    return _page_of((own, remembered & public_images_in(zone) & conditions))


# What a listing without filters applies: the default statuses hidden.
UNFILTERED = frozenset({"hidden"})
_HIDDEN = frozenset(status.value for status in DEFAULT_HIDDEN)


@functools.cache
def catalogued_listing(wanted: frozenset[str] = UNFILTERED) -> CataloguedListing:
    """A listing's statements on the zone's public catalogue (PostgreSQL), with
    the filters ``wanted`` (catalogue.entry_filter: those a catalogue answers).

    The public images of a zone are the same for every caller and change rarely:
    read once per generation in listing order (``catalogue``, from the public
    index, whatever the filters), they leave a page only the caller's own part to
    read: a first page reads its own rows in full (``own_head``, at most
    ``limit``); a page past it reads the keys of the caller's first ``head``
    images from the owner's index in its first statement (``first_with_keys``)
    and then only the own rows that fall in it, by primary key (``own_rows``): the
    cost of ``offset`` then follows the caller's images, not the public ones it
    skips. A filtered listing's first statement also counts the whole catalogue
    (``catalogued``).
    """
    zone, owner = bindparam("zone", type_=String), bindparam("owner", type_=String)
    shown = _conditions(UNFILTERED, postgresql=True)
    filtered = _conditions(wanted, postgresql=True)
    generation = select(PublicImageGeneration.generation).where(PublicImageGeneration.zone == zone)
    own_part = visible_image_ranges(zone, BEARER.c.account_id)[0] & ~is_public() & filtered
    parts = [
        *BEARER.c,
        func.coalesce(generation.scalar_subquery(), 0).label("generation"),
        select(func.count()).where(own_part).scalar_subquery().label("own"),
        _counted_public(zone, wanted).label("public"),
    ]
    if wanted != UNFILTERED:
        parts.append(_counted_public(zone, UNFILTERED).label("catalogued"))
    newest_first = (Image.create_time.desc(), Image.image_id.desc())
    columns = [Image.__table__.c[name] for name in LISTED_IMAGE_COLUMNS]
    catalogue = select(*columns).where(public_images_in(zone), shown).order_by(*newest_first)
    if wanted != UNFILTERED:  # one catalogue, one statement object: compiled once
        catalogue = catalogued_listing().catalogue
    own = visible_image_ranges(zone, owner)[0] & ~is_public() & filtered
    own_rows = select(*columns).where(own, one_of(Image.image_id, "own_ids", postgresql=True))
    own_head = (
        select(*columns)
        .where(own)
        .order_by(*newest_first)
        .limit(bindparam("head", type_=BigInteger))
    )
    first = select(*parts)
    keys = _own_listing_keys(own_part)
    first_with_keys = first.add_columns(*keys.c).join_from(BEARER, keys, true())
    return CataloguedListing(first, first_with_keys, catalogue, own_rows, own_head)


def _own_listing_keys(own_part: ColumnElement[bool]) -> Any:
    """The listing keys of the first ``head`` images of ``own_part`` (the bearer's
    own part), newest first, as two arrays (``own_key_micros``: the creation time in
    microseconds since the epoch, catalogue.ListingKey; ``own_key_ids``), read from
    the owner's index beside the bearer's row (LATERAL): a page past the first
    takes them in its first statement, not in one more round trip."""
    micros = cast(extract("epoch", Image.create_time) * 1_000_000, BigInteger).label("micros")
    head = (
        select(micros, Image.image_id)
        .where(own_part)
        .order_by(Image.create_time.desc(), Image.image_id.desc())
        .limit(bindparam("head", type_=BigInteger))
        .correlate(BEARER)
        .subquery("own_head")
    )
    newest_first = (head.c.micros.desc(), head.c.image_id.desc())
    return select(
        func.array_agg(aggregate_order_by(head.c.micros, *newest_first)).label("own_key_micros"),
        func.array_agg(aggregate_order_by(head.c.image_id, *newest_first)).label("own_key_ids"),
    ).lateral("own_keys")


def _conditions(wanted: frozenset[str], postgresql: bool) -> ColumnElement[bool]:
    """The listing's filters, all of them applying."""
    filters = _filters(postgresql)
    return and_(true(), *(filters[name] for name in sorted(wanted)))


def _ranges(
    wanted: frozenset[str],
    postgresql: bool,
    zone: ColumnElement[str],
    owner: ColumnElement[str],
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The caller's own images and other owners' public ones, both filtered."""
    conditions = _conditions(wanted, postgresql)
    own, others_public = visible_image_ranges(zone, owner)
    return own & conditions, others_public & conditions


def _total(
    wanted: frozenset[str],
    postgresql: bool,
    zone: ColumnElement[str],
    ranges: tuple[ColumnElement[bool], ColumnElement[bool]],
) -> ColumnElement[Any]:
    """The exact total: from public_image_counts where it answers the filters."""
    if postgresql and wanted <= _COUNTED_NAMES:
        return _counted_total(ranges[0], zone, wanted)
    return _total_of(ranges)


def _counted_total(
    own: ColumnElement[bool], zone: ColumnElement[str], wanted: frozenset[str]
) -> ColumnElement[Any]:
    """The caller's own images that are not public, counted, plus every public
    image of the zone that passes the filters, from public_image_counts."""
    own_private = select(func.count()).where(own, ~is_public()).scalar_subquery()
    return own_private + _counted_public(zone, wanted)


def _counted_public(zone: ColumnElement[str], wanted: frozenset[str]) -> ColumnElement[Any]:
    """Every public image of the zone that passes the filters, from public_image_counts."""
    filters = _counted_filters()
    counted = [PublicImageCount.zone == zone, *(filters[name] for name in sorted(wanted))]
    public = func.coalesce(func.sum(PublicImageCount.images), 0)
    return select(cast(public, BigInteger)).where(*counted).scalar_subquery()


def _total_of(ranges: Sequence[ColumnElement[bool]]) -> ColumnElement[Any]:
    """The sum of each range's count: the ranges are disjoint, so the sum is exact."""
    counts = [select(func.count()).where(where).scalar_subquery() for where in ranges]
    return sum(counts[1:], counts[0])


# The columns a page of images shows, in the API's order (api/pages.py writes them as read).
LISTED_IMAGE_COLUMNS = (
    "image_id",
    "image_name",
    "description",
    "size",
    "processor_type",
    "platform",
    "os_family",
    "visibility",
    "provider",
    "owner",
    "recommended_type",
    "status",
    "transition_status",
    "create_time",
    "status_time",
    "default_user",
    "default_passwd",
    "disk_format",
    "checksum",
    "checksum_algorithm",
)


def _page_of(ranges: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """Newest first: the first ``head`` (offset + limit) keys of each range,
    merged, then the ``limit`` rows after ``offset`` read in full by primary key."""
    newest_first = (Image.create_time.desc(), Image.image_id.desc())
    heads = [
        select(Image.image_id, Image.create_time)
        .where(where)
        .order_by(*newest_first)
        .limit(bindparam("head", type_=BigInteger))  # offset + limit may pass 2**31
        .subquery()
        for where in ranges
    ]
    keys = union_all(*(select(head.c.image_id, head.c.create_time) for head in heads)).subquery()
    page = (
        select(keys.c.image_id)
        .order_by(keys.c.create_time.desc(), keys.c.image_id.desc())
        .offset(bindparam("offset", type_=Integer))
        .limit(bindparam("limit", type_=Integer))
        .subquery()
    )
    return (
        select(*(Image.__table__.c[name] for name in LISTED_IMAGE_COLUMNS))
        .join(page, page.c.image_id == Image.image_id)
        .order_by(*newest_first)
    )


def size_in_gb(virtual_size: int) -> int:
    """Whole GB, rounded up, as the API reports ``size``."""
    return max(1, math.ceil(virtual_size / GIB)) if virtual_size else 0


SYSTEM_OWNER = "system"


@dataclass(frozen=True)
class SystemImageSpec:
    """An image the platform ships, as the operator describes it."""

    zone: str
    image_name: str
    os_family: str
    platform: str = "linux"
    processor_type: str = "64bit"
    default_user: str = "root"
    # The compute host whose workers read the operator's disk path.
    host: str = LOCAL_HOST


def import_image(session: Session, spec: SystemImageSpec, source: str) -> Capture:
    """Record a public system image, pending, and the job that copies ``source`` into the store.

    The job runs like a capture (its resources are the image and the source
    file), so a crash during an import is recovered like any other job. It
    runs on ``spec.host``, the compute host where ``source`` is readable.
    """
    require_host_name(spec.host)
    attributes = {
        "processor_type": spec.processor_type,
        "platform": spec.platform,
        "os_family": spec.os_family,
        "default_user": spec.default_user,
    }
    image = _new_image(
        spec.zone,
        SYSTEM_OWNER,
        spec.image_name,
        attributes,
        visibility=Visibility.PUBLIC,
        provider=Provider.SYSTEM,
    )
    session.add(image)
    session.flush()
    caller = Caller(SYSTEM_OWNER, spec.zone)
    resources = [image.image_id, source]
    job = new_job(session, caller, JobAction.IMPORT_IMAGE, resources, host=spec.host)
    return Capture(job, image)


def _new_image(
    zone: str,
    owner: str,
    image_name: str,
    attributes: dict[str, str],
    *,
    visibility: Visibility = Visibility.PRIVATE,
    provider: Provider = Provider.SELF,
    **values: object,
) -> Image:
    """The one builder of image rows: a pending image being created."""
    return new_row(
        Image,
        image_id=ids.image_id(),
        zone=zone,
        owner=owner,
        image_name=image_name,
        visibility=visibility.value,
        provider=provider.value,
        status=ImageStatus.PENDING.value,
        transition_status=TransitionStatus.CREATING.value,
        **attributes,
        **values,
    )
