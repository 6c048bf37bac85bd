"""The JSON of listing pages, written straight from the rows the database returned.

Byte for byte what ``ImagesPage`` / ``JobsPage`` ``.model_dump_json()`` give for
the same rows (the contract; ``tests/test_pages.py`` compares the two), at a
fraction of the cost: the rows were just read by our own statements, so they
are encoded as they are (orjson), not validated into models first. The models
stay the documentation (OpenAPI) and the path of every other response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from models.reads import Listed
from models.states import JobPhase

# Times as the API writes them (api.schemas.iso_time): the rows' UTC datetimes with
# ``Z`` and whole seconds, written by orjson itself rather than formatted in Python
# (two per image, 200 for a page of 100: 10 % of the process's samples).
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS | orjson.OPT_NAIVE_UTC


def images_page(rows: Sequence[Any], total: int) -> bytes:
    """``ImagesPage.from_rows(rows, total).model_dump_json()``, encoded."""
    page = {"images": [_image(row) for row in rows], "total_count": total}
    return orjson.dumps(page, option=_OPTIONS)


def image_json(row: Any) -> bytes:
    """One image of a page, encoded as :func:`images_page` writes it."""
    return orjson.dumps(_image(row), option=_OPTIONS)


def rendered_images_page(images: Sequence[bytes], total: int) -> bytes:
    """:func:`images_page` of the rows whose :func:`image_json` are ``images``, in
    order: orjson writes a page compactly, so the page is its entries joined."""
    return b'{"images":[' + b",".join(images) + b'],"total_count":' + b"%d}" % total


def listed_images_page(listed: Listed) -> bytes:
    """The page of a listing: its rows, or its entries already rendered."""
    if listed.rendered is not None:
        return rendered_images_page(listed.rendered, listed.total)
    return images_page(listed.rows, listed.total)


def _image(row: Any) -> dict[str, Any]:
    """The row as read: the page's statement selects ``ImageOut``'s fields in its order
    (models.images.LISTED_IMAGE_COLUMNS)."""
    return dict(row._mapping)


def jobs_page(rows: Sequence[Any], total: int) -> bytes:
    """``JobsPage(jobs=[JobOut.from_row(row) ...], total_count=total).model_dump_json()``."""
    page = {"jobs": [job_out(row) for row in rows], "total_count": total}
    return orjson.dumps(page, option=_OPTIONS)


def job_json(row: Any) -> bytes:
    """``JobOut.from_row(row).model_dump_json()``, encoded."""
    return orjson.dumps(job_out(row), option=_OPTIONS)


def job_out(row: Any) -> dict[str, Any]:
    """A job row as ``JobOut`` writes it, field for field and in its order (times
    as datetimes: orjson writes them, with ``_OPTIONS``)."""
    error = None
    if row.error_code:
        error = {"code": row.error_code, "message": row.error_message or ""}
    return {
        "job_id": row.job_id,
        "action": row.action,
        "status": row.status,
        "progress": row.progress,
        "phase": JobPhase.of(row.status, row.phase, row.action).value,
        "create_time": row.create_time,
        "begin_time": row.begin_time,
        "finished_time": row.finished_time,
        "status_time": row.status_time,
        "zone": row.zone,
        "resource_ids": list(row.resource_ids),
        "owner": row.owner,
        "error": error,
    }
