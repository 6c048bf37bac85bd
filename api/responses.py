"""JSON responses from the response models."""

from __future__ import annotations

import orjson
from aiohttp import web
from pydantic import BaseModel

from api import pages
from models.tables import Job


def json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


def json_bytes(body: bytes, status: int = 200) -> web.Response:
    """Encoded JSON (api/pages.py), with the same headers as :func:`json`."""
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


def job_body(job: Job, image_id: str | None = None) -> bytes:
    """``JobOut.from_row(job)`` (``CaptureOut`` with ``image_id``) ``.model_dump_json()``,
    encoded straight from the row a write just inserted or changed (api/pages.py's
    encoder, byte for byte the models': ``tests/test_write_path.py``), not validated
    into models first: every write answers with its job."""
    body = pages.job_json(job)
    if image_id is None:
        return body
    return body[:-1] + b',"image_id":' + orjson.dumps(image_id) + b"}"
