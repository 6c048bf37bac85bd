"""The baseline: a bare aiohttp + asyncpg server running the same listing queries.

No authentication, no validation models, no ORM: it parses the query string,
runs the same count and page statements as ``models.images.list_images`` on
PostgreSQL (public images counted from ``public_image_counts``; a search's
public part remembered per generation of the zone's public images; an
unfiltered listing's public entries taken from the zone's catalogue, read and
rendered once per generation, as ``models.catalogue.PublicCatalogues``) and
``models.jobs.list_jobs`` (same shapes, same indexes) on pools of asyncpg
connections (the API's own pool, ``models.pool``: what pooling costs is not what
the ratio compares), and writes the JSON. It is what the API would cost if it
did nothing but talk to PostgreSQL. Run:
``python -m bench.bare_listing --dsn postgresql://... --port N``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from models.catalogue import (
    FILTERED_COLUMNS,
    MAX_CATALOGUED_PUBLIC,
    MAX_FILTERED_CATALOGUES,
    EntryFilter,
    PublicCatalogue,
    catalogued_attributes,
    entry_filter,
    listing_keys,
)
from models.pool import ConnectionPool
from models.states import JobPhase

CONNECT_TIMEOUT_S = 5.0

POOL = web.AppKey("pool", ConnectionPool)
# A search runs with custom plans, as the API's does (models/reads.py, Reads.run).
SEARCH_POOL = web.AppKey("search_pool", ConnectionPool)
OWNER = web.AppKey("owner", str)
# A search's public count per zone and filters, with the generation it was counted at.
PUBLIC_PARTS = web.AppKey("public_parts", dict)
# An unfiltered listing's public entries per zone, with their generation.
CATALOGUES = web.AppKey("catalogues", dict)
# The catalogues' views per zone, generation and filters (PublicCatalogues.filtered).
VIEWS = web.AppKey("views", dict)

IMAGE_COLUMNS = (
    "image_id, image_name, description, size, processor_type, platform, os_family, "
    "visibility, provider, owner, recommended_type, status, transition_status, create_time, "
    "status_time, default_user, default_passwd, disk_format, checksum, checksum_algorithm"
)
JOB_COLUMNS = (
    "job_id, action, status, progress, phase, create_time, begin_time, finished_time, "
    "status_time, "
    "zone, resource_ids, owner, error_code, error_message"
)


class Query:
    """A WHERE clause and its positional parameters, built up filter by filter."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


def _image_filters(query: Query, params: Any) -> tuple[str, str | None]:
    """The filters on images, and the same on public_image_counts (None if it cannot)."""
    parts, counted = [], []
    ids = _listed(params, "images")
    if ids:
        parts.append(f"image_id = ANY({query.arg(ids)})")
    for column in ("processor_type", "provider"):
        if value := params.get(column):
            parts.append(f"{column} = {query.arg(value)}")
            counted.append(parts[-1])
    if visibility := params.get("visibility"):
        arg = query.arg(visibility)
        parts.append(f"visibility = {arg}")
        counted.append(f"'public' = {arg}")
    if os_family := params.get("os_family"):
        arg = query.arg(os_family.lower())
        parts.append(f"lower(os_family) = {arg}")
        counted.append(f"os_family = {arg}")
    if statuses := _listed(params, "status"):
        parts.append(f"status = ANY({query.arg(statuses)})")
        counted.append(parts[-1])
    elif not ids:
        parts.append("status <> 'ceased'")
        counted.append(parts[-1])
    word = params.get("search_word")
    if word:
        pattern = query.arg(word.lower().replace("/", "//").replace("%", "/%").replace("_", "/_"))
        parts.append(
            f"(lower(image_id) LIKE '%' || {pattern} || '%' ESCAPE '/' "
            f"OR lower(image_name) LIKE '%' || {pattern} || '%' ESCAPE '/')"
        )
    images = "".join(f" AND {part}" for part in parts)
    return images, None if ids or word else "".join(f" AND {part}" for part in counted)


