"""Request and response shapes, defined once and used both ways.

Requests validate through these models; responses serialise through them,
so an OpenAPI document can be generated from them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from sqlalchemy import Row

from api.limits import JsonRejected, decode_json
from models.images import ImageFilters
from models.states import (
    ImageStatus,
    JobAction,
    JobPhase,
    JobStatus,
    Platform,
    ProcessorType,
    Provider,
    TransitionStatus,
    Visibility,
)
from models.tables import Image, Job

MAX_LIMIT = 100
MAX_IDS = 100
MAX_OFFSET = 2**31 - 1


_DIGITS = re.compile(r"[0-9]{1,100}")
# Bidirectional formatting characters: they make a name read differently than it sorts.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e") | frozenset(
    "\u2066\u2067\u2068\u2069"
)


def _as_list(value: Any) -> Any:
    """A JSON array, a comma-joined string, or repeated keys: all become a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        value = _json_array(text) if text.startswith("[") else [value]
    if not isinstance(value, list):
        return value
    if not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of strings")
    return [part.strip() for item in value for part in item.split(",") if part.strip()]


def _json_array(text: str) -> Any:
    try:
        return decode_json(text)
    except JsonRejected as exc:
        raise ValueError(f"a JSON array is expected, but {exc}") from None


def _whole_number(value: Any) -> Any:
    """An integer, from JSON or as decimal digits: the same rule for the body and the query.

    ``true``, ``1.0`` and ``"1_000"`` are refused: a client sending them has a bug.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a whole number")
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise ValueError("must be a whole number of at most 100 decimal digits")
        return int(value)
    return value


def _plain_text(value: str) -> str:
    """Trimmed of surrounding white space; control and bidi characters are refused."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs") or char in _BIDI_CONTROLS:
            raise ValueError(f"must not contain the control character U+{ord(char):04X}")
    return value.strip()


def _at_most_100(value: int) -> int:
    return min(value, MAX_LIMIT)


ListOf = BeforeValidator(_as_list)
RESOURCE_ID = re.compile(r"[A-Za-z0-9-]{1,32}")
ResourceId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]
IdList = Annotated[list[ResourceId], ListOf, Field(max_length=MAX_IDS)]
WholeNumber = BeforeValidator(_whole_number)
PlainText = AfterValidator(_plain_text)
Offset = Annotated[int, WholeNumber, Field(ge=0, le=MAX_OFFSET)]
Limit = Annotated[int, WholeNumber, Field(ge=0), AfterValidator(_at_most_100)]


def iso_time(t: datetime) -> str:
    """``t`` (UTC) as the API writes times: ``%Y-%m-%dT%H:%M:%SZ``, without strftime's cost."""
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


IsoTime = Annotated[
    datetime,
    PlainSerializer(iso_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-27T04:46:17Z"]}),
]
ImageName = Annotated[str, Field(max_length=128), PlainText]
Description = Annotated[str, Field(max_length=1024), PlainText]


class Params(BaseModel):
    # Unknown parameters are ignored, as QingCloud does: SDKs send extras.
    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)


RequestId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class CaptureParams(Params):
    """Capture a stopped instance into a new image."""

    instance: ResourceId
    """The id of the instance to capture (`i-` prefix); it must be yours and stopped."""
    image_name: ImageName | None = None
    """The new image's name; empty if not given."""
    request_id: RequestId | None = None
    """Idempotency key: the same caller repeating it within 24 hours gets the first job back."""


class RequestIdParams(Params):
    """An optional idempotency key."""

    request_id: RequestId | None = None
    """Idempotency key: the same caller repeating it within 24 hours gets the first job back."""


class DeleteParams(Params):
    images: Annotated[IdList, Field(min_length=1)]
    """The ids of the images to delete (`img-` prefix): all of them are deleted, or none."""


class RecoverParams(Params):
    """Bring deleted images back within the retention window."""

    images: Annotated[IdList, Field(min_length=1)]
    """The ids of your deleted images: all of them are recovered, or none."""


