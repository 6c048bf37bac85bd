"""A Python client for the imagesvc API.

    from imagesvc.client import Client, JobFailed

    with Client("http://127.0.0.1:8080", api_key, secret) as images:
        capture = images.capture("i-1234abcd", image_name="web")
        job = images.wait(capture, on_progress=lambda job: print(job.progress))

The client gets its bearer token itself, renews it before it expires (and
once more if the server refuses it), walks every page of a list, and
``wait`` raises :class:`JobFailed` on ``failed`` and on ``done with failure``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

SUCCESSFUL = "successful"
FAILED = "failed"
DONE_WITH_FAILURE = "done with failure"
TERMINAL = frozenset({SUCCESSFUL, FAILED, DONE_WITH_FAILURE})
PAGE_SIZE = 100  # the server's largest page
TOKEN_MARGIN = 60.0  # seconds before expiry at which a token is renewed

ModelT = TypeVar("ModelT", bound=BaseModel)


class Result(BaseModel):
    # Newer servers may send fields this client does not know yet: keep them, don't fail.
    model_config = ConfigDict(extra="allow", frozen=True)


class JobError(Result):
    code: str
    message: str


class Job(Result):
    """A job; ``status`` is terminal once it is ``successful``, ``failed`` or
    ``done with failure``."""

    job_id: str
    action: str
    status: str
    progress: int = 0
    phase: str | None = None
    create_time: datetime
    begin_time: datetime | None = None
    finished_time: datetime | None = None
    status_time: datetime
    zone: str
    resource_ids: list[str]
    owner: str
    error: JobError | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


class Capture(Job):
    """A capture's job, and the id of the image it creates."""

    image_id: str


class Image(Result):
    """An image; ``size`` is in GB, times are UTC."""

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
    create_time: datetime
    status_time: datetime
    default_user: str
    default_passwd: str
    disk_format: str = ""
    checksum: str = ""


class ApiError(Exception):
    """The API refused a request: its HTTP ``status``, ``ret_code`` and ``message``."""

    def __init__(self, status: int, ret_code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, ret_code {ret_code})")
        self.status = status
        self.ret_code = ret_code
        self.message = message


class JobFailed(Exception):
    """A job ended ``failed`` or ``done with failure``; ``job`` is its last state."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.code = job.error.code if job.error else ""
        self.message = job.error.message if job.error else f"job {job.status}"
        super().__init__(f"job {job.job_id} {job.status}: {self.code}: {self.message}")


class WaitTimeout(TimeoutError):
    """A job was still running when ``wait`` gave up; ``job`` is its last state."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.job_id} is still {job.status} after {timeout:g} s")


