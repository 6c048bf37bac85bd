"""Request parameters, from the JSON body or the query string, whatever the Content-Type.

The seed's ``curl --data '{...}'`` sends JSON labelled as a form; the SDK
sends JSON properly, and puts GET filters in the query string. Both reach
the same pydantic model.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from api.limits import JsonRejected, decode_json, read_body
from models.errors import InvalidParameter

ParamsT = TypeVar("ParamsT", bound=BaseModel)

FORM = "application/x-www-form-urlencoded"
# Query strings remembered per model, with the parameters they validated to.
MAX_REMEMBERED_QUERIES = 512

_validated_queries: dict[tuple[type[BaseModel], str], BaseModel] = {}


async def parse_params(request: web.Request, model: type[ParamsT]) -> ParamsT:
    """Merge query and body (the body wins) and validate them as ``model``."""
    if not request.body_exists:
        return _validated_query(request, model)
    merged = _query_params(request)
    merged.update(await _body_params(request))
    return validate_params(model, merged)


def _validated_query(request: web.Request, model: type[ParamsT]) -> ParamsT:
    """The parameters of a request without a body: its query string alone.

    Listings are polled with the same few query strings, and validation is a
    function of the string: a string that validated once gives the same
    parameters (frozen models, shared) without validating again. Refusals are
    not remembered; the memory is bounded.
    """
    key = (model, request.rel_url.raw_query_string)
    known = _validated_queries.get(key)
    if known is not None:
        return known  # type: ignore[return-value]  # stored under its own model
    params = validate_params(model, _query_params(request))
    if len(_validated_queries) >= MAX_REMEMBERED_QUERIES:
        _validated_queries.clear()
    _validated_queries[key] = params
    return params


def validate_params(model: type[ParamsT], data: dict[str, Any]) -> ParamsT:
    """Validate ``data`` as ``model``; the first problem becomes a 400 naming the parameter."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameter(describe_error(exc.errors()[0])) from None


def _query_params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        params[key] = values[0] if len(values) == 1 else values
    return params


async def _body_params(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidParameter("request body is not UTF-8 text") from None
    if not text:
        return {}
    if request.content_type == FORM and not text.startswith(("{", "[")):
        return _form_params(text)
    try:
        body = decode_json(text)
    except JsonRejected as exc:
        raise InvalidParameter(f"request body is refused: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidParameter("request body must be a JSON object")
    return body


def _form_params(text: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in params:
            previous = params[key]
            params[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            params[key] = value
    return params


def describe_error(error: ErrorDetails) -> str:
    name = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    if error["type"] == "missing":
        return f"missing required parameter '{name}'"
    return f"invalid parameter '{name}': {error['msg']}"