class ModifyParams(Params):
    """Change one image's name and/or description."""

    image: ResourceId
    """The id of your image (`img-` prefix)."""
    image_name: ImageName | None = None
    """The new name; unchanged if not given."""
    description: Description | None = None
    """The new description; unchanged if not given."""


class ListImagesParams(Params):
    """Filters for public images and your own; all of them optional."""

    images: IdList = []
    """Only these image ids."""
    processor_type: ProcessorType | None = None
    """Only images for this processor type."""
    os_family: Annotated[str, Field(max_length=64), PlainText] | None = None
    """Only this operating system family, e.g. `ubuntu`, `centos`, `windows`."""
    visibility: Visibility | None = None
    """Only `public` or only `private` images."""
    provider: Provider | None = None
    """`system`: images the platform ships; `self`: images you captured."""
    status: Annotated[list[ImageStatus], ListOf] = []
    """Only images in these statuses; without it, every status but `ceased`."""
    search_word: Annotated[str, Field(max_length=128), PlainText] | None = None
    """Only images whose id or name contains this text."""
    offset: Offset = 0
    """How many matching images to skip."""
    limit: Limit = 10
    """How many images to return at most; above 100 is served as 100."""

    @functools.cached_property
    def filters(self) -> ImageFilters:
        """The listing's filters: built once per query string, whose parameters
        api/params.py remembers."""
        return ImageFilters(**self.model_dump())


class ListJobsParams(Params):
    """Filters for your jobs; all of them optional."""

    jobs: IdList = []
    """Only these job ids."""
    status: Annotated[list[JobStatus], ListOf] = []
    """Only jobs in these statuses."""
    action: Annotated[list[JobAction], ListOf] = []
    """Only jobs of these actions."""
    offset: Offset = 0
    """How many matching jobs to skip."""
    limit: Limit = 10
    """How many jobs to return at most; above 100 is served as 100."""


class TokenParams(Params):
    """OAuth2 client credentials (RFC 6749 section 4.4)."""

    grant_type: Annotated[str, Field(max_length=64)] = ""
    """Must be `client_credentials`."""
    client_id: Annotated[str, Field(max_length=256)] | None = None
    """Your API key, if not sent as HTTP Basic credentials."""
    client_secret: Annotated[str, Field(max_length=256)] | None = None
    """Your secret, if not sent as HTTP Basic credentials."""


class RevokeParams(TokenParams):
    """RFC 7009: the token to revoke, and the client's own credentials."""

    token: Annotated[str, Field(min_length=1, max_length=256)]
    """The access token to revoke."""
    token_type_hint: Annotated[str, Field(max_length=64)] | None = None
    """Ignored: only access tokens exist."""


class RevokeOut(BaseModel):
    """An empty object: the token no longer works (RFC 7009 answers 200 for unknown ones too)."""


class ImageOut(BaseModel):
    """An image: a captured instance disk, or a system image the platform ships."""

    model_config = ConfigDict(from_attributes=True, use_attribute_docstrings=True)

    image_id: str
    """The image id, `img-` prefix."""
    image_name: str
    """Its name."""
    description: str
    """Its description."""
    size: int
    """The disk's virtual size in GB (2^30 bytes), rounded up."""
    processor_type: ProcessorType
    """`64bit` or `32bit`."""
    platform: Platform
    """`linux` or `windows`."""
    os_family: str
    """The operating system family, e.g. `ubuntu`."""
    visibility: Visibility
    """`public`: every account sees it; `private`: only its owner."""
    provider: Provider
    """`system`: shipped by the platform, read-only; `self`: captured by a user."""
    owner: str
    """The account that owns it."""
    recommended_type: str
    """The instance type recommended for it."""
    status: ImageStatus
    """Where the image is in its lifecycle."""
    transition_status: TransitionStatus
    """The move in progress, or `""` when none is."""
    create_time: IsoTime
    """When it was created, UTC."""
    status_time: IsoTime
    """When its status last changed, UTC."""
    default_user: str
    """The login user of instances made from it."""
    default_passwd: str
    """The default password of instances made from it (empty: none)."""
    disk_format: str
    """The stored file's format: `raw` or `qcow2`."""
    checksum: str
    """The stored file's checksum, hex, computed as `checksum_algorithm` says; empty until the
    capture has finished."""
    checksum_algorithm: str
    """`blake3-chunks-4MiB` (BLAKE3 of the BLAKE3 digests of each 4 MiB chunk; this release),
    `sha256-chunks-4MiB` (the same with SHA-256; the previous release) or `sha256` (the whole
    file; earlier releases). The README gives the recipes to recompute it."""


