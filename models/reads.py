"""Read-only statements awaited on the event loop: the path of the API's listings.

The listings' statements are SQLAlchemy Core, built once per set of filters
(models/images.py, models/jobs.py). On PostgreSQL they run on asyncpg, on the
API's event loop: each is compiled once to asyncpg's SQL and then only bound,
with no thread hop, no ORM and no pre-ping round trip; a connection that died
with a PostgreSQL restart is replaced and the statement run once more. SQLite,
the embedded default, runs them through the synchronous :class:`Database` in a
thread. Both return rows that read by attribute and by name.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import asyncpg
from sqlalchemy import Executable, Select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.sql.compiler import SQLCompiler

from models.accounts import bearer_account
from models.catalogue import (
    CataloguedListing,
    EntryFilter,
    ListingKey,
    PublicCatalogue,
    PublicCatalogues,
    Render,
    listing_keys,
)
from models.db import Database
from models.errors import ServiceUnavailable
from models.pool import ConnectionPool

log = logging.getLogger(__name__)
R = TypeVar("R")

CONNECT_TIMEOUT_S = 5
POOL_SIZE = 10
CUSTOM_PLANS_POOL_SIZE = 4
# How the read path's sessions show in pg_stat_activity.
APPLICATION_NAME = "imagesvc-reads"
MAX_COMPILED = 1024
MAX_PUBLIC_TOTALS = 1024
# A connection the server closed (restart, admin shutdown) or could not open: the
# statement is run once more on a fresh connection, then the request gets a 503.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    # A session terminated while idle in the pool: asyncpg notices on its next use,
    # in whatever state the server's goodbye left the protocol.
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True)
class Listing:
    """A listing's two statements, its exact total and its page, and their values."""

    total: Select[Any]
    page: Select[Any]
    values: dict[str, Any]


@dataclass(frozen=True)
class Listed:
    """What was read for the account a bearer token stands for: that account, rows,
    total; or, instead of rows, the page's entries already rendered (``rendered``,
    by the renderer the listing was given: catalogue.PublicCatalogues)."""

    account_id: str
    rows: Sequence[Any]
    total: int
    rendered: Sequence[bytes] | None = None


@dataclass(frozen=True)
class PublicPart:
    """What a search read of the public images at one generation: how many match,
    and the first ``head`` of their ids (None when the page reads them itself)."""

    generation: int
    count: int
    head: list[str] | None


class PublicTotals:
    """The public part of search totals this process has counted, each with the
    generation of its zone's public images it was counted at (migration 0012).

    A part is reused only with a statement that reads the same generation: every
    change to a public image bumps it in the changing transaction, so the same
    generation means the same public images, and the total stays exact. Bounded:
    the part used least recently goes first.
    """

    def __init__(self, size: int = MAX_PUBLIC_TOTALS) -> None:
        self._size = size
        self._parts: OrderedDict[Hashable, PublicPart] = OrderedDict()

    def get(self, key: Hashable) -> PublicPart | None:
        """The part remembered for ``key``, if any."""
        part = self._parts.get(key)
        if part is not None:
            self._parts.move_to_end(key)
        return part

    def remember(self, key: Hashable, part: PublicPart) -> None:
        self._parts[key] = part
        self._parts.move_to_end(key)
        if len(self._parts) > self._size:
            self._parts.popitem(last=False)


@dataclass(frozen=True)
class RememberedPublicTotal:
    """A listing's first statement in two forms, for totals whose public part is
    remembered (:class:`PublicTotals`) under ``key``.

    Both read the token's row (accounts.BEARER), the zone's ``generation`` and
    ``own``, the caller's own images that are not public; ``counted`` also counts
    ``public``, every public image of the zone that passes the filters, and with
    a ``page`` of its own lists the first of them (``public_head``), which that
    page takes as a parameter.
    """

    key: Hashable
    own: Executable
    counted: Executable
    page: Executable | None = None


