"""Which backends the tests run on, and the tools they check results with.

With no ``IMAGESVC_TEST_*`` variables the tests run on SQLite and the
embedded broker (the fresh-machine tier). With
``IMAGESVC_TEST_DATABASE_URL`` and ``IMAGESVC_TEST_REDIS_URL`` they run the
same tests on PostgreSQL and Redis. Under ``CI=true`` a configured service
that is unreachable fails the run; it never turns into a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_DATABASE_URL = os.environ.get("IMAGESVC_TEST_DATABASE_URL", "")
TEST_REDIS_URL = os.environ.get("IMAGESVC_TEST_REDIS_URL", "")


def require_qemu_img() -> str:
    """qemu-img's path; skip if it is missing locally, fail if missing in CI."""
    exe = shutil.which("qemu-img")
    if exe is None:
        if IN_CI:
            pytest.fail("qemu-img is required in CI (install qemu-utils)")
        pytest.skip("qemu-img is not installed")
    return exe


def qemu_img_info(path: Path, disk_format: str) -> dict[str, Any]:
    """What ``qemu-img info`` says of a stored file (qemu-img must be present)."""
    result = subprocess.run(
        [require_qemu_img(), "info", "--output=json", "-f", disk_format, str(path)],
        capture_output=True,
        check=True,
    )
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def check_redis() -> None:
    """Fail (never skip) when the tier's Redis does not answer."""
    if not TEST_REDIS_URL:
        return
    import redis

    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {TEST_REDIS_URL} is unreachable: {exc}")


def drop_queue(queue: str) -> None:
    """Remove a test deployment's queues from the shared Redis (the embedded one is a dir)."""
    if not TEST_REDIS_URL:
        return
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    # The shared queue and every compute host's queue (<queue>.host.<name>).
    for key in client.scan_iter(f"{queue}*"):
        client.delete(key)