class JobError(BaseModel):
    """Why a job failed."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    code: str
    """A short name of the failure, e.g. `DiskNotFound`, `WorkerLost`, `ImagesChanged`."""
    message: str
    """What went wrong, naming the resource."""


class JobOut(BaseModel):
    """A job: the slow work a request started. Poll it until its status is terminal."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    job_id: str
    """The job id, `j-` prefix."""
    action: JobAction
    """What the job does."""
    status: JobStatus
    """`pending` → `working` → `successful`, `failed` or `done with failure`."""
    progress: int
    """Percent done, 0 to 100, counted in data bytes (holes are not work)."""
    phase: str
    """What a working job is doing: `queued`, `copying`, `syncing`, `uploading`, `recording`
    or `done`."""
    create_time: IsoTime
    """When the job was accepted, UTC."""
    begin_time: IsoTime | None
    """When a worker began it, UTC; null while pending."""
    finished_time: IsoTime | None
    """When it reached a terminal status, UTC; null until then."""
    status_time: IsoTime
    """When its status last changed, UTC."""
    zone: str
    """The zone it runs in."""
    resource_ids: list[str]
    """The images (and, for a capture, the instance) it touches."""
    owner: str
    """The account that started it."""
    error: JobError | None
    """Null unless the job is `failed` or `done with failure`."""

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        error = None
        if job.error_code:
            error = JobError(code=job.error_code, message=job.error_message or "")
        return cls(
            job_id=job.job_id,
            action=JobAction(job.action),
            status=JobStatus(job.status),
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
    """The capture job, and the id of the image it is creating."""

    image_id: str
    """The new image's id; the image is `pending` until the job is `successful`."""


class OperatorJobOut(JobOut):
    """A job as the operator sees it (``imagesvc job show``): also where and how often it ran.

    Never served by the API: tenants do not learn the cloud's hosts and workers.
    """

    host: str
    worker: str
    attempts: int

    @classmethod
    def from_job(cls, job: Job) -> OperatorJobOut:
        tenant_view = JobOut.from_row(job).model_dump()
        return cls(**tenant_view, host=job.host, worker=job.worker, attempts=job.attempts)


class ImagesPage(BaseModel):
    """One page of images, newest first."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    images: list[ImageOut]
    """The images on this page."""
    total_count: int
    """How many images match the filters in all pages."""

    @classmethod
    def from_rows(cls, rows: Sequence[Image | Row[Any]], total: int) -> ImagesPage:
        return cls(images=[ImageOut.model_validate(row) for row in rows], total_count=total)


class JobsPage(BaseModel):
    """One page of jobs, newest first."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    jobs: list[JobOut]
    """The jobs on this page."""
    total_count: int
    """How many jobs match the filters in all pages."""


class TokenOut(BaseModel):
    """A bearer token for every other call."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    access_token: str
    """Send it as `Authorization: Bearer <access_token>`."""
    token_type: str = "Bearer"
    """Always `Bearer`."""
    expires_in: int
    """Seconds until the token expires."""


class HealthOut(BaseModel):
    """Whether the service's dependencies answer."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    database: str
    """`ok` or `down`."""
    broker: str
    """`ok` or `down`."""


class ErrorOut(BaseModel):
    """Every failure: the contract's status code, with this body."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    ret_code: int
    """1100 bad parameter, 1200 authentication, 1400 denied or state conflict, 2100 not found,
    2500 quota, 5000 internal, 5100 a dependency is down."""
    message: str
    """What was wrong, naming the parameter or resource."""
