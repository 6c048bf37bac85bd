"""JSON responses from the response models."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel


def json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


def json_bytes(body: bytes, status: int = 200) -> web.Response:
    """Encoded JSON (api/pages.py), with the same headers as :func:`json`."""
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")
