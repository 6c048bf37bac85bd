"""Request and response shapes, defined once and used both ways.

Requests validate through these models; responses serialise through them,
so an OpenAPI document can be generated from them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from models.states import (
    ImageStatus,
    JobAction,
    JobPhase,
    JobStatus,
    ProcessorType,
    Provider,
    Visibility,
)
from models.tables import Image, Job

MAX_LIMIT = 100
MAX_IDS = 100
MAX_OFFSET = 2**31 - 1


def _as_list(value: Any) -> Any:
    """A JSON array, a comma-joined string, or repeated keys: all become a list."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return value
        value = [value]
    if isinstance(value, list):
        return [part.strip() for item in value for part in _split(item) if part.strip()]
    return value


def _split(item: Any) -> list[Any]:
    return item.split(",") if isinstance(item, str) else [item]


def _at_most_100(value: int) -> int:
    return min(value, MAX_LIMIT)


ListOf = BeforeValidator(_as_list)
ResourceId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]
IdList = Annotated[list[ResourceId], ListOf, Field(max_length=MAX_IDS)]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET)]
Limit = Annotated[int, Field(ge=0), AfterValidator(_at_most_100)]
IsoTime = Annotated[
    datetime, PlainSerializer(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"), return_type=str)
]
ImageName = Annotated[str, Field(max_length=128)]
Description = Annotated[str, Field(max_length=1024)]


class Params(BaseModel):
    # Unknown parameters are ignored, as QingCloud does: SDKs send extras.
    model_config = ConfigDict(extra="ignore", frozen=True)


RequestId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class CaptureParams(Params):
    instance: ResourceId
    image_name: ImageName | None = None
    request_id: RequestId | None = None


class RequestIdParams(Params):
    request_id: RequestId | None = None


class DeleteParams(Params):
    images: Annotated[IdList, Field(min_length=1)]


class RecoverParams(Params):
    images: Annotated[IdList, Field(min_length=1)]


class ModifyParams(Params):
    image: ResourceId
    image_name: ImageName | None = None
    description: Description | None = None


class ListImagesParams(Params):
    images: IdList = []
    processor_type: ProcessorType | None = None
    os_family: Annotated[str, Field(max_length=64)] | None = None
    visibility: Visibility | None = None
    provider: Provider | None = None
    status: Annotated[list[ImageStatus], ListOf] = []
    search_word: Annotated[str, Field(max_length=128)] | None = None
    offset: Offset = 0
    limit: Limit = 10


class ListJobsParams(Params):
    jobs: IdList = []
    status: Annotated[list[JobStatus], ListOf] = []
    action: Annotated[list[JobAction], ListOf] = []
    offset: Offset = 0
    limit: Limit = 10


class TokenParams(Params):
    grant_type: str = ""
    client_id: str | None = None
    client_secret: str | None = None


class ImageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    image_id: str
    image_name: str
    description: str
    size: int
    processor_type: str
    platform: str
    os_family: str
    visibility: str
    provider: str
    owner: str
    recommended_type: str
    status: str
    transition_status: str
    create_time: IsoTime
    status_time: IsoTime
    default_user: str
    default_passwd: str
    disk_format: str
    checksum: str
    checksum_algorithm: str  # how to recompute ``checksum`` (README: "Checksums")


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    job_id: str
    action: str
    status: str
    progress: int
    phase: str  # models.states.JobPhase
    create_time: IsoTime
    begin_time: IsoTime | None
    finished_time: IsoTime | None
    status_time: IsoTime
    zone: str
    resource_ids: list[str]
    owner: str
    error: JobError | None

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        error = None
        if job.error_code:
            error = JobError(code=job.error_code, message=job.error_message or "")
        return cls(
            job_id=job.job_id,
            action=job.action,
            status=job.status,
            progress=job.progress,
            phase=JobPhase.of(job.status, job.phase, job.action),
            create_time=job.create_time,
            begin_time=job.begin_time,
            finished_time=job.finished_time,
            status_time=job.status_time,
            zone=job.zone,
            resource_ids=list(job.resource_ids),
            owner=job.owner,
            error=error,
        )


class CaptureOut(JobOut):
    image_id: str


class ImagesPage(BaseModel):
    images: list[ImageOut]
    total_count: int

    @classmethod
    def from_rows(cls, rows: list[Image], total: int) -> ImagesPage:
        return cls(images=[ImageOut.model_validate(row) for row in rows], total_count=total)


class JobsPage(BaseModel):
    jobs: list[JobOut]
    total_count: int


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class ErrorOut(BaseModel):
    ret_code: int
    message: str
