"""The operator's ``imagesvc`` command, and ``imagesvc up`` running the whole service."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from imagesvc.settings import Settings
from tests.support.backends import IN_CI, qemu_img_info
from tests.support.databases import scratch_database
from tests.support.deployment import make_settings
from tests.support.disks import MiB, make_raw_disk, stored_file
from tests.support.http import Client
from tests.support.processes import ServiceProcess, free_port, run_imagesvc
from tests.support.tenants import Tenant

# ``image import`` makes a public image: every tenant of the deployment would see it.
pytestmark = pytest.mark.own_deployment


def imagesvc_json(settings: Settings, *argv: str) -> dict[str, Any]:
    result = run_imagesvc(settings, *argv, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_account_create_prints_credentials_that_get_a_token(service_settings: Settings) -> None:
    created = imagesvc_json(service_settings, "account", "create", "alice")
    assert set(created) == {"account_id", "api_key", "secret"}
    assert created["account_id"].startswith("usr-")


async def test_instance_commands_drive_what_can_be_captured(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    added = imagesvc_json(
        service_settings,
        "instance", "add", "--zone", "ac1", "--owner", tenant.account_id,
        "--disk", str(raw_disk), "--status", "running", "--os-family", "debian",
    )  # fmt: skip
    instance_id = added["instance_id"]
    assert (await tenant.capture(instance_id)).status == 409
    assert (
        run_imagesvc(service_settings, "instance", "set-status", instance_id, "stopped").returncode
        == 0
    )
    reply = await tenant.capture(instance_id)
    assert reply.status == 202, reply
    assert (await tenant.wait_job(reply.body["job_id"]))["status"] == "successful"
    assert (await tenant.image(reply.body["image_id"]))["os_family"] == "debian"


def test_instance_add_refuses_unknown_owners_zones_and_disks(
    service_settings: Settings, raw_disk: Path, tmp_path: Path
) -> None:
    base = ["instance", "add", "--disk", str(raw_disk)]
    no_owner = run_imagesvc(service_settings, *base, "--zone", "ac1", "--owner", "usr-nobody")
    assert no_owner.returncode != 0 and "usr-nobody" in no_owner.stderr
    assert "Traceback" not in no_owner.stderr
    bad_zone = run_imagesvc(service_settings, *base, "--zone", "zz", "--owner", "usr-nobody")
    assert bad_zone.returncode != 0 and "zz" in bad_zone.stderr
    missing = run_imagesvc(
        service_settings, "instance", "add", "--zone", "ac1", "--owner", "usr-x",
        "--disk", str(tmp_path / "nothere.raw"),
    )  # fmt: skip
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    unknown = run_imagesvc(service_settings, "instance", "set-status", "i-nothere", "running")
    assert unknown.returncode != 0 and "i-nothere" in unknown.stderr


async def test_image_import_makes_a_public_system_image(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    imported = imagesvc_json(
        service_settings,
        "image", "import", "--zone", "ac1", "--disk", str(raw_disk), "--name", "ubuntu-24.04",
        "--os-family", "ubuntu", "--default-user", "ubuntu",
    )  # fmt: skip
    image = await tenant.image(imported["image_id"])
    assert (image["provider"], image["visibility"], image["status"]) == (
        "system",
        "public",
        "available",
    )
    assert (image["image_name"], image["os_family"]) == ("ubuntu-24.04", "ubuntu")
    # Copied by a worker as a capture is, into a file named by the image and the run.
    stored = stored_file(service_settings.image_dir, imported["image_id"])
    assert stored.name == f"{imported['image_id']}.1.raw"
    assert stored.read_bytes() == raw_disk.read_bytes()


def test_up_runs_the_walkthrough_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """The README's walk-through, against ``imagesvc up`` on the configured backends."""
    data_dir = tmp_path / "var"
    with scratch_database(tmp_path) as url:
        settings = make_settings(data_dir, url)
        port = free_port()
        service = ServiceProcess(settings, "up", "--port", str(port))
        try:
            http = Client(port)
            http.wait_until_up(service)
            _walkthrough(settings, http, tmp_path)
            _check_metrics_and_startup_lines(http, service)
        finally:
            # Ctrl-C in a terminal signals the whole foreground process group.
            os.killpg(service.process.pid, signal.SIGINT)
            code = service.stop(timeout=90)
        assert code == 0, service.log()
        assert "Traceback" not in service.log(), service.log()


