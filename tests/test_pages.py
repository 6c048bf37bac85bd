"""The listings' JSON, written straight from rows (api/pages.py), is byte for byte what
the response models write for the same rows: the contract's bytes, whatever the text."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api import pages
from api.schemas import ImageOut, ImagesPage, JobOut, JobsPage
from models.images import LISTED_IMAGE_COLUMNS
from models.states import (
    ImageStatus,
    JobAction,
    JobPhase,
    JobStatus,
    Platform,
    ProcessorType,
    Provider,
    TransitionStatus,
    Visibility,
)

# Any text a column may hold (no lone surrogates: no database stores them).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def _choice(enum: Any) -> st.SearchStrategy[str]:
    return st.sampled_from([member.value for member in enum])


class Row(SimpleNamespace):
    """A row of the page's statement: its columns by attribute and, in their order, by name."""

    @property
    def _mapping(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LISTED_IMAGE_COLUMNS}


IMAGE_ROWS = st.builds(
    Row,
    image_id=TEXT,
    image_name=TEXT,
    description=TEXT,
    size=st.integers(0, 2**40),
    processor_type=_choice(ProcessorType),
    platform=_choice(Platform),
    os_family=TEXT,
    visibility=_choice(Visibility),
    provider=_choice(Provider),
    owner=TEXT,
    recommended_type=TEXT,
    status=_choice(ImageStatus),
    transition_status=_choice(TransitionStatus),
    create_time=TIMES,
    status_time=TIMES,
    default_user=TEXT,
    default_passwd=TEXT,
    disk_format=st.sampled_from(["raw", "qcow2"]),
    checksum=TEXT,
    checksum_algorithm=TEXT,
)

JOB_ROWS = st.builds(
    SimpleNamespace,
    job_id=TEXT,
    action=_choice(JobAction),
    status=_choice(JobStatus),
    progress=st.integers(0, 100),
    phase=st.one_of(_choice(JobPhase), st.just(""), TEXT),
    create_time=TIMES,
    begin_time=st.none() | TIMES,
    finished_time=st.none() | TIMES,
    status_time=TIMES,
    zone=TEXT,
    resource_ids=st.lists(TEXT, max_size=4),
    owner=TEXT,
    error_code=st.none() | st.just("") | TEXT,
    error_message=st.none() | TEXT,
    attempts=st.integers(0, 5),  # a column the page leaves out
)


@settings(max_examples=300)
@given(st.lists(IMAGE_ROWS, max_size=5), st.integers(0, 2**40))
def test_an_images_page_is_written_as_the_model_writes_it(rows: list[Any], total: int) -> None:
    expected = ImagesPage(
        images=[ImageOut.model_validate(row) for row in rows], total_count=total
    ).model_dump_json()
    assert pages.images_page(rows, total) == expected.encode()


@settings(max_examples=300)
@given(st.lists(IMAGE_ROWS, max_size=5), st.integers(0, 2**40))
def test_a_page_of_rendered_images_is_the_page_of_their_rows(rows: list[Any], total: int) -> None:
    """Unfiltered pages join entries rendered one by one (some remembered from an
    earlier request: models.catalogue.PublicCatalogues): the same bytes as the rows' page."""
    rendered = [pages.image_json(row) for row in rows]
    assert pages.rendered_images_page(rendered, total) == pages.images_page(rows, total)


@settings(max_examples=300)
@given(st.lists(JOB_ROWS, max_size=5), st.integers(0, 2**40))
def test_a_jobs_page_and_a_job_are_written_as_the_model_writes_them(
    rows: list[Any], total: int
) -> None:
    expected = JobsPage(jobs=[JobOut.from_row(row) for row in rows], total_count=total)
    assert pages.jobs_page(rows, total) == expected.model_dump_json().encode()
    for row in rows:
        assert pages.job_json(row) == JobOut.from_row(row).model_dump_json().encode()
