"""imagesvc.client against ``imagesvc api`` on a real port and a real worker."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from imagesvc.bootstrap import Services
from imagesvc.client import ApiError, Capture, Client, Image, Job, JobFailed, WaitTimeout
from imagesvc.settings import Settings
from models.images import CaptureRequest, capture_instance, delete_images
from models.scoping import Caller
from models.states import ImageAction
from models.transitions import move_images
from tests.support.deployment import serve_api
from tests.support.disks import MiB, make_raw_disk
from tests.support.processes import ServiceProcess
from tests.support.tenants import UNLIMITED, Account, register_instance


@pytest.fixture
def api(api_url: str, account: Account) -> Iterator[Client]:
    with Client(api_url, account.api_key, account.secret, poll_interval=0.05) as client:
        yield client


def small_disk(tmp_path: Path) -> Path:
    return make_raw_disk(tmp_path / f"disk-{secrets.token_hex(3)}.raw", size=2 * MiB, regions=2)


def test_capture_wait_rename_delete_recover_with_typed_results(
    api: Client, account: Account, services: Services, tmp_path: Path
) -> None:
    instance = register_instance(services.database, account.account_id, small_disk(tmp_path))
    capture = api.capture(instance, image_name="first")
    assert isinstance(capture, Capture) and capture.image_id.startswith("img-")
    assert capture.status == "pending" and set(capture.resource_ids) == {capture.image_id, instance}

    seen: list[Job] = []
    job = api.wait(capture, timeout=60, on_progress=seen.append)
    assert job.status == "successful" and job.progress == 100 and job.error is None
    assert seen and seen[-1].status == "successful"
    assert job.finished_time is not None and job.finished_time.tzinfo is not None

    [image] = api.images(images=[capture.image_id])
    assert isinstance(image, Image) and image.status == "available"
    assert image.image_name == "first" and image.size == 1  # GB, rounded up

    renamed = api.modify(capture.image_id, image_name="second", description="renamed")
    assert renamed.action == "ModifyImageAttributes" and renamed.status == "successful"
    [image] = api.images(images=[capture.image_id])
    assert (image.image_name, image.description) == ("second", "renamed")

    deleted = api.wait(api.delete(capture.image_id), timeout=60)
    assert deleted.action == "DeleteImages"
    [image] = api.images(images=[capture.image_id], status=["deleted"])
    assert image.status == "deleted"

    api.wait(api.recover(capture.image_id).job_id, timeout=60)
    [image] = api.images(images=[capture.image_id])
    assert image.status == "available"
    assert api.job(job.job_id) == job


def test_lists_walk_every_page_and_take_every_filter(
    api: Client, account: Account, services: Services, tmp_path: Path
) -> None:
    captures = [
        api.capture(register_instance(services.database, account.account_id, small_disk(tmp_path)))
        for _ in range(3)
    ]
    for capture in captures:
        api.wait(capture, timeout=60)
    api.page_size = 2
    own = list(api.images(provider="self", visibility="private", processor_type="64bit"))
    assert {image.image_id for image in own} == {c.image_id for c in captures}
    assert list(api.images(provider="self", search_word=captures[0].image_id)) == [
        image for image in own if image.image_id == captures[0].image_id
    ]
    assert list(api.images(provider="self", os_family="no-such-os")) == []
    assert list(api.images(provider="self", status=["ceased", "deleted"])) == []

    jobs = list(api.jobs(action=["CaptureInstance"], status=["successful"]))
    assert [job.job_id for job in jobs] == [c.job_id for c in reversed(captures)]
    assert [job.job_id for job in api.jobs(jobs=[captures[1].job_id])] == [captures[1].job_id]


def test_a_failed_capture_raises_job_failed_with_its_error(
    api: Client, account: Account, services: Services, tmp_path: Path
) -> None:
    disk = small_disk(tmp_path)
    instance = register_instance(services.database, account.account_id, disk)
    disk.unlink()
    capture = api.capture(instance, image_name="doomed")
    with pytest.raises(JobFailed) as failed:
        api.wait(capture, timeout=60)
    assert failed.value.job.status == "failed" and failed.value.job.job_id == capture.job_id
    assert failed.value.code and instance in failed.value.message
    [image] = api.images(images=[capture.image_id], status=["ceased"])
    assert image.status == "ceased"


def test_done_with_failure_raises_job_failed(
    api: Client, account: Account, services: Services, tmp_path: Path
) -> None:
    captures = [
        api.capture(register_instance(services.database, account.account_id, small_disk(tmp_path)))
        for _ in range(2)
    ]
    for capture in captures:
        api.wait(capture, timeout=60)
    kept, deleted = captures[0].image_id, captures[1].image_id
    # A delete recorded as the API records it; before a worker runs it, one of its images
    # changes (its deletion is cancelled), so the job can finish only part of its work.
    with services.database.transaction() as session:
        job = delete_images(session, Caller(account.account_id, "ac1"), [kept, deleted])
        move_images(session, [kept], ImageAction.CANCEL_DELETE)
    assert services.job_queue.send(job.job_id)

    with pytest.raises(JobFailed) as failed:
        api.wait(job.job_id, timeout=60)
    assert failed.value.job.status == "done with failure"
    assert failed.value.code == "ImagesChanged" and "1 image" in failed.value.message
    statuses = api.images(images=[kept, deleted], status=["available", "deleted"])
    assert {image.image_id: image.status for image in statuses} == {
        kept: "available",
        deleted: "deleted",
    }


def test_api_errors_carry_status_ret_code_and_message(api: Client, api_url: str) -> None:
    with pytest.raises(ApiError) as missing:
        api.capture("i-nothere")
    assert (missing.value.status, missing.value.ret_code) == (404, 2100)
    assert "i-nothere" in missing.value.message

    with pytest.raises(ApiError) as bad_filter:
        list(api.images(status=["bogus"]))
    assert (bad_filter.value.status, bad_filter.value.ret_code) == (400, 1100)
    assert "status" in bad_filter.value.message

    with Client(api_url, "no-such-key", "wrong") as stranger, pytest.raises(ApiError) as refused:
        stranger.job("j-whatever")
    assert (refused.value.status, refused.value.ret_code) == (401, 1200)


def test_a_refused_token_is_renewed_once_and_the_call_goes_through(api: Client) -> None:
    list(api.jobs())
    api._token = "revoked-or-expired"  # as if the server had forgotten it
    assert list(api.jobs()) == []


def test_wait_gives_up_after_its_timeout(
    api: Client, account: Account, services: Services, tmp_path: Path
) -> None:
    instance_id = register_instance(services.database, account.account_id, small_disk(tmp_path))
    instance = services.inventory.find("ac1", instance_id)
    assert instance is not None
    with services.database.transaction() as session:
        wanted = CaptureRequest(instance_id, instance, "never sent")
        capture = capture_instance(session, Caller(account.account_id, "ac1"), wanted, UNLIMITED)
    # Recorded but never sent (no scheduler runs in the tests), so it stays pending.
    with pytest.raises(WaitTimeout) as timed_out:
        api.wait(capture.job.job_id, timeout=0.3)
    assert timed_out.value.job.status == "pending"


@pytest.fixture(scope="module")
def short_token_api_url(service_settings: Settings, worker: ServiceProcess) -> Iterator[str]:
    """A second ``imagesvc api`` whose tokens last two seconds."""
    process, url = serve_api(service_settings.model_copy(update={"token_ttl": 2}))
    yield url
    process.stop()


def test_a_token_is_renewed_before_it_expires(short_token_api_url: str, account: Account) -> None:
    statuses: list[int] = []
    with Client(short_token_api_url, account.api_key, account.secret) as api:
        api._http.event_hooks["response"].append(lambda reply: statuses.append(reply.status_code))
        list(api.jobs())
        first = api._token
        time.sleep(1.2)  # past half of the two-second lifetime, before its end
        list(api.jobs())
        assert api._token != first, "the token was not renewed"
    assert 401 not in statuses, statuses


def test_captures_finish_after_the_server_ends_every_connection_of_the_service(
    api: Client, account: Account, services: Services, tmp_path: Path
) -> None:
    """A PostgreSQL restart, as the worker's pool processes meet it: every connection ended
    while they idle. The next delete and capture still finish (a connection the worker
    keeps between delete jobs must not go back into its pool unnoticed: a capture that
    drew it once lost its run and stayed working until the sweep's timeout)."""
    if services.database.engine.dialect.name != "postgresql":
        pytest.skip("a SQLite file has no connection to lose")
    end_others = text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    for round_number in range(3):
        instance = register_instance(services.database, account.account_id, small_disk(tmp_path))
        captured = api.wait(api.capture(instance, image_name=f"r{round_number}"), timeout=60)
        assert captured.status == "successful"
        assert api.wait(api.delete(captured.resource_ids[0]), timeout=60).status == "successful"
        with services.database.engine.connect() as admin:
            admin.execute(end_others)
            admin.commit()
        time.sleep(1.5)  # longer than the worker's connections may idle unchecked
