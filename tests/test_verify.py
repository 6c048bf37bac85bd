"""Checksums end to end: ``imagesvc image verify``, the README's recipes, and job phases."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagesvc.settings import Settings
from models.db import Database
from models.tables import Image
from tests.support.backends import IN_CI
from tests.support.contract import TERMINAL
from tests.support.disks import MiB, chunked_checksum_of, stored_file
from tests.support.processes import run_imagesvc
from tests.support.tenants import Tenant

README = Path(__file__).resolve().parent.parent / "README.md"
PHASES = ["queued", "copying", "syncing", "uploading", "recording", "done"]


def readme_recipe(kind: str) -> str:
    """The code block that follows ``<!-- checksum-recipe:KIND -->`` in the README."""
    match = re.search(
        rf"<!-- checksum-recipe:{kind} -->\s*```\w+\n(.*?)```", README.read_text(), re.DOTALL
    )
    assert match, f"the README has no {kind} checksum recipe"
    return match.group(1)


def verify(settings: Settings, image_id: str) -> tuple[int, dict[str, Any]]:
    result = run_imagesvc(settings, "image", "verify", image_id, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, dict(json.loads(result.stdout))


def flip_one_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))


async def test_verify_matches_and_catches_a_one_byte_corruption(
    tenant: Tenant, raw_disk: Path, service_settings: Settings
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    image = await tenant.image(image_id)
    assert image["checksum_algorithm"] == "blake3-chunks-4MiB"

    code, report = verify(service_settings, image_id)
    assert code == 0
    assert report == {
        "image_id": image_id,
        "checksum_algorithm": "blake3-chunks-4MiB",
        "checksum": image["checksum"],
        "recomputed": image["checksum"],
        "matches": True,
    }

    flip_one_byte(stored_file(service_settings.image_dir, image_id), 4096 + 10)  # in the data
    code, report = verify(service_settings, image_id)
    assert code == 1
    assert report["matches"] is False and report["recomputed"] != image["checksum"]


async def test_the_readme_recipes_recompute_the_services_checksum(
    tenant: Tenant, raw_disk: Path, service_settings: Settings, tmp_path: Path
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    checksum = (await tenant.image(image_id))["checksum"]
    stored = stored_file(service_settings.image_dir, image_id)

    script = tmp_path / "recipe.py"
    script.write_text(readme_recipe("python"))
    python = subprocess.run(
        [sys.executable, str(script), str(stored)], capture_output=True, text=True, check=True
    )
    assert python.stdout.strip() == checksum

    if shutil.which("b3sum") is None:
        if IN_CI:
            pytest.fail("b3sum is required in CI (install b3sum)")
        pytest.skip("b3sum is not installed: the shell recipe cannot run here")
    shell = subprocess.run(
        ["bash", "-c", readme_recipe("shell")],
        env={"PATH": os.environ["PATH"], "FILE": str(stored)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split()[0] == checksum


def plain_sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chunked_sha256_of(path: Path) -> str:
    return chunked_checksum_of(path, "sha256-chunks-4MiB")


@pytest.mark.parametrize(
    ("algorithm", "recorded_by"),
    [("sha256", plain_sha256_of), ("sha256-chunks-4MiB", chunked_sha256_of)],
)
async def test_images_of_earlier_releases_verify_with_their_algorithm(
    tenant: Tenant,
    raw_disk: Path,
    service_settings: Settings,
    database: Database,
    algorithm: str,
    recorded_by: Callable[[Path], str],
) -> None:
    image_id = await tenant.captured_image(raw_disk)
    stored = stored_file(service_settings.image_dir, image_id)
    with database.transaction() as session:  # as the earlier release recorded it
        image = session.get(Image, image_id)
        assert image is not None
        image.checksum = recorded_by(stored)
        image.checksum_algorithm = algorithm

    code, report = verify(service_settings, image_id)
    assert (code, report["checksum_algorithm"], report["matches"]) == (0, algorithm, True)

    flip_one_byte(stored, 4096)
    code, report = verify(service_settings, image_id)
    assert (code, report["matches"]) == (1, False)


def test_verify_names_an_unknown_image(service_settings: Settings) -> None:
    result = run_imagesvc(service_settings, "image", "verify", "img-nothere", "--json")
    assert result.returncode == 2
    assert "img-nothere" in result.stderr and "Traceback" not in result.stderr


async def test_a_capture_job_goes_through_its_phases_in_order(
    tenant: Tenant, tmp_path: Path
) -> None:
    disk = tmp_path / "big.raw"
    with disk.open("wb") as f:  # enough data for the job to be seen working
        f.truncate(1 << 30)
        f.write(os.urandom(96 * MiB))
    reply = await tenant.capture(tenant.add_instance(disk))
    assert reply.status == 202, reply
    assert reply.body["phase"] == "queued"

    seen, progress = ["queued"], [0]
    while True:
        job = (await tenant.call("GET", f"/job/{reply.body['job_id']}")).body
        if job["phase"] != seen[-1]:
            seen.append(job["phase"])
        progress.append(job["progress"])
        if job["status"] in TERMINAL:
            break
        await asyncio.sleep(0.02)  # the per-test timeout bounds this loop

    assert job["status"] == "successful", job
    assert seen == sorted(seen, key=PHASES.index), f"phases out of order: {seen}"
    assert seen[-1] == "done" and len(seen) == len(set(seen))
    assert progress == sorted(progress) and progress[-1] == 100
