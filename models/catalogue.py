"""Each zone's public catalogue: its public, not hidden images at one generation of
them (migration 0012), in listing order, each with its page entry already written,
and the views of it that filtered listings take (models/reads.py reads the
caller's own part and merges it with them; docs/listing-profile.md, rounds 3 and 4).
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Executable, Select

if TYPE_CHECKING:
    from models.reads import ReadConnection

# A zone's public catalogue (PublicCatalogues) is built only below this many public
# images: 50,000 rendered images are about 50 MB per API process, and a build reads
# them all once per generation; a larger zone keeps the page statement.
MAX_CATALOGUED_PUBLIC = 50_000
# Filtered views of catalogues (PublicCatalogues.filtered) kept per process: each is
# a list of references into its catalogue, 80 KB per 10,000 entries.
MAX_FILTERED_CATALOGUES = 64

# Renders one row of a page as the page writes it (api/pages.py image_json).
Render = Callable[[Any], bytes]
# Where an image falls in a listing: newest first, ties by id descending. The time is
# in whole microseconds since the epoch (PostgreSQL's resolution, so the order is the
# database's): a listing's first statement reads the caller's own keys as two arrays
# (CataloguedListing.first_with_keys), and an array of bigints decodes at a fraction
# of the cost of one of timestamps (docs/listing-profile.md, round 5).
ListingKey = tuple[int, str]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def listing_key(create_time: datetime, image_id: str) -> ListingKey:
    """The listing key of an image created at ``create_time`` (aware, as PostgreSQL
    returns it)."""
    return (create_time - _EPOCH) // _MICROSECOND, image_id


def listing_keys(rows: Sequence[Any]) -> list[ListingKey]:
    """The listing keys of ``rows`` (``create_time`` and ``image_id``), in their order."""
    return [listing_key(row["create_time"], row["image_id"]) for row in rows]


@dataclass(frozen=True)
class CataloguedListing:
    """The statements of a listing of images served from the zone's public
    catalogue (:class:`PublicCatalogues`, PostgreSQL), unfiltered or with the
    filters a catalogue answers (:func:`entry_filter`).

    ``first`` reads the token's row (accounts.BEARER), the zone's ``generation``,
    ``own`` (the caller's own images that are not public and pass the filters),
    ``public`` (the zone's public ones that pass them, from public_image_counts)
    and, when filtered, ``catalogued`` (every public, not hidden one);
    ``first_with_keys`` the same and the listing keys of the first ``head`` images
    of the caller's own part, newest first, as two arrays: ``own_key_micros`` and
    ``own_key_ids`` (a page past the first); ``catalogue`` every public, not hidden
    image of the zone in listing order; ``own_rows`` the rows of the ids bound as
    ``own_ids``, if they are still the caller's own part; ``own_head`` the first
    ``head`` rows of the caller's own part, in full (a first page).
    """

    first: Select[Any]
    first_with_keys: Select[Any]
    catalogue: Select[Any]
    own_rows: Select[Any]
    own_head: Select[Any]


# The columns of a public image that the filters a catalogue answers compare, in the
# order of PublicCatalogue.attributes (models/images.py: processor_type, os_family,
# visibility, provider, status; ``hidden`` is the catalogue's own rule).
FILTERED_COLUMNS = ("processor_type", "os_family", "visibility", "provider", "status")
# What a filtered listing keeps of a catalogue: for some of FILTERED_COLUMNS (by
# index), the values it accepts; () keeps every entry. Hashable: the key of a view.
EntryFilter = tuple[tuple[int, frozenset[str]], ...]
# Each of FILTERED_COLUMNS of a catalogue's entries, newest first: by column, so that
# a filter passes over one list per column it compares.
Attributes = tuple[list[str | None], ...]


def entry_filter(
    wanted: frozenset[str], values: Mapping[str, Any], hidden: frozenset[str]
) -> EntryFilter | None:
    """What a listing with the filters ``wanted`` (by name, bound in ``values``)
    keeps of a catalogue of the public images whose status is not in ``hidden``;
    None if such a catalogue cannot answer it: ids, a search, or a status the
    catalogue leaves out."""
    if not wanted <= {*FILTERED_COLUMNS, "hidden"}:
        return None
    statuses = frozenset(_listed(values.get("status", ())))
    if "hidden" not in wanted and (not statuses or statuses & hidden):
        return None
    return tuple(
        (index, frozenset(_listed(values[column])))
        for index, column in enumerate(FILTERED_COLUMNS)
        if column in wanted
    )


def _listed(value: Any) -> list[str]:
    return list(value) if isinstance(value, list | tuple) else [value]


def catalogued_attributes(rows: Sequence[Any]) -> Attributes:
    """The FILTERED_COLUMNS of ``rows`` as a catalogue compares them: ``os_family``
    lower-cased, as its filter is, but only when it is ASCII, where Python and
    PostgreSQL lower alike; any other is kept out of every ``os_family`` view (a
    view that then misses an image PostgreSQL counts is never used: see
    listed_from_catalogue)."""
    columns = tuple([row[name] for row in rows] for name in FILTERED_COLUMNS)
    os_family = FILTERED_COLUMNS.index("os_family")
    columns[os_family][:] = [
        value.lower() if value is not None and value.isascii() else None
        for value in columns[os_family]
    ]
    return columns


@dataclass(frozen=True)
class PublicCatalogue:
    """A zone's public, not hidden images at one generation, in listing order: the
    entry of each as the page writes it, and their listing keys (oldest first,
    for bisection); ``attributes``, newest first as ``rendered``, what filters
    compare (:func:`catalogued_attributes`)."""

    generation: int
    rendered: list[bytes]
    ascending_keys: list[ListingKey]
    attributes: Attributes

    @classmethod
    def empty(cls, generation: int) -> PublicCatalogue:
        """No entries, at ``generation``: the view of filters no public image passes."""
        return cls(generation, [], [], tuple([] for _ in FILTERED_COLUMNS))

    def only(self, keep: EntryFilter) -> PublicCatalogue:
        """The entries that ``keep`` keeps, in the same order: a view at the same
        generation. One pass per filter, over the entries the previous ones kept."""
        kept: Sequence[int] = range(len(self.rendered))
        for column, accepted in keep:
            values = self.attributes[column]
            kept = [index for index in kept if values[index] in accepted]
        last = len(self.rendered) - 1
        return PublicCatalogue(
            self.generation,
            [self.rendered[index] for index in kept],
            [self.ascending_keys[last - index] for index in reversed(kept)],
            tuple([values[index] for index in kept] for values in self.attributes),
        )

    def window(self, own: Sequence[ListingKey], offset: int, limit: int) -> list[str | int]:
        """The entries at ``offset`` to ``offset + limit`` of the listing that merges
        ``own`` (the caller's own part, newest first, at least its first ``offset +
        limit``) with this catalogue: an own image's id, or a public entry's index."""

        if not own:  # public entries only
            return list(
                range(min(offset, len(self.rendered)), min(offset + limit, len(self.rendered)))
            )

        def place(index: int) -> int:  # of own[index] in the listing
            return index + self._newer_than(own[index]) if index < len(own) else -1

        # Own entries before the offset, by bisection: places grow with the index.
        own_next = bisect.bisect_left(range(len(own)), offset, key=place)
        public_next, own_place = offset - own_next, place(own_next)
        entries: list[str | int] = []
        while len(entries) < limit:
            if own_place == public_next + own_next:
                entries.append(own[own_next][1])
                own_next += 1
                own_place = place(own_next)
            elif public_next < len(self.rendered):
                entries.append(public_next)
                public_next += 1
            else:
                break
        return entries

    def _newer_than(self, key: ListingKey) -> int:
        """How many public entries come before ``key`` in the listing."""
        return len(self.ascending_keys) - bisect.bisect_right(self.ascending_keys, key)


class PublicCatalogues:
    """Each zone's public catalogue this process has read, with the generation of
    the zone's public images (migration 0012) it was read at.

    Public images are the same for every caller and change rarely: an unfiltered
    page takes its public entries, already rendered, from here, and reads only
    the caller's own part; a page filtered by attributes takes them from a view
    of it (:meth:`filtered`). A catalogue is used only with a statement that read
    the same generation (every change to a public image bumps it in the changing
    transaction); one request at a time per zone (re)builds it. One catalogue per
    zone: zones are the service's few configured ones.
    """

    def __init__(self, cap: int = MAX_CATALOGUED_PUBLIC, views: int = MAX_FILTERED_CATALOGUES):
        self._cap = cap
        self._zones: dict[str, PublicCatalogue] = {}
        self._building: set[str] = set()
        self._views = views
        self._filtered: OrderedDict[tuple[str, int, EntryFilter], PublicCatalogue] = OrderedDict()

    def get(self, zone: str) -> PublicCatalogue | None:
        """The catalogue last read for ``zone``, whatever its generation."""
        return self._zones.get(zone)

    def filtered(
        self, zone: str, catalogue: PublicCatalogue, keep: EntryFilter, public: int
    ) -> PublicCatalogue:
        """What ``keep`` keeps of ``catalogue`` (``zone``'s), of which PostgreSQL
        counted ``public`` images: filtered once per generation and filter, the view
        used least recently going first; none when it counted none (a filter on a
        value no public image has makes no view, and costs no pass over the entries)."""
        if not keep:
            return catalogue
        if not public:
            return PublicCatalogue.empty(catalogue.generation)
        key = (zone, catalogue.generation, keep)
        view = self._filtered.get(key)
        if view is None:
            view = self._filtered[key] = catalogue.only(keep)
            if len(self._filtered) > self._views:
                self._filtered.popitem(last=False)
        self._filtered.move_to_end(key)
        return view

    async def at_generation(
        self,
        connection: ReadConnection,
        statement: Executable,
        values: Mapping[str, Any],
        public: int,
        render: Render,
    ) -> PublicCatalogue | None:
        """The catalogue of ``values["zone"]`` at ``values["generation"]``, whose
        ``public`` images were just counted: remembered, or read now by this request
        if no other is reading it. None if another is, or the zone has too many."""
        zone, generation = values["zone"], values["generation"]
        known = self._zones.get(zone)
        if known is not None and known.generation == generation:
            return known if len(known.rendered) == public else None
        if known is not None and known.generation > generation:
            return None  # read before a change this process has already seen
        if zone in self._building or public > self._cap:
            return None
        self._building.add(zone)
        try:
            rows = await connection.fetch(statement, values)
        finally:
            self._building.discard(zone)
        return self._remember(zone, generation, public, rows, render)

    def _remember(
        self, zone: str, generation: int, public: int, rows: Sequence[Any], render: Render
    ) -> PublicCatalogue | None:
        """The catalogue of ``rows``, remembered under ``generation``, read before
        them: the rows are never older than the generation they are remembered at.
        Not if they changed in number since they were counted (the next request
        reads them again), nor if Python would order their keys otherwise than the
        database does (a collation that is not bytewise)."""
        ascending = listing_keys(rows)[::-1]
        in_order = all(older < newer for older, newer in itertools.pairwise(ascending))
        if len(rows) != public or not in_order:
            return None
        rendered = [render(row) for row in rows]
        catalogue = PublicCatalogue(generation, rendered, ascending, catalogued_attributes(rows))
        self._zones[zone] = catalogue
        return catalogue
