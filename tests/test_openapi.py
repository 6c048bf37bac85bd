"""The API describes itself: /v2/openapi.json matches the router and the replies, /v2/docs
works from the app alone, and unknown paths are a 404 in the contract's JSON."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from api.app import create_app
from api.auth import PUBLIC_PATHS
from api.openapi import ERRORS, documented_routes, openapi_document
from api.schemas import (
    CaptureOut,
    ImageOut,
    JobOut,
    ListImagesParams,
    ListJobsParams,
    ModifyParams,
)
from imagesvc.settings import Settings
from models.states import ImageStatus, JobAction, JobStatus, TransitionStatus
from tests.support.tenants import Tenant

Client = TestClient[Any, Any]


async def fetch_document(client: Client) -> dict[str, Any]:
    response = await client.get("/v2/openapi.json")
    assert response.status == 200, await response.text()
    document: dict[str, Any] = await response.json()
    return document


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


async def test_the_document_validates_and_lists_every_route_and_nothing_else(
    client: Client,
) -> None:
    document = await fetch_document(client)
    validate(document)
    assert document["openapi"].startswith("3.1")
    routes = {(method, path) for method, path, _ in documented_routes(client.app)}
    assert operations(document) == routes
    assert ("POST", "/v2/zone/{zone}/images") in routes and ("GET", "/v2/docs") in routes


def test_every_route_of_the_users_api_names_its_models(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    described = [(m, p, doc) for m, p, doc in documented_routes(app) if p.startswith("/v2/")]
    assert described, "no routes"
    for method, path, doc in described:
        assert doc is not None, f"{method} {path} is not documented"
        if path.startswith("/v2/zone/"):
            assert doc.response is not None, f"{method} {path} has no response model"
    document = openapi_document(app, PUBLIC_PATHS)
    capture = document["paths"]["/v2/zone/{zone}/images"]["post"]
    body = capture["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CaptureParams"}
    assert set(capture["responses"]) >= {"202", "400", "401", "404", "409", "429", "503"}
    image = document["components"]["schemas"]["ImageOut"]["properties"]
    assert "GB" in image["size"]["description"]
    assert image["create_time"]["format"] == "date-time"


async def test_replies_match_the_schemas_the_document_gives(tenant: Tenant, raw_disk: Path) -> None:
    document = await fetch_document(tenant.client)
    capture = await tenant.capture(tenant.add_instance(raw_disk), "described")
    assert capture.status == 202, capture
    job = await tenant.wait_job(capture.body["job_id"])
    job.pop("seen")
    checks = [
        ("/v2/zone/{zone}/images", "post", "202", capture.body),
        ("/v2/zone/{zone}/job/{job_id}", "get", "200", job),
        ("/v2/zone/{zone}/images", "get", "200", (await tenant.call("GET", "/images")).body),
        ("/v2/zone/{zone}/jobs", "get", "200", (await tenant.call("GET", "/jobs")).body),
        ("/v2/zone/{zone}/job/{job_id}", "get", "404", (await tenant.call("GET", "/job/j-x")).body),
    ]
    for path, method, status, body in checks:
        content = document["paths"][path][method]["responses"][status]["content"]
        schema = {**content["application/json"]["schema"], **document}
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


async def test_the_docs_page_and_every_asset_it_loads_come_from_the_app(client: Client) -> None:
    page = await client.get("/v2/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert "/v2/openapi.json" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3, html
    for asset in assets:
        assert asset.startswith("/v2/docs/"), f"{asset} is not served by the app"
        response = await client.get(asset)
        assert response.status == 200, asset
        assert len(await response.read()) > 100, asset
    script = await client.get("/v2/docs/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in await script.text()


@pytest.mark.parametrize("path", ["/v2/docs/nope.js", "/v2/docs/..%2Fsettings.py", "/nope"])
async def test_unknown_paths_are_a_404_in_the_contracts_json_without_a_token(
    client: Client, path: str
) -> None:
    response = await client.get(path)
    assert response.status == 404
    body = await response.json()
    assert body["ret_code"] == 2100 and isinstance(body["message"], str), body


async def test_unknown_paths_under_a_zone_are_a_404_not_a_401(client: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await client.get("/v2/zone/ac1/imagez", headers=headers)
        assert response.status == 404, await response.text()
        assert (await response.json())["ret_code"] == 2100
    wrong_method = await client.patch("/v2/zone/ac1/images")
    assert wrong_method.status == 405
    assert (await wrong_method.json())["ret_code"] == 1100


async def test_known_paths_still_need_a_token(client: Client) -> None:
    response = await client.get("/v2/zone/ac1/images")
    assert response.status == 401
    assert (await response.json())["ret_code"] == 1200


def test_the_reference_in_docs_covers_every_route_field_status_and_error(tmp_path: Path) -> None:
    reference = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    app = create_app(Settings(data_dir=tmp_path))
    for method, path, doc in documented_routes(app):
        if doc is not None:
            assert path in reference, f"docs/api.md does not mention {method} {path}"
    for model in (ImageOut, JobOut, CaptureOut, ListImagesParams, ListJobsParams, ModifyParams):
        for name in model.model_fields:
            assert f"`{name}`" in reference, f"docs/api.md does not describe {name}"
    for enum in (ImageStatus, TransitionStatus, JobStatus, JobAction):
        for member in enum:
            assert f"`{member.value}`" in reference, f"docs/api.md lacks {member.value!r}"
    for error in ERRORS.values():
        assert f"| {error.http_status} | {error.ret_code} |" in reference, error
