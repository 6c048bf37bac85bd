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

from api.schemas import iso_time
from models.states import JobPhase

_IMAGE_TIMES = ("create_time", "status_time")


def images_page(rows: Sequence[Any], total: int) -> bytes:
    """``ImagesPage.from_rows(rows, total).model_dump_json()``, encoded."""
    return orjson.dumps({"images": [_image(row) for row in rows], "total_count": total})


def _image(row: Any) -> dict[str, Any]:
    """The row as read: the page's statement selects ``ImageOut``'s fields in its order
    (models.images.LISTED_IMAGE_COLUMNS)."""
    image = dict(row._mapping)
    for name in _IMAGE_TIMES:
        image[name] = iso_time(image[name])
    return image


def jobs_page(rows: Sequence[Any], total: int) -> bytes:
    """``JobsPage(jobs=[JobOut.from_row(row) ...], total_count=total).model_dump_json()``."""
    return orjson.dumps({"jobs": [job_out(row) for row in rows], "total_count": total})


def job_json(row: Any) -> bytes:
    """``JobOut.from_row(row).model_dump_json()``, encoded."""
    return orjson.dumps(job_out(row))


def job_out(row: Any) -> dict[str, Any]:
    """A job row as ``JobOut`` writes it, field for field and in its order."""
    error = None
    if row.error_code:
        error = {"code": row.error_code, "message": row.error_message or ""}
    return {
        "job_id": row.job_id,
        "action": row.action,
        "status": row.status,
        "progress": row.progress,
        "phase": JobPhase.of(row.status, row.phase, row.action).value,
        "create_time": iso_time(row.create_time),
        "begin_time": _iso_or_none(row.begin_time),
        "finished_time": _iso_or_none(row.finished_time),
        "status_time": iso_time(row.status_time),
        "zone": row.zone,
        "resource_ids": list(row.resource_ids),
        "owner": row.owner,
        "error": error,
    }


def _iso_or_none(value: Any) -> str | None:
    return None if value is None else iso_time(value)
