"""The image routes: capture, delete, recover, modify and list images."""

from __future__ import annotations

from aiohttp import web

from api import pages
from api.auth import checks_own_token
from api.caller import (
    as_bearer,
    as_bearer_holding_quota,
    in_idempotent_write,
    in_write,
    read_as_bearer,
    zone_of,
)
from api.job_sending import send_after_commit
from api.keys import INVENTORY, SETTINGS
from api.openapi import documented
from api.params import parse_params, validate_params
from api.responses import job_body, json_bytes
from api.schemas import (
    CaptureOut,
    CaptureParams,
    DeleteParams,
    ImagesPage,
    JobOut,
    ListImagesParams,
    ModifyParams,
    RecoverParams,
    RequestIdParams,
)
from models import images
from models.quotas import Quota
from models.scoping import Caller
from models.statements import Statements

routes = web.RouteTableDef()


@routes.post("/v2/zone/{zone}/images")
@documented(params=CaptureParams, response=CaptureOut, status=202, errors=(403, 409, 429))
@checks_own_token
async def capture_instance(request: web.Request) -> web.Response:
    """Capture a stopped instance into a new image; returns the job and the image id."""
    zone_of(request)
    params = await parse_params(request, CaptureParams)
    inventory = request.app[INVENTORY]
    request_id = request_id_of(request, params.request_id)
    default_quota = request.app[SETTINGS].default_quota

    def capture_owned(statements: Statements, caller: Caller, quota: Quota) -> images.Capture:
        # The token is checked (its account row locked, for the quota) and the instance
        # looked up in the capture's own unit of work: one connection per request.
        wanted = images.CaptureRequest(
            instance_id=params.instance,
            instance=inventory.find_owned(caller, params.instance, statements),
            image_name=params.image_name,
            request_id=request_id,
        )
        return images.capture_instance(
            statements, caller, wanted, default_quota, locked_quota=quota
        )

    capture = await in_idempotent_write(
        request, as_bearer_holding_quota(request, default_quota, capture_owned)
    )
    send_after_commit(request, capture.job)
    return json_bytes(job_body(capture.job, capture.image.image_id), status=202)


@routes.delete("/v2/zone/{zone}/images/{ids}")
@documented(params=RequestIdParams, response=JobOut, status=202, errors=(403, 409))
@checks_own_token
async def delete_images(request: web.Request) -> web.Response:
    """Delete images, ``ids`` comma-joined: all of them or none."""
    zone_of(request)
    params = validate_params(DeleteParams, {"images": request.match_info["ids"]})
    body = await parse_params(request, RequestIdParams)  # the seed sends an empty body
    request_id = request_id_of(request, body.request_id)
    job = await in_idempotent_write(
        request, as_bearer(request, images.delete_images), params.images, request_id
    )
    send_after_commit(request, job)
    return json_bytes(job_body(job), status=202)


@routes.post("/v2/zone/{zone}/images/recover")
@documented(params=RecoverParams, response=JobOut, status=202, errors=(403, 409))
@checks_own_token
async def recover_images(request: web.Request) -> web.Response:
    """Bring deleted images back while they are within the retention window."""
    zone_of(request)
    params = await parse_params(request, RecoverParams)
    retention = request.app[SETTINGS].deleted_retention
    recover = as_bearer(request, images.recover_images)
    job = await in_write(request, recover, params.images, retention)
    send_after_commit(request, job)
    return json_bytes(job_body(job), status=202)


@routes.put("/v2/zone/{zone}/images")
@documented(params=ModifyParams, response=JobOut, errors=(403, 409))
@checks_own_token
async def modify_image(request: web.Request) -> web.Response:
    """Change one image's name and/or description."""
    zone_of(request)
    params = await parse_params(request, ModifyParams)
    modify = as_bearer(request, images.modify_image)
    job = await in_write(request, modify, params.image, params.image_name, params.description)
    return json_bytes(job_body(job))


@routes.get("/v2/zone/{zone}/images")
@documented(params=ListImagesParams, response=ImagesPage)
@checks_own_token
async def list_images(request: web.Request) -> web.Response:
    """Public images and the caller's own, filtered, newest first."""
    zone_of(request)
    params = await parse_params(request, ListImagesParams)
    listed = await read_as_bearer(
        request, images.list_images_as_bearer, params.filters, render=pages.image_json
    )
    return json_bytes(pages.listed_images_page(listed))


def request_id_of(request: web.Request, from_params: str | None) -> str | None:
    """The client's idempotency key: the ``request_id`` parameter or ``X-Request-Id``."""
    header = request.headers.get("X-Request-Id")
    if from_params or not header:
        return from_params
    return validate_params(RequestIdParams, {"request_id": header}).request_id
