"""The OpenAPI 3.1 document, generated from the routes and the pydantic models they use.

Each handler declares, with :func:`documented`, the parameter model it parses and the
response model it serialises through; :func:`openapi_document` walks the app's router and
turns those same models into the document. Nothing about a route is written twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from api.schemas import ErrorOut
from models.errors import (
    AccessDenied,
    AuthenticationFailed,
    InvalidParameter,
    QuotaExceeded,
    ResourceNotFound,
    ServiceError,
    ServiceUnavailable,
    StateConflict,
)

REF_TEMPLATE = "#/components/schemas/{model}"
OPENAPI_PATH = "/v2/openapi.json"
DOCS_PATH = "/v2/docs"
ASSET_PATH = "/v2/docs/{asset}"
# The document and its page need no token: they describe the API, they reveal no data.
DOCUMENTATION_PATHS = frozenset({OPENAPI_PATH, DOCS_PATH, ASSET_PATH})
HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

# Parameters in paths, described once for every route that has them.
PATH_PARAMETERS = {
    "zone": "The zone, one of those the deployment serves (e.g. `ac1`); another is a 404.",
    "ids": "Image ids, comma-joined: `img-a,img-b`.",
    "job_id": "The job id, `j-` prefix.",
    "asset": "A file of the documentation page (script, style sheet or icon).",
}

# The error each status stands for, in the words of its error class.
ERRORS: dict[int, type[ServiceError]] = {
    400: InvalidParameter,
    401: AuthenticationFailed,
    403: AccessDenied,
    404: ResourceNotFound,
    409: StateConflict,
    429: QuotaExceeded,
    500: ServiceError,
    503: ServiceUnavailable,
}


@dataclass(frozen=True)
class RouteDoc:
    """What the document says of one handler."""

    summary: str
    params: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    content_type: str
    body_type: str
    basic_auth: bool


_DOCS: dict[Callable[..., Any], RouteDoc] = {}


def documented(
    *,
    params: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    content_type: str = "application/json",
    body_type: str = "application/json",
    basic_auth: bool = False,
) -> Callable[[HandlerT], HandlerT]:
    """Record the models a handler parses and answers with, for the OpenAPI document.

    ``errors`` lists the statuses particular to the route; 400 (when it takes
    parameters), 401, 404 (a zone) and 503 are added where they apply. The
    summary is the handler's docstring.
    """

    def record(handler: HandlerT) -> HandlerT:
        # Docstrings quote code reST's way; the document speaks Markdown.
        summary = (handler.__doc__ or handler.__name__).strip().replace("``", "`")
        _DOCS[handler] = RouteDoc(
            summary, params, response, status, errors, content_type, body_type, basic_auth
        )
        return handler

    return record


def route_doc(handler: Callable[..., Any]) -> RouteDoc | None:
    """What :func:`documented` recorded for ``handler``, looking through wrappers."""
    while handler not in _DOCS and hasattr(handler, "__wrapped__"):
        handler = handler.__wrapped__
    return _DOCS.get(handler)


def documented_routes(app: web.Application) -> Iterator[tuple[str, str, RouteDoc | None]]:
    """(method, path template, its doc) for every route of the app; HEAD is GET's twin."""
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        yield route.method, route.resource.canonical, route_doc(route.handler)


def openapi_document(app: web.Application, public_paths: frozenset[str]) -> dict[str, Any]:
    """The whole document for ``app``; routes in ``public_paths`` need no token."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for method, path, doc in documented_routes(app):
        operation = _operation(method, path, doc, components, path in public_paths)
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagesvc",
            "version": "2",
            "description": "Capture stopped instances into images; list, rename, delete and "
            "recover them; poll the jobs that do the slow work. Parameters are accepted in "
            "the query string or a JSON body on every method. Sizes are in GB, times are "
            "UTC ISO 8601.",
        },
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "security": [{"bearer": []}],
    }


class _Components:
    """The schemas the operations refer to, each model once."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, str]:
        if model.__name__ not in self.schemas:
            self.schemas[model.__name__] = self._schema(model, mode)
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    def properties(self, model: type[BaseModel]) -> tuple[dict[str, Any], set[str]]:
        """A parameter model's fields, their schemas referring to these components."""
        schema = self._schema(model, "validation")
        return schema.get("properties", {}), set(schema.get("required", []))

    def _schema(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        self.schemas.update(schema.pop("$defs", {}))
        return schema


def _operation(
    method: str, path: str, doc: RouteDoc | None, components: _Components, public: bool
) -> dict[str, Any]:
    if doc is None:
        # A route nobody described (an operator's endpoint): listed, never hidden.
        return {"summary": f"{method} {path}", "responses": {"200": {"description": "OK"}}}
    operation: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "tags": [_tag(path)],
        "summary": doc.summary.splitlines()[0],
        "description": doc.summary,
        "parameters": _path_parameters(path),
        "responses": _responses(doc, path, components, public),
    }
    if doc.basic_auth:
        operation["security"] = [{"basic": []}]
    elif public:
        operation["security"] = []
    if doc.params is not None:
        _add_params(operation, method, doc, components)
    return operation


def _tag(path: str) -> str:
    """Operations grouped as a reader looks for them."""
    if "/images" in path:
        return "images"
    if "/job" in path:
        return "jobs"
    return "authentication" if "oauth2" in path else "service"


def _operation_id(method: str, path: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", path.replace("{", "by_"))
    return "_".join([method.lower(), *words])


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMETERS.get(name, name),
            "schema": {"type": "string"},
        }
        for name in re.findall(r"{(\w+)}", path)
    ]


def _add_params(
    operation: dict[str, Any], method: str, doc: RouteDoc, components: _Components
) -> None:
    """GET filters as query parameters; other methods' as a body (the query works too)."""
    assert doc.params is not None
    properties, required = components.properties(doc.params)
    if method != "GET":
        operation["requestBody"] = {
            "required": bool(required),
            "content": {doc.body_type: {"schema": components.ref(doc.params, "validation")}},
        }
        return
    for name, schema in properties.items():
        parameter = {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": schema.pop("description", name),
            "schema": schema,
        }
        if schema.get("type") == "array":
            parameter.update(style="form", explode=False)
        operation["parameters"].append(parameter)


def _responses(doc: RouteDoc, path: str, components: _Components, public: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {str(doc.status): _success(doc, components)}
    statuses = set(doc.errors) | {503}
    if doc.params is not None:
        statuses.add(400)
    if not public:
        statuses.add(401)
    if "{zone}" in path:
        statuses.add(404)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": (ERRORS[status].__doc__ or "").strip(),
            "content": {"application/json": {"schema": components.ref(ErrorOut, "serialization")}},
        }
    return responses


def _success(doc: RouteDoc, components: _Components) -> dict[str, Any]:
    if doc.response is None:
        return {"description": doc.summary.splitlines()[0], "content": {doc.content_type: {}}}
    return {
        "description": (doc.response.__doc__ or doc.response.__name__).strip(),
        "content": {doc.content_type: {"schema": components.ref(doc.response, "serialization")}},
    }