class ReadConnection(ABC):
    """One connection of a :class:`Reads`: runs read-only statements with named values;
    rows read as ``row.column`` (and ``row._mapping``, as SQLAlchemy's rows do)."""

    @abstractmethod
    def fetch(self, statement: Executable, values: Mapping[str, Any]) -> Awaitable[Sequence[Any]]:
        """Every row of ``statement``."""

    def fetch_one(self, statement: Executable, values: Mapping[str, Any]) -> Awaitable[Any]:
        """The first row of ``statement``, or None."""
        return _first(self.fetch(statement, values))


async def _first(rows: Awaitable[Sequence[Any]]) -> Any:
    read = await rows
    return read[0] if read else None


class Reads(ABC):
    """Where the API's read-only statements run."""

    dialect_name: str
    # The public parts of totals counted on this database (searches on PostgreSQL).
    public_totals: PublicTotals
    # The zones' public images, rendered, for unfiltered listings (PostgreSQL).
    public_catalogues: PublicCatalogues

    @abstractmethod
    async def open(self) -> None:
        """Get ready on the running event loop (the API's startup)."""

    @abstractmethod
    async def close(self) -> None:
        """Let go of the connections (the API's cleanup)."""

    @abstractmethod
    async def run(
        self, read: Callable[[ReadConnection], Awaitable[R]], *, custom_plans: bool = False
    ) -> R:
        """``read(connection)``: reads only, so it may be run twice.

        ``custom_plans``: PostgreSQL plans each statement for its values, never
        reusing a generic plan. A substring search needs it: the generic plan of
        ``LIKE $1`` guesses a rare word and reads every public image's heap page
        through the trigram index (10,017 buffers for a common word at 1,000,000
        images, against 174 for its custom plan: docs/query-plans.md); other
        listings keep the planning time that generic plans save."""


class ThreadReads(Reads):
    """The synchronous :class:`Database`, in a thread: SQLite's path."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.dialect_name = database.engine.dialect.name
        self.public_totals = PublicTotals()
        self.public_catalogues = PublicCatalogues()

    async def open(self) -> None:
        return None  # the Database's own pool, opened on first use

    async def close(self) -> None:
        return None  # closed with the Database

    async def run(
        self, read: Callable[[ReadConnection], Awaitable[R]], *, custom_plans: bool = False
    ) -> R:
        return await read(_ThreadConnection(self.database))


class _ThreadConnection(ReadConnection):
    def __init__(self, database: Database) -> None:
        self.database = database

    def fetch(self, statement: Executable, values: Mapping[str, Any]) -> Awaitable[Sequence[Any]]:
        return asyncio.to_thread(self._fetch, statement, values)

    def _fetch(self, statement: Executable, values: Mapping[str, Any]) -> Sequence[Any]:
        with self.database.reading() as session:
            return list(session.execute(statement, dict(values)))


class Record(asyncpg.Record):  # type: ignore[misc]
    """An asyncpg row that also reads as SQLAlchemy's rows do: by attribute, and
    as a mapping through ``_mapping``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> Record:
        return self


class AsyncpgReads(Reads):
    """asyncpg on the event loop, statements compiled once: PostgreSQL's path."""

    dialect_name = "postgresql"

    def __init__(self, url: str) -> None:
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._pools: dict[bool, ConnectionPool] = {}
        self._compiler = AsyncpgCompiler()
        self.public_totals = PublicTotals()
        self.public_catalogues = PublicCatalogues()

    async def open(self) -> None:
        for custom_plans, size in ((False, POOL_SIZE), (True, CUSTOM_PLANS_POOL_SIZE)):
            settings = {"application_name": APPLICATION_NAME}
            if custom_plans:
                settings["plan_cache_mode"] = "force_custom_plan"
            # Connections are opened when first needed: the API starts (and answers 503) while
            # PostgreSQL is down.
            self._pools[custom_plans] = ConnectionPool(
                self.dsn,
                size,
                connect_timeout=CONNECT_TIMEOUT_S,
                server_settings=settings,
                init=_decode_json,
                record_class=Record,
            )

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    async def run(
        self, read: Callable[[ReadConnection], Awaitable[R]], *, custom_plans: bool = False
    ) -> R:
        """``read`` on one pooled connection; once more on a new one if the first was lost."""
        pool = self._pools[custom_plans]
        try:
            return await self._run(pool, read)
        except _CONNECTION_LOST as lost:
            log.info("database connection lost (%s); once more on a new one", type(lost).__name__)
            for each in self._pools.values():
                each.expire_connections()
        try:
            return await self._run(pool, read)
        except _CONNECTION_LOST as lost:
            log.warning("database unavailable: %s", lost)
            raise ServiceUnavailable("the database is unavailable") from None

    async def _run(self, pool: ConnectionPool, read: Callable[[ReadConnection], Awaitable[R]]) -> R:
        async with pool.acquire() as connection:
            return await read(_AsyncpgConnection(connection, self._compiler))