def test_ctrl_c_during_the_schema_upgrade_lets_it_finish_and_starts_nothing(
    tmp_path: Path,
) -> None:
    """Ctrl-C while ``imagesvc up`` still upgrades the schema: no traceback, exit 130, and
    not one of the three services started."""
    with scratch_database(tmp_path) as url:
        settings = make_settings(tmp_path / "var", url, log_level="DEBUG")
        service = ServiceProcess(settings, "up", "--port", str(free_port()))
        try:
            service.wait_for_output("Running upgrade", timeout=60)  # the first migration
            os.killpg(service.process.pid, signal.SIGINT)
            code = service.process.wait(timeout=90)
        finally:
            service.stop(timeout=30)
        assert code == 130, service.log()
        assert "Traceback" not in service.log(), service.log()
        assert "imagesvc.supervisor DEBUG started" not in service.log(), service.log()
        again = run_imagesvc(settings, "db", "upgrade")
        assert "Running upgrade" not in again.stderr, "the upgrade was cut short"


def _walkthrough(settings: Settings, http: Client, tmp_path: Path) -> None:
    account = imagesvc_json(settings, "account", "create", "alice")
    disk = make_raw_disk(tmp_path / "vm.raw", size=1024 * MiB + 512 * MiB, regions=8)
    instance = imagesvc_json(
        settings, "instance", "add", "--zone", "ac1", "--owner", account["account_id"],
        "--disk", str(disk),
    )  # fmt: skip
    http.sign_in(account["api_key"], account["secret"])
    reply = http.curl(
        "POST", "/v2/zone/ac1/images",
        f'{{"instance":"{instance["instance_id"]}","image_name":"TEST"}}',
    )  # fmt: skip
    assert reply.status == 202, reply
    capture = reply.body
    job = http.wait_job(capture["job_id"])
    assert job["status"] == "successful", job
    listed = http.curl("GET", "/v2/zone/ac1/images", "\n")
    assert listed.status == 200, listed
    image = listed.body["images"][0]
    assert image["image_id"] == capture["image_id"] and image["status"] == "available"
    stored = stored_file(settings.image_dir, image["image_id"])
    assert stored.stat().st_size == disk.stat().st_size
    assert image["size"] == math.ceil(disk.stat().st_size / 1024**3) == 2
    _check_with_qemu_img(stored, image["size"])


def _check_metrics_and_startup_lines(http: Client, service: ServiceProcess) -> None:
    """The API process serves the job counts the worker process wrote; startup is quiet."""
    counted = 'imagesvc_jobs_finished_total{action="CaptureInstance",status="successful"} 1.0'
    for _ in range(50):  # the worker counts a job just after it commits the outcome
        with urllib.request.urlopen(http.base + "/metrics", timeout=10) as response:
            page = response.read().decode()
        if counted in page:
            break
        time.sleep(0.1)
    assert counted in page, page
    assert 'route="/v2/zone/{zone}/images"' in page  # the API's own counters, from its files
    assert sum(f"Running on {http.base}" in line for line in service.output) == 1
    assert not any("celery@" in line or "Task " in line for line in service.output)


def _check_with_qemu_img(stored: Path, size_gb: int) -> None:
    if shutil.which("qemu-img") is None and not IN_CI:
        return  # the walk-through works without it; CI has it
    info = qemu_img_info(stored, "raw")
    assert math.ceil(info["virtual-size"] / 1024**3) == size_gb
