"""Job routes: clients poll these until a job's status is terminal."""

from __future__ import annotations

from aiohttp import web

from api import pages
from api.auth import checks_own_token
from api.caller import read_as_bearer, zone_of
from api.openapi import documented
from api.params import parse_params
from api.responses import json_bytes
from api.schemas import RESOURCE_ID, JobOut, JobsPage, ListJobsParams
from models import jobs
from models.errors import ResourceNotFound

routes = web.RouteTableDef()


@routes.get("/v2/zone/{zone}/job/{job_id}")
@documented(response=JobOut)
@checks_own_token
async def describe_job(request: web.Request) -> web.Response:
    """One of your jobs: poll it until its status is terminal."""
    zone_of(request)
    job_id = request.match_info["job_id"]
    if not RESOURCE_ID.fullmatch(job_id):  # no id we issue looks like this: skip the database
        raise ResourceNotFound("job not found")
    found = await read_as_bearer(request, jobs.get_job_as_bearer, job_id)
    return json_bytes(pages.job_json(found.rows[0]))


@routes.get("/v2/zone/{zone}/jobs")
@documented(params=ListJobsParams, response=JobsPage)
@checks_own_token
async def list_jobs(request: web.Request) -> web.Response:
    """Your jobs, filtered, newest first."""
    zone_of(request)
    params = await parse_params(request, ListJobsParams)
    filters = jobs.JobFilters(**params.model_dump())
    listed = await read_as_bearer(request, jobs.list_jobs_as_bearer, filters)
    return json_bytes(pages.jobs_page(listed.rows, listed.total))