class Client:
    """One account's calls in one zone. Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        secret: str,
        zone: str = "ac1",
        *,
        timeout: float = 30.0,
        poll_interval: float = 1.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.zone = zone
        self.poll_interval = poll_interval
        self.page_size = page_size
        self._credentials = (api_key, secret)
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self._token = ""
        self._token_expires = 0.0

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # The API's operations.

    def capture(
        self, instance: str, image_name: str | None = None, request_id: str | None = None
    ) -> Capture:
        """Capture a stopped instance into a new image; returns its job (and ``image_id``)."""
        body = _without_none(instance=instance, image_name=image_name, request_id=request_id)
        return Capture.model_validate(self._call("POST", "/images", json=body))

    def images(
        self,
        *,
        images: list[str] | None = None,
        processor_type: str | None = None,
        os_family: str | None = None,
        visibility: str | None = None,
        provider: str | None = None,
        status: list[str] | None = None,
        search_word: str | None = None,
    ) -> Iterator[Image]:
        """Public images and your own, newest first, over every page; every filter is
        optional (without ``status``, ``ceased`` images are left out)."""
        filters = _without_none(
            images=images,
            processor_type=processor_type,
            os_family=os_family,
            visibility=visibility,
            provider=provider,
            status=status,
            search_word=search_word,
        )
        return self._pages("/images", "images", filters, Image)

    def modify(
        self, image: str, image_name: str | None = None, description: str | None = None
    ) -> Job:
        """Change an image's name and/or description; the job is already successful."""
        body = _without_none(image=image, image_name=image_name, description=description)
        return Job.model_validate(self._call("PUT", "/images", json=body))

    def delete(self, *image_ids: str, request_id: str | None = None) -> Job:
        """Delete your images, all of them or none; they stay recoverable for a while."""
        if not image_ids:
            raise ValueError("delete() needs at least one image id")
        body = _without_none(request_id=request_id)
        path = "/images/" + ",".join(image_ids)
        return Job.model_validate(self._call("DELETE", path, json=body))

    def recover(self, *image_ids: str) -> Job:
        """Bring your deleted images back, within the retention window."""
        body = {"images": list(image_ids)}
        return Job.model_validate(self._call("POST", "/images/recover", json=body))

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._call("GET", f"/job/{job_id}"))

    def jobs(
        self,
        *,
        jobs: list[str] | None = None,
        status: list[str] | None = None,
        action: list[str] | None = None,
    ) -> Iterator[Job]:
        """Your jobs, newest first, over every page; every filter is optional."""
        filters = _without_none(jobs=jobs, status=status, action=action)
        return self._pages("/jobs", "jobs", filters, Job)

    def wait(
        self,
        job_or_id: Job | str,
        timeout: float | None = None,
        on_progress: Callable[[Job], object] | None = None,
    ) -> Job:
        """Poll a job until it ends: the job if ``successful``, else :class:`JobFailed`.

        ``on_progress`` gets the job each time its status, phase or progress
        changes; past ``timeout`` seconds, :class:`WaitTimeout` is raised.
        """
        job_id = job_or_id if isinstance(job_or_id, str) else job_or_id.job_id
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, str | None, int] | None = None
        while True:
            job = self.job(job_id)
            if on_progress and (job.status, job.phase, job.progress) != seen:
                seen = (job.status, job.phase, job.progress)
                on_progress(job)
            if job.is_terminal:
                if job.status != SUCCESSFUL:
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job, timeout or 0.0)
            time.sleep(self._pause(deadline))

    # Plumbing.

    def _pause(self, deadline: float | None) -> float:
        if deadline is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, deadline - time.monotonic()))

    def _pages(
        self, path: str, key: str, filters: dict[str, Any], model: type[ModelT]
    ) -> Iterator[ModelT]:
        offset = 0
        while True:
            params = {**_as_query(filters), "offset": offset, "limit": self.page_size}
            page = self._call("GET", path, params=params)
            for item in page[key]:
                yield model.model_validate(item)
            offset += len(page[key])
            if not page[key] or offset >= page["total_count"]:
                return

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call under the zone, with a fresh token; a refused token is renewed once."""
        url = f"/v2/zone/{self.zone}{path}"
        response = self._http.request(method, url, headers=self._auth(), **kwargs)
        if response.status_code == 401:
            self._token = ""
            response = self._http.request(method, url, headers=self._auth(), **kwargs)
        return _json_or_raise(response)

    def _auth(self) -> dict[str, str]:
        if not self._token or time.monotonic() >= self._token_expires:
            self._renew_token()
        return {"Authorization": f"Bearer {self._token}"}

    def _renew_token(self) -> None:
        response = self._http.post(
            "/v2/oauth2/token",
            auth=self._credentials,
            data={"grant_type": "client_credentials"},
        )
        token = _json_or_raise(response)
        self._token = token["access_token"]
        lifetime = float(token["expires_in"])
        # Renew a minute early (or halfway through a short-lived token).
        self._token_expires = time.monotonic() + max(lifetime - TOKEN_MARGIN, lifetime / 2)


def _json_or_raise(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and body is not None:
        return body
    if isinstance(body, dict) and "ret_code" in body:
        raise ApiError(response.status_code, int(body["ret_code"]), str(body.get("message")))
    text = response.text.strip()[:200] or response.reason_phrase
    raise ApiError(response.status_code, 0, f"unexpected reply: {text}")


def _without_none(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _as_query(filters: dict[str, Any]) -> dict[str, Any]:
    """Lists comma-joined, the SDK's form the server reads."""
    return {
        name: ",".join(value) if isinstance(value, list) else value
        for name, value in filters.items()
    }
