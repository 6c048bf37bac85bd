"""What the scale benchmark writes: plots, its section of docs/benchmarks.md, the plans."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select, text
from sqlalchemy.dialects import postgresql

from models.db import Database
from models.images import (
    ImageFilters,
    bearer_search_parts,
    catalogued_listing,
    image_listing,
    listing_filters,
)
from models.jobs import JobFilters, job_listing
from models.reads import AsyncpgCompiler
from models.scoping import Caller
from models.states import ImageStatus, ProcessorType, Provider, Visibility
from models.tables import AccessToken

if TYPE_CHECKING:
    from bench.scale import Results

START, END = "<!-- bench:scale:start -->", "<!-- bench:scale:end -->"
HEADER = (
    "# Benchmarks\n\nMeasured with the commands of `bench/`; each section is written by its case.\n"
)

# The keyword arguments of models.images.image_listing for each case of bench.scale.CASES.
PLAN_CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "status": {"status": [ImageStatus.AVAILABLE]},
    "os_family": {"os_family": "ubuntu"},
    "visibility": {"visibility": Visibility.PUBLIC},
    "provider": {"provider": Provider.SYSTEM},
    "processor_type": {"processor_type": ProcessorType.BIT32},
    "images": {
        "images": [
            "img-c00000001",
            "img-c00000002",
            "img-c00000005",
            "img-00000064",
            "img-000000c8",
        ]
    },
    "search_word": {"search_word": "UBU"},
    "search_word_id": {"search_word": "0000A"},
    "offset=5000": {"offset": 5000, "limit": 100},
    "offset=10000": {"offset": 10000},
}


def plans(database: Database, account_id: str) -> dict[str, str]:
    """EXPLAIN ANALYZE of every statement the listing cases run, as text."""
    caller = Caller(account_id, "ac1")
    out = {}
    for case, params in PLAN_CASES.items():
        listing = image_listing(caller, ImageFilters(**params), public_counts=True)
        out[f"{case}: total_count"] = _explain(database, listing.total.params(listing.values))
        out[f"{case}: page"] = _explain(database, listing.page.params(listing.values))
    search = image_listing(caller, ImageFilters(search_word="UBU"), public_counts=True)
    out |= _generic_and_custom(database, "search_word: total_count", search.total, search.values)
    out |= _search_parts(database, account_id)
    out |= _catalogue_parts(database, account_id)
    jobs = job_listing(caller, JobFilters(), postgresql=True)
    out["jobs: total_count"] = _explain(database, jobs.total.params(jobs.values))
    out["jobs: page"] = _explain(database, jobs.page.params(jobs.values))
    return out


def _digest(database: Database, account_id: str) -> str | None:
    """The digest of a token of ``account_id``: what the first statements bind."""
    with database.reading() as session:
        return session.scalars(
            select(AccessToken.token_hash).where(AccessToken.account_id == account_id)
        ).first()


def _catalogue_parts(database: Database, account_id: str) -> dict[str, str]:
    """Listings on the catalogue as the API runs them on PostgreSQL: the token,
    generation and both counts on every request; the zone's public catalogue once
    per generation; the caller's own rows in full on a first page, else their keys
    (in the first statement) and the own rows in the page by primary key
    (models.images.catalogued_listing, models.reads._page_on). A filtered listing
    (status, provider, ...) runs the same shapes with its filters, and also counts
    the whole catalogue."""
    statements = catalogued_listing()
    values = {"zone": "ac1", "digest": _digest(database, account_id), "owner": account_id}
    with database.reading() as session:
        first = session.execute(statements.first_with_keys, {**values, "head": 5100}).one()
    own, own_ids = first.own, list(first.own_key_ids or ())[:10]
    name = "default and offset"
    out = {
        f"{name}: token, generation, own and public counts (every request)": _explain(
            database, statements.first.params(values)
        ),
        f"{name}: the zone's public catalogue (once per generation)": _explain(
            database, statements.catalogue.params(values)
        ),
        "default: the caller's own rows, in full (head = min(10, own))": _explain(
            database, statements.own_head.params({**values, "head": min(10, own)})
        ),
        "offset=5000: the same with the caller's own keys (head = 5100)": _explain(
            database, statements.first_with_keys.params({**values, "head": 5100})
        ),
        "offset=5000: own rows in the page, by primary key (here 10)": _explain(
            database, statements.own_rows.params({**values, "own_ids": own_ids})
        ),
    }
    return out | _filtered_catalogue_parts(database, values)


def _filtered_catalogue_parts(database: Database, values: dict[str, Any]) -> dict[str, str]:
    """The statements of each filtered case the catalogue answers, on every request."""
    out = {}
    for case in ("status", "os_family", "visibility", "provider", "processor_type"):
        wanted, filters = listing_filters(values["zone"], ImageFilters(**PLAN_CASES[case]))
        statements = catalogued_listing(wanted)
        bound = {**filters, **values, "head": 10}
        out[f"{case}: token, generation, own, public and catalogued counts"] = _explain(
            database, statements.first.params(bound)
        )
        out[f"{case}: the caller's own rows, in full (head = 10)"] = _explain(
            database, statements.own_head.params(bound)
        )
    return out


def _search_parts(database: Database, account_id: str) -> dict[str, str]:
    """The first statement of a search as the API runs it on PostgreSQL: the token,
    the zone's public generation and the caller's own images on every request; the
    public images counted only when the generation changed (migration 0012)."""
    digest = _digest(database, account_id)
    out = {}
    for case, word in (("search_word", "UBU"), ("search_word_id", "0000A")):
        own, counted, page, values = bearer_search_parts("ac1", ImageFilters(search_word=word))
        values["digest"] = digest
        out[f"{case}: token, generation and own images (every request)"] = _explain(
            database, own.params(values)
        )
        out[f"{case}: the same and the public images (once per generation)"] = _explain(
            database, counted.params(values)
        )
        with database.reading() as session:
            head = session.execute(counted, values).one().public_head or []
        page_values = {**values, "owner": account_id, "public_head": head}
        out[f"{case}: page on the remembered public keys"] = _explain(
            database, page.params(page_values)
        )
    return out


def _generic_and_custom(
    database: Database, name: str, statement: Select[Any], values: dict[str, Any]
) -> dict[str, str]:
    """The statement prepared as the API runs it, planned the generic way (what a
    prepared statement switches to after five executions) and the custom way (what
    searches ask for, models/reads.py)."""
    sql, args = AsyncpgCompiler().bind(statement, values)
    execute = f"EXECUTE listing({', '.join(_literal(arg) for arg in args)})"
    execute = execute.replace("%", "%%")  # psycopg's placeholders
    plans = {}
    with database.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.exec_driver_sql(f"PREPARE listing AS {sql}")
        for mode in ("generic", "custom"):
            autocommit.exec_driver_sql(f"SET plan_cache_mode = force_{mode}_plan")
            autocommit.exec_driver_sql(execute).all()  # warm, as under load
            explained = autocommit.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {execute}")
            plans[f"{name}, {mode} plan"] = "\n".join(explained.scalars())
        autocommit.exec_driver_sql("DEALLOCATE listing")
        autocommit.exec_driver_sql("RESET plan_cache_mode")
    return plans


def _literal(value: Any) -> str:
    """A value of the bench's own statements as SQL (strings and integers only)."""
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _explain(database: Database, statement: Select[Any]) -> str:
    dialect = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
    sql = statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    with database.reading() as session:
        session.execute(text(str(sql))).all()  # warm, as under load
        return "\n".join(session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")).scalars())


def write(results: Results, docs: Path) -> None:
    """The plots, this benchmark's section of benchmarks.md, and query-plans.md."""
    (docs / "img").mkdir(parents=True, exist_ok=True)
    _plot_latency(results, docs / "img" / "scale-latency.png")
    _plot_sweep(results, docs / "img" / "scale-throughput.png")
    write_section(docs / "benchmarks.md", START, END, _section(results))
    (docs / "query-plans.md").write_text(_plans_page(results))


def write_section(page: Path, start: str, end: str, section: str) -> None:
    """Put ``section`` between the markers ``start`` and ``end`` of ``page``, or append it."""
    current = page.read_text() if page.exists() else HEADER
    marked = f"{start}\n{section}\n{end}"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + marked + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + marked + "\n"
    page.write_text(current)


def machine() -> str:
    """CPU, cores, memory and PostgreSQL: what the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    postgres = subprocess.run(["postgres", "--version"], capture_output=True, text=True)
    version = postgres.stdout.strip() if postgres.returncode == 0 else "PostgreSQL"
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_kb / 2**20:.0f} GiB RAM, "
        f"{version} (shared_buffers default), Python {platform.python_version()}"
    )


def _section(results: Results) -> str:
    small, large = results.sizes[0], results.sizes[-1]
    lines = [
        "## Listing at scale (issue 9)",
        "",
        f"Measured {results.started} on {machine()}, by `python -m bench.scale`. "
        "The machine is shared with other engineers' test runs, so every size has its own "
        "database, API and bare aiohttp + asyncpg server (`bench/bare_listing.py`; its "
        "pools are the API's own, `models/pool.py`, so pooling costs both sides the same), "
        "and each "
        f"case runs them all in turn, {results.rounds} round(s) of {results.seconds:g} s, "
        "reporting medians: every figure meets the same noise. "
        "Load: `wrk -t2 -c8`; the caller owns 100 images among 10,000 tenants, 1 in 100 "
        "images is public, about 1 in 7 ceased (`bench/scale_data.py`). "
        "Query plans: [query-plans.md](query-plans.md); the profile, what changed and "
        "what stands in the way: [listing-profile.md](listing-profile.md).",
        "",
        f"| case | API p50 at {small:,} | API p50 at {large:,} | ratio (target ≤ 1.5) | "
        f"API / bare req/s at {small:,} | at {large:,} (target ≥ 0.7) | "
        f"CPU ms per request, API / bare, at {small:,} | at {large:,} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, by_size in results.latency.items():
        a, b = by_size[small], by_size[large]
        lines.append(
            f"| {case} | {a['api'].p50:.1f} ms | {b['api'].p50:.1f} ms | "
            f"{b['api'].p50 / a['api'].p50:.2f} | "
            f"{a['api'].rps:.0f} / {a['bare'].rps:.0f} = {a['api'].rps / a['bare'].rps:.2f} | "
            f"{b['api'].rps:.0f} / {b['bare'].rps:.0f} = {b['api'].rps / b['bare'].rps:.2f} | "
            f"{a['api'].cpu_ms:.2f} / {a['bare'].cpu_ms:.2f} | "
            f"{b['api'].cpu_ms:.2f} / {b['bare'].cpu_ms:.2f} |"
        )
    lines += [
        "",
        "![p50 and p99 against table size](img/scale-latency.png)",
        "",
        "![throughput against concurrency](img/scale-throughput.png)",
    ]
    return "\n".join(lines)


def _plans_page(results: Results) -> str:
    parts = [
        "# Query plans of the listings",
        "",
        f"`EXPLAIN (ANALYZE, BUFFERS)` at {results.sizes[-1]:,} images, {results.started}, "
        "written by `python -m bench.scale` (`bench/scale_report.py`). Each statement is "
        "the one `models/images.py` (`image_listing`) or `models/jobs.py` (`job_listing`) "
        "builds, run once warm. What to look for: the page reads the caller's own images "
        "from `ix_images_zone_owner_create_time` and the public ones from the partial "
        "`ix_images_public_zone_create_time` (index-only scans merged by a *Merge Append*, "
        "at most `offset + limit` entries of each), then `limit` rows by primary key; the "
        "total counts the caller's own images and adds the public ones from a few rows of "
        "`public_image_counts` (kept by triggers, migration 0007); with `images` it counts "
        "the public rows through their partial index. A `search_word` total's public part "
        "(through the partial index or, for a rare word, the `pg_trgm` GIN indexes) is "
        "counted once per generation of the zone's public images (bumped by triggers, "
        "migration 0012): every request runs the *token, generation and own images* "
        "statement, and the one that also counts the public images only when the "
        "generation changed (`models/reads.py`, `PublicTotals`). An unfiltered listing "
        "takes its public entries from the zone's public catalogue, read once per "
        "generation (`PublicCatalogues`), and reads only the caller's own keys and, by "
        "primary key, the own rows in its page (*default and offset*, *offset=5000*); "
        "so does a listing filtered by `status`, `os_family`, `visibility`, `provider` "
        "or `processor_type`, on the catalogue's entries that pass its filters (the "
        "*counts* and *own rows* plans of each); the *page* plans of those cases are "
        "their path when there is no catalogue to be had. Jobs read "
        "`ix_jobs_zone_owner_create_time`. "
        "Nothing reads the whole table: the cost follows the caller's rows (and the "
        "`offset`), not the size of the table. The API runs these as prepared "
        "statements; the two *search_word* plans at the end show why searches are "
        "planned for their word (`plan_cache_mode = force_custom_plan`, "
        "`models/reads.py`): the generic plan guesses a rare word and reads every "
        "public image's heap page through the trigram indexes.",
    ]
    for name, plan in results.plans.items():
        parts += ["", f"## {name}", "", "```", plan, "```"]
    return "\n".join(parts) + "\n"


def _plot_latency(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (p50, p99) = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    for case, by_size in results.latency.items():
        sizes = sorted(by_size)
        p50.plot(sizes, [by_size[s]["api"].p50 for s in sizes], marker="o", label=case)
        p99.plot(sizes, [by_size[s]["api"].p99 for s in sizes], marker="o", label=case)
    for axes, name in ((p50, "p50"), (p99, "p99")):
        axes.set_xscale("log")
        axes.set_xlabel("images in the table")
        axes.set_ylabel(f"{name} latency, ms (wrk -c8)")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
    p50.legend(fontsize=7)
    figure.suptitle(f"GET /images and /jobs, API latency against table size ({results.started})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_sweep(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for size, by_connections in sorted(results.sweep.items()):
        counts = sorted(by_connections)
        for side, style in (("api", "-o"), ("bare", "--x")):
            rates = [by_connections[c][side].rps for c in counts]
            axes.plot(counts, rates, style, label=f"{side} at {size:,} images")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrent connections")
    axes.set_ylabel("GET /images requests/s")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title(f"Throughput against concurrency ({results.started})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