def _listed(params: Any, name: str) -> list[str]:
    return [part for value in params.getall(name, []) for part in value.split(",") if part]


# As models.images.MAX_REMEMBERED_HEAD.
MAX_REMEMBERED_HEAD = 200
NEWEST = "ORDER BY create_time DESC, image_id DESC"


def _search_parts(zone_arg: str, own: str, public: str, head: int) -> tuple[str, str]:
    """As models.images._bearer_search_parts: the generation and the caller's own
    images that are not public; the same with the public images counted and, for a
    short page, the first ``head`` of their ids."""
    generation = (
        f"coalesce((SELECT generation FROM public_image_generations WHERE zone = {zone_arg}), 0)"
    )
    own_part = f"(SELECT count(*) FROM images WHERE {own} AND visibility <> 'public')"
    public_part = f"(SELECT count(*) FROM images WHERE {public})"
    public_head = "NULL"
    if head <= MAX_REMEMBERED_HEAD:
        public_head = (
            "(SELECT array_agg(image_id) FROM (SELECT image_id FROM images "
            f"WHERE {public} {NEWEST} LIMIT {head}) h)"
        )
    return (
        f"SELECT {generation}, {own_part}",
        f"SELECT {generation}, {own_part}, {public_part}, {public_head}",
    )


def _image_statements(zone: str, owner: str, params: Any) -> tuple[str, str, list[Any]]:
    query = Query()
    wanted, counted = _image_filters(query, params)
    zone_arg, owner_arg = query.arg(zone), query.arg(owner)
    own = f"zone = {zone_arg} AND owner = {owner_arg}{wanted}"
    public = f"zone = {zone_arg} AND visibility = 'public' AND owner <> {owner_arg}{wanted}"
    offset, limit = int(params.get("offset", 0)), min(int(params.get("limit", 10)), 100)
    head, off, lim = query.arg(offset + limit), query.arg(offset), query.arg(limit)
    count = (
        f"SELECT (SELECT count(*) FROM images WHERE {own}) "
        f"+ (SELECT count(*) FROM images WHERE {public})"
    )
    if counted is not None:  # as models.images._counted_total
        count = (
            f"SELECT (SELECT count(*) FROM images WHERE {own} AND visibility <> 'public') "
            "+ (SELECT CAST(coalesce(sum(images), 0) AS bigint) FROM public_image_counts "
            f"WHERE zone = {zone_arg}{counted})"
        )
    newest = NEWEST
    if params.get("search_word"):
        every_public = f"zone = {zone_arg} AND visibility = 'public'{wanted}"
        count = "\n".join(_search_parts(zone_arg, own, every_public, offset + limit))
        if offset + limit <= MAX_REMEMBERED_HEAD:  # the page on the remembered public keys
            own = f"{own} AND visibility <> 'public'"
            public = f"image_id = ANY(${len(query.args) + 1}) AND {every_public}"
    page = (
        f"SELECT {IMAGE_COLUMNS} FROM images JOIN (SELECT k.image_id FROM ("
        f"SELECT * FROM (SELECT image_id, create_time FROM images WHERE {own} {newest} "
        f"LIMIT {head}) a UNION ALL "
        f"SELECT * FROM (SELECT image_id, create_time FROM images WHERE {public} {newest} "
        f"LIMIT {head}) b) k ORDER BY k.create_time DESC, k.image_id DESC "
        f"LIMIT {lim} OFFSET {off}) p USING (image_id) {newest}"
    )
    return count, page, query.args