class _AsyncpgConnection(ReadConnection):
    def __init__(self, connection: asyncpg.Connection, compiler: AsyncpgCompiler) -> None:
        self.connection = connection
        self.compiler = compiler

    # Plain functions that return asyncpg's awaitable: a coroutine of ours around it
    # would be one more frame to resume when the rows arrive.
    def fetch(self, statement: Executable, values: Mapping[str, Any]) -> Awaitable[Sequence[Any]]:
        sql, args = self.compiler.bind(statement, values)
        rows: Awaitable[Sequence[Any]] = self.connection.fetch(sql, *args)
        return rows

    def fetch_one(self, statement: Executable, values: Mapping[str, Any]) -> Awaitable[Any]:
        sql, args = self.compiler.bind(statement, values)
        row: Awaitable[Any] = self.connection.fetchrow(sql, *args)
        return row


class AsyncpgCompiler:
    """asyncpg's SQL for each statement, compiled once: listings and write units build
    their statements once (per set of filters), so a request's compile is a lookup.

    The listings bind lists as arrays (``= ANY``), so that one plan serves every
    length: their compiler refuses expanding parameters. The write path's
    (``expanding=True``) renders a list of ids (``IN``) per call from the compiled
    form, as SQLAlchemy does.
    """

    def __init__(self, *, expanding: bool = False) -> None:
        self._dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]
        self._expanding = expanding
        self._compiled: dict[int, tuple[Executable, SQLCompiler]] = {}
        self._plans: dict[int, _BindPlan | None] = {}

    def bind(self, statement: Executable, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """The SQL of ``statement`` and its positional arguments from ``values``."""
        compiled = self._compile(statement)
        plan = self._plans.get(id(compiled))
        if plan is not None:
            arguments = plan.arguments(values)
            if arguments is not None:
                return compiled.string, arguments
        bound = compiled.construct_params(dict(values))
        if compiled.post_compile_params:
            expanded = compiled.construct_expanded_state(bound)
            return expanded.statement, list(expanded.positional_parameters)
        return compiled.string, [bound[name] for name in compiled.positiontup or ()]

    def _compile(self, statement: Executable) -> SQLCompiler:
        known = self._compiled.get(id(statement))
        if known is not None and known[0] is statement:
            return known[1]
        compiled = cast(SQLCompiler, statement.compile(dialect=self._dialect))  # type: ignore[attr-defined]
        if compiled.post_compile_params and not self._expanding:
            raise ValueError("expanding parameters: bind lists as arrays (= ANY) on PostgreSQL")
        if len(self._compiled) >= MAX_COMPILED:  # statements built per call: keep a bound
            self._compiled.clear()
            self._plans.clear()
        self._compiled[id(statement)] = (statement, compiled)
        self._plans[id(compiled)] = _BindPlan.of(compiled)
        return compiled


@dataclass(frozen=True)
class _BindPlan:
    """Where each positional argument of a compiled statement comes from, as
    SQLCompiler.construct_params finds it (the value under the parameter's key, or
    under its name, or the parameter's own value), without building the dict of
    every parameter on each call: a statement per request, one to three per page."""

    positions: tuple[tuple[str, str, bool, Any], ...]  # key, name, required, own value

    @classmethod
    def of(cls, compiled: SQLCompiler) -> _BindPlan | None:
        """None for what construct_params does more for: lists, escaped names,
        callables, two parameters of one name but of different keys or values."""
        if compiled.post_compile_params or compiled.escaped_bind_names:
            return None
        by_name: dict[str, tuple[str, str, bool, Any]] = {}
        for parameter, name in compiled.bind_names.items():
            if parameter.callable is not None:
                return None
            source = (parameter.key, name, bool(parameter.required), parameter.value)
            if by_name.setdefault(name, source) != source:
                return None
        return cls(tuple(by_name[name] for name in compiled.positiontup or ()))

    def arguments(self, values: Mapping[str, Any]) -> list[Any] | None:
        """The positional arguments; None if one is required and missing (the slow
        path then raises SQLAlchemy's own error)."""
        arguments = []
        for key, name, required, value in self.positions:
            if key in values:
                arguments.append(values[key])
            elif name in values:
                arguments.append(values[name])
            elif required:
                return None
            else:
                arguments.append(value)
        return arguments


async def _decode_json(connection: asyncpg.Connection) -> None:
    """JSON columns come back as Python values, as SQLAlchemy's JSON type gives them."""
    await connection.set_type_codec(
        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def listed_as_bearer(
    reads: Reads,
    digest: str,
    first: Executable | RememberedPublicTotal,
    page: Executable,
    values: Mapping[str, Any],
    *,
    custom_plans: bool = False,
) -> Listed:
    """A listing for the account of the bearer token whose digest is ``digest``, on
    one connection: ``first`` reads the token's row (accounts.BEARER) and the
    ``total`` (or its parts, :class:`RememberedPublicTotal`), then ``page`` the
    rows, with the account bound as ``owner``; not when ``offset`` is past the
    total (an offset still has to pass over every entry before it, 8,657 of them
    at 1,000,000 images for offset=10000).

    AuthenticationFailed if the token is unknown, expired or its account
    disabled: read now, never cached, so a revocation takes effect at once.
    """
    bound = {**values, "digest": digest}

    async def read(connection: ReadConnection) -> Listed:
        listed_page, page_values = page, {**values}
        if isinstance(first, RememberedPublicTotal):
            account_id, own, part = await _remembered_part(
                reads.public_totals, connection, first, bound
            )
            total = own + part.count
            if first.page is not None:
                listed_page, page_values["public_head"] = first.page, part.head or []
        else:
            row = await connection.fetch_one(first, bound)
            account_id, total = bearer_account(row, digest), int(row._mapping["total"])
        if values["offset"] >= total or not values["limit"]:
            return Listed(account_id, [], total)  # past the exact total: nothing to read
        rows = await connection.fetch(listed_page, {**page_values, "owner": account_id})
        return Listed(account_id, rows, total)

    return await reads.run(read, custom_plans=custom_plans)


def listed_from_catalogue(
    reads: Reads,
    digest: str,
    statements: CataloguedListing,
    page: Executable,
    values: Mapping[str, Any],
    render: Render,
    keep: EntryFilter = (),
) -> Awaitable[Listed]:
    """A listing for the account of the bearer token whose digest is ``digest``
    (as :func:`listed_as_bearer`), its public entries from the zone's catalogue
    at the generation ``statements.first`` reads, rendered with ``render``, or
    those ``keep`` keeps of them (a filtered listing, whose ``first`` also counts
    the whole catalogue, ``catalogued``); ``page``'s rows when there is no such
    catalogue to be had, or when its view of the filters holds another number of
    images than PostgreSQL counts for them (public_image_counts)."""
    bound = {**values, "digest": digest}
    catalogues = reads.public_catalogues

    past_first_page = bool(values["offset"])  # reads the own keys in ``first`` too
    first = statements.first_with_keys if past_first_page else statements.first

    async def read(connection: ReadConnection) -> Listed:
        row = await connection.fetch_one(first, bound)
        account_id = bearer_account(row, digest)
        counted = row._mapping  # by name: an attribute is a Python call per field
        own, public = int(counted["own"]), int(counted["public"])
        total = own + public
        if values["offset"] >= total or not values["limit"]:
            return Listed(account_id, [], total)  # past the exact total: nothing to read
        owned = {**values, "owner": account_id, "generation": int(counted["generation"])}
        catalogued = int(counted["catalogued"]) if keep else public
        catalogue = await catalogues.at_generation(
            connection, statements.catalogue, owned, catalogued, render
        )
        if catalogue is not None:
            catalogue = catalogues.filtered(values["zone"], catalogue, keep, public)
        if catalogue is None or len(catalogue.rendered) != public:
            return Listed(account_id, await connection.fetch(page, owned), total)
        own_keys = _own_keys(row) if past_first_page else None
        entries = await _page_on(connection, statements, catalogue, owned, own, own_keys, render)
        return Listed(account_id, [], total, entries)

    return reads.run(read)


async def _page_on(
    connection: ReadConnection,
    statements: CataloguedListing,
    catalogue: PublicCatalogue,
    values: Mapping[str, Any],
    own: int,
    own_keys: list[ListingKey] | None,
    render: Render,
) -> list[bytes]:
    """The page's entries: the caller's own part merged with the catalogue's, own
    rows rendered now. A first page (``own_keys`` None) reads the own rows it may
    show in full, no more than ``limit`` of them; a page past it has the keys of
    the caller's first ``head`` own images (read with the token) and reads only
    the own rows that fall in it, by primary key (docs/listing-profile.md, round 5)."""
    offset, limit = values["offset"], values["limit"]
    if own_keys is None:
        own_keys, rows = await _first_own_rows(connection, statements, values, own)
        window = catalogue.window(own_keys, offset, limit)
    else:
        window = catalogue.window(own_keys, offset, limit)
        rows = await _own_rows(connection, statements, values, window)
    return [
        catalogue.rendered[entry] if isinstance(entry, int) else render(rows[entry])
        for entry in window
        if isinstance(entry, int) or entry in rows
    ]


async def _first_own_rows(
    connection: ReadConnection,
    statements: CataloguedListing,
    values: Mapping[str, Any],
    own: int,
) -> tuple[list[ListingKey], dict[str, Any]]:
    """The caller's first ``head`` own rows (a first page's ``limit``; at most
    ``own``), in full, in one statement: no more rows than the page statement reads."""
    if not own:
        return [], {}
    read = await connection.fetch(statements.own_head, {**values, "head": min(values["head"], own)})
    # By name, not attribute: Record's __getattr__ is a Python call per field.
    return listing_keys(read), {row["image_id"]: row for row in read}


def _own_keys(first: Any) -> list[ListingKey]:
    """The own listing keys a ``first_with_keys`` row read (none: two NULL arrays)."""
    return list(zip(first["own_key_micros"] or (), first["own_key_ids"] or (), strict=True))


async def _own_rows(
    connection: ReadConnection,
    statements: CataloguedListing,
    values: Mapping[str, Any],
    window: Sequence[str | int],
) -> dict[str, Any]:
    """The own rows that fall in the page, by primary key, if still the caller's
    (one changed since stays out)."""
    own_ids = [entry for entry in window if isinstance(entry, str)]
    if not own_ids:
        return {}
    read = await connection.fetch(statements.own_rows, {**values, "own_ids": own_ids})
    return {row["image_id"]: row for row in read}


async def _remembered_part(
    known: PublicTotals,
    connection: ReadConnection,
    first: RememberedPublicTotal,
    values: Mapping[str, Any],
) -> tuple[str, int, PublicPart]:
    """The bearer's account, the caller's own part of the total counted now, and
    the public part: remembered if the generation read with the own part is the
    one it was read at, else read now (and remembered) in a second statement."""
    part = known.get(first.key)
    if part is not None:
        row = await connection.fetch_one(first.own, values)
        account_id = bearer_account(row, values["digest"])
        if row.generation == part.generation:
            return account_id, int(row.own), part
    row = await connection.fetch_one(first.counted, values)
    account_id = bearer_account(row, values["digest"])
    head = list(row.public_head or ()) if first.page is not None else None
    part = PublicPart(int(row.generation), int(row.public), head)
    known.remember(first.key, part)
    return account_id, int(row.own), part


def reads_for(database: Database) -> Reads:
    """The read path for ``database``'s backend."""
    if database.engine.dialect.name == "postgresql":
        return AsyncpgReads(database.url)
    return ThreadReads(database)


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` says the connection is gone (a restart, an admin shutdown),
    so that what it interrupted may be run once more on a new one."""
    return isinstance(error, _CONNECTION_LOST)


async def decode_json(connection: asyncpg.Connection) -> None:
    """JSON columns read and written as Python values (the write path's connections too)."""
    await _decode_json(connection)
