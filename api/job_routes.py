"""Job routes: clients poll these until a job's status is terminal."""

from __future__ import annotations

from aiohttp import web

from api.caller import caller_of, in_reading
from api.openapi import documented
from api.params import parse_params
from api.responses import json
from api.schemas import RESOURCE_ID, JobOut, JobsPage, ListJobsParams
from models import jobs
from models.errors import ResourceNotFound

routes = web.RouteTableDef()


@routes.get("/v2/zone/{zone}/job/{job_id}")
@documented(response=JobOut)
async def describe_job(request: web.Request) -> web.Response:
    """One of your jobs: poll it until its status is terminal."""
    caller = caller_of(request)
    job_id = request.match_info["job_id"]
    if not RESOURCE_ID.fullmatch(job_id):  # no id we issue looks like this: skip the database
        raise ResourceNotFound("job not found")
    job = await in_reading(request, jobs.get_job, caller, job_id)
    return json(JobOut.from_row(job))


@routes.get("/v2/zone/{zone}/jobs")
@documented(params=ListJobsParams, response=JobsPage)
async def list_jobs(request: web.Request) -> web.Response:
    """Your jobs, filtered, newest first."""
    caller = caller_of(request)
    params = await parse_params(request, ListJobsParams)
    filters = jobs.JobFilters(**params.model_dump())
    rows, total = await in_reading(request, jobs.list_jobs, caller, filters)
    return json(JobsPage(jobs=[JobOut.from_row(row) for row in rows], total_count=total))