async def _page_within(
    connection: asyncpg.Connection,
    total: int,
    page: str,
    args: list[Any],
    offset: int,
    limit: int,
) -> list[asyncpg.Record]:
    """The page, unless it is past the total or empty: then no statement, as the
    API does (models/reads.py)."""
    if offset >= total or not limit:
        return []
    rows: list[asyncpg.Record] = await connection.fetch(page, *args)
    return rows


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _image_out(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["create_time"], out["status_time"] = _iso(row["create_time"]), _iso(row["status_time"])
    return out


# As models.images.catalogued_listing: the catalogue is every public image not hidden.
CATALOGUE = (
    f"SELECT {IMAGE_COLUMNS} FROM images WHERE zone = $1 AND visibility = 'public' "
    f"AND status <> 'ceased' {NEWEST}"
)
HIDDEN = frozenset({"ceased"})


@dataclass(frozen=True)
class Catalogued:
    """The statements of a listing on the catalogue, for one set of filters, and
    their positional values: the zone's and the owner's come after the filters'."""

    first: str
    first_with_keys: str
    own_head: str
    own_rows: str
    args: list[Any]


def _catalogued(zone: str, owner: str, params: Any, filtered: bool) -> Catalogued:
    """As models.images.catalogued_listing(wanted): the generation, the caller's own
    part, the public part counted for the filters and, if ``filtered``, for the
    whole catalogue (else the same: counted once)."""
    query = Query()
    wanted, counted = _image_filters(query, params)
    zone_arg, owner_arg = query.arg(zone), query.arg(owner)
    own = f"zone = {zone_arg} AND owner = {owner_arg} AND visibility <> 'public'{wanted}"
    first = (
        "SELECT coalesce((SELECT generation FROM public_image_generations "
        f"WHERE zone = {zone_arg}), 0), (SELECT count(*) FROM images WHERE {own}), "
        "(SELECT CAST(coalesce(sum(images), 0) AS bigint) FROM public_image_counts "
        f"WHERE zone = {zone_arg}{counted})"
    )
    if filtered:
        first += (
            ", (SELECT CAST(coalesce(sum(images), 0) AS bigint) FROM public_image_counts "
            f"WHERE zone = {zone_arg} AND status <> 'ceased')"
        )
    more = f"${len(query.args) + 1}"  # the head, or the own ids
    keys = (
        "SELECT array_agg(micros ORDER BY micros DESC, image_id DESC), "
        "array_agg(image_id ORDER BY micros DESC, image_id DESC) FROM ("
        "SELECT CAST(extract(epoch FROM create_time) * 1000000 AS bigint) AS micros, image_id "
        f"FROM images WHERE {own} {NEWEST} LIMIT {more}) AS own_head"
    )
    return Catalogued(
        first,
        f"{first}, own_keys.* FROM ({keys}) AS own_keys",
        f"SELECT {IMAGE_COLUMNS} FROM images WHERE {own} {NEWEST} LIMIT {more}",
        f"SELECT {IMAGE_COLUMNS} FROM images WHERE {own} AND image_id = ANY({more})",
        query.args,
    )


def _entry_filter(params: Any) -> EntryFilter | None:
    """What the listing keeps of the catalogue, as the API's (models.catalogue.entry_filter)."""
    known = {"offset", "limit", "status", *FILTERED_COLUMNS}
    if not set(params.keys()) <= known:
        return None
    values: dict[str, Any] = {name: params[name] for name in params if name in FILTERED_COLUMNS}
    if "os_family" in values:
        values["os_family"] = values["os_family"].lower()
    if "status" in values:
        values["status"] = _listed(params, "status")
    wanted = frozenset(values) | ({"hidden"} if "status" not in values else set())
    return entry_filter(wanted, values, HIDDEN)


async def list_catalogued_images(
    request: web.Request, zone: str, keep: EntryFilter
) -> web.Response:
    """The public entries from the zone's catalogue (read and rendered once per
    generation; filtered once per generation and filters), the caller's own keys
    and own rows in the page: the API's statements."""
    owner = request.app[OWNER]
    offset = int(request.query.get("offset", 0))
    limit = min(int(request.query.get("limit", 10)), 100)
    statements = _catalogued(zone, owner, request.query, filtered=bool(keep))
    async with request.app[POOL].acquire() as connection:
        if offset:  # the own keys with the counts, as the API's first_with_keys
            first = await connection.fetchrow(
                statements.first_with_keys, *statements.args, offset + limit
            )
        else:
            first = await connection.fetchrow(statements.first, *statements.args)
        generation, own, public = first[0], first[1], first[2]
        catalogued = first[3] if keep else public
        total = own + public
        entries: list[bytes] = []
        if offset < total and limit:
            catalogue = await _catalogue(request, connection, zone, generation, catalogued)
            if catalogue is not None and keep:
                catalogue = _filtered(request, zone, catalogue, keep, public)
            if catalogue is None or len(catalogue.rendered) != public:
                _, page, args = _image_statements(zone, owner, request.query)
                rows = await connection.fetch(page, *args)
                entries = [_image_json(row) for row in rows]
            else:
                own_keys = (
                    list(zip(first[-2] or (), first[-1] or (), strict=True)) if offset else None
                )
                entries = await _own_and_public(
                    connection, catalogue, statements, own, own_keys, offset, limit
                )
    body = b'{"images":[' + b",".join(entries) + b'],"total_count":' + b"%d}" % total
    return web.Response(body=body, content_type="application/json")


async def _catalogue(
    request: web.Request, connection: asyncpg.Connection, zone: str, generation: int, public: int
) -> PublicCatalogue | None:
    known = request.app[CATALOGUES].get(zone)
    if known is not None and known.generation == generation:
        return known if len(known.rendered) == public else None
    if public > MAX_CATALOGUED_PUBLIC:
        return None
    rows = await connection.fetch(CATALOGUE, zone)
    if len(rows) != public:
        return None
    keys = listing_keys(rows)[::-1]
    rendered = [_image_json(row) for row in rows]
    catalogue = PublicCatalogue(generation, rendered, keys, catalogued_attributes(rows))
    request.app[CATALOGUES][zone] = catalogue
    return catalogue


def _filtered(
    request: web.Request, zone: str, catalogue: PublicCatalogue, keep: EntryFilter, public: int
) -> PublicCatalogue:
    """The view of the filters, once per generation (as PublicCatalogues.filtered)."""
    if not public:
        return PublicCatalogue.empty(catalogue.generation)
    views = request.app[VIEWS]
    key = (zone, catalogue.generation, keep)
    if key not in views:
        if len(views) >= MAX_FILTERED_CATALOGUES:
            views.pop(next(iter(views)))
        views[key] = catalogue.only(keep)
    view: PublicCatalogue = views[key]
    return view


async def _own_and_public(
    connection: asyncpg.Connection,
    catalogue: PublicCatalogue,
    statements: Catalogued,
    own: int,
    own_keys: list[tuple[int, str]] | None,
    offset: int,
    limit: int,
) -> list[bytes]:
    args = statements.args
    if own_keys is None:  # a first page: its own rows in full, in one statement
        head = min(limit, own)
        read = await connection.fetch(statements.own_head, *args, head) if own else []
        rows = {row["image_id"]: row for row in read}
        window = catalogue.window(listing_keys(read), offset, limit)
    else:  # past it: the own rows in the page, by primary key
        window = catalogue.window(own_keys, offset, limit)
        own_ids = [entry for entry in window if isinstance(entry, str)]
        rows = {}
        if own_ids:
            read = await connection.fetch(statements.own_rows, *args, own_ids)
            rows = {row["image_id"]: row for row in read}
    return [
        catalogue.rendered[entry] if isinstance(entry, int) else _image_json(rows[entry])
        for entry in window
        if isinstance(entry, int) or entry in rows
    ]


def _image_json(row: asyncpg.Record) -> bytes:
    return json.dumps(_image_out(row)).encode()


async def list_images(request: web.Request) -> web.Response:
    keep = _entry_filter(request.query)
    if keep is not None:
        return await list_catalogued_images(request, request.match_info["zone"], keep)
    owner = request.app[OWNER]
    count, page, args = _image_statements(request.match_info["zone"], owner, request.query)
    pool = request.app[SEARCH_POOL if request.query.get("search_word") else POOL]
    async with pool.acquire() as connection:
        if request.query.get("search_word"):
            total, head = await _search_total(request, connection, count, args[:-3])
            if head is not None:
                args = [*args, head]
        else:
            total = await connection.fetchval(count, *args[:-3])
        offset, limit = (
            int(request.query.get("offset", 0)),
            min(int(request.query.get("limit", 10)), 100),
        )
        rows = await _page_within(connection, total, page, args, offset, limit)
    body = {"images": [_image_out(row) for row in rows], "total_count": total}
    return web.json_response(text=json.dumps(body))


async def _search_total(
    request: web.Request, connection: asyncpg.Connection, count: str, args: list[Any]
) -> tuple[int, list[str] | None]:
    """The own part now, the public part (its count, and the ids a short page
    starts from) remembered while the generation holds."""
    own_only, counted = count.split("\n")
    parts = request.app[PUBLIC_PARTS]
    filters = sorted((k, v) for k, v in request.query.items() if k not in ("offset", "limit"))
    key = (request.match_info["zone"], tuple(filters), counted)
    known = parts.get(key)
    if known is not None:
        generation, own = await connection.fetchrow(own_only, *args)
        if generation == known[0]:
            return int(own + known[1]), known[2]
    generation, own, public, head = await connection.fetchrow(counted, *args)
    if "array_agg" in counted:
        head = head or []
    parts[key] = (generation, public, head)
    return int(own + public), head


def _job_out(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for key in ("create_time", "begin_time", "finished_time", "status_time"):
        out[key] = _iso(row[key])
    out["resource_ids"] = json.loads(row["resource_ids"])
    out["phase"] = JobPhase.of(row["status"], row["phase"], row["action"]).value
    code, message = out.pop("error_code"), out.pop("error_message")
    out["error"] = {"code": code, "message": message or ""} if code else None
    return out


async def list_jobs(request: web.Request) -> web.Response:
    query = Query()
    zone, owner = query.arg(request.match_info["zone"]), query.arg(request.app[OWNER])
    where = f"zone = {zone} AND owner = {owner}"
    if statuses := _listed(request.query, "status"):
        where += f" AND status = ANY({query.arg(statuses)})"
    offset, limit = (
        int(request.query.get("offset", 0)),
        min(int(request.query.get("limit", 10)), 100),
    )
    count = f"SELECT count(*) FROM jobs WHERE {where}"
    page = (
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY create_time DESC, job_id DESC "
        f"LIMIT {query.arg(limit)} OFFSET {query.arg(offset)}"
    )
    async with request.app[POOL].acquire() as connection:
        total = await connection.fetchval(count, *query.args[:-2])
        rows = await _page_within(connection, total, page, query.args, offset, limit)
    body = {"jobs": [_job_out(row) for row in rows], "total_count": total}
    return web.json_response(text=json.dumps(body))


def create_app(dsn: str, owner: str) -> web.Application:
    """The bare server, listing as ``owner`` (it does not authenticate)."""

    async def pool(app: web.Application) -> AsyncIterator[None]:
        # The API's pools (models/pool.py): asyncpg's own costs a proxy and a task per
        # checkout, a reset query per release unless told otherwise, and an idle timer;
        # the baseline pays for its statements, no more, and the same for its pools.
        app[POOL] = ConnectionPool(dsn, 10, connect_timeout=CONNECT_TIMEOUT_S)
        app[SEARCH_POOL] = ConnectionPool(
            dsn,
            4,
            connect_timeout=CONNECT_TIMEOUT_S,
            server_settings={"plan_cache_mode": "force_custom_plan"},
        )
        yield
        await app[POOL].close()
        await app[SEARCH_POOL].close()

    app = web.Application()
    app[OWNER] = owner
    app[PUBLIC_PARTS] = {}
    app[CATALOGUES] = {}
    app[VIEWS] = {}
    app.cleanup_ctx.append(pool)
    app.router.add_get("/v2/zone/{zone}/images", list_images)
    app.router.add_get("/v2/zone/{zone}/jobs", list_jobs)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(args.dsn, args.owner), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
