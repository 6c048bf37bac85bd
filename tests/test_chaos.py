"""Nothing lost, nothing done twice: real processes killed and restarted mid-work.

Each scenario runs a scratch deployment (its own database, queue and store)
and ends with :meth:`ChaosEnv.settle`, which checks the invariants and
prints a one-line summary. Counts and times are bounded.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from imagesvc.settings import Settings
from models.tables import Job
from tests.chaos import (
    CHAOS_SETTINGS,
    ChaosEnv,
    scenario_timeout,
    show_summaries,
)
from tests.support.backends import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.support.disks import MiB, make_raw_disk

needs_services = pytest.mark.skipif(
    not (TEST_DATABASE_URL and TEST_REDIS_URL),
    reason="restarts PostgreSQL and Redis: runs in the PostgreSQL + Redis tier",
)


# Workers killed mid-capture: twenty on PostgreSQL + Redis, the production stack; five on
# the embedded default, which the scenario's other runs cover (a minute of CI each).
KILLS = 20 if TEST_DATABASE_URL and TEST_REDIS_URL else 5


@scenario_timeout(400)
def test_sigkill_the_worker_mid_capture_again_and_again(chaos: ChaosEnv) -> None:
    chaos.start("scheduler")
    chaos.start_api()
    chaos.sign_up()
    disk = make_raw_disk(chaos.tmp / "big.raw", size=1024 * MiB, data=256 * MiB)
    instances = chaos.add_instances(disk, KILLS)
    client = chaos.client()
    accepted = []
    for instance_id in instances:
        worker = chaos.start_worker()
        reply = client.call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
        assert reply.status == 202, reply
        accepted.append(reply.body["job_id"])
        chaos.wait_for_status(reply.body["job_id"], {"working"})
        chaos.kill(worker)
    chaos.start_worker()
    outcome = chaos.settle("sigkill-worker", accepted)
    outcome.assert_clean()
    assert outcome.succeeded == KILLS, "a killed run is retried, not failed"
    with chaos.database.reading() as session:
        attempts = session.scalars(select(Job.attempts).where(Job.job_id.in_(accepted)))
        assert min(attempts) >= 2, "every job's first run was killed while working"


@scenario_timeout(120)
def test_the_api_killed_between_commit_and_dispatch(chaos: ChaosEnv) -> None:
    chaos.start("scheduler")
    chaos.start_worker()
    faulty = chaos.settings.model_copy(update={"fault_after_commit": True})
    disk = make_raw_disk(chaos.tmp / "small.raw", size=64 * MiB, data=8 * MiB)
    chaos.start_api()
    chaos.sign_up()
    chaos.kill(chaos.processes[-1])
    for instance_id in chaos.add_instances(disk, 3):
        api = chaos.start_api(settings=faulty)
        reply = chaos.client().call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
        assert reply.status == 0, "the API must die before it answers"
        assert api.process.wait(timeout=30) == 70
    chaos.start_api()
    jobs = chaos.client().call("GET", "/v2/zone/ac1/jobs")
    assert jobs.body["total_count"] == 3, "every committed job survives the crash"
    outcome = chaos.settle("api-killed-after-commit", [j["job_id"] for j in jobs.body["jobs"]])
    outcome.assert_clean()
    assert outcome.succeeded == 3


@scenario_timeout(180)
def test_two_hundred_concurrent_conflicting_requests(chaos: ChaosEnv) -> None:
    client = chaos.start_deployment()
    disk = make_raw_disk(chaos.tmp / "small.raw", size=64 * MiB, data=8 * MiB)
    ready = []
    for instance_id in chaos.add_instances(disk, 20):
        reply = client.call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
        ready.append(reply.body)
    for capture in ready:
        chaos.wait_for_status(capture["job_id"], {"successful"})
    contested = chaos.add_instances(disk, 4)
    requests = (
        [("POST", "/v2/zone/ac1/images", {"instance": contested[i % 4]}) for i in range(80)]
        + [("DELETE", f"/v2/zone/ac1/images/{ready[i % 20]['image_id']}", None) for i in range(60)]
        + [
            ("PUT", "/v2/zone/ac1/images", {"image": ready[i % 20]["image_id"], "image_name": "x"})
            for i in range(60)
        ]
    )
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(lambda r: client.call(*r), requests))
    assert {reply.status for reply in replies} <= {200, 202, 409}, [
        r for r in replies if r.status not in (200, 202, 409)
    ]
    deletes = [r for (method, _, _), r in zip(requests, replies, strict=True) if method == "DELETE"]
    assert sum(r.status == 202 for r in deletes) == 20, "each image is deleted exactly once"
    captures = [r for (method, _, _), r in zip(requests, replies, strict=True) if method == "POST"]
    assert 4 <= sum(r.status == 202 for r in captures) <= 80
    accepted = [c["job_id"] for c in ready] + [
        r.body["job_id"] for r in replies if r.status in (200, 202)
    ]
    outcome = chaos.settle("concurrent-conflicts", accepted)
    outcome.assert_clean()


def _run_two_hundred(chaos: ChaosEnv, restart: list[str], scenario: str) -> None:
    client = chaos.start_deployment()
    disk = make_raw_disk(chaos.tmp / "tiny.raw", size=16 * MiB, data=8 * MiB)
    instances = chaos.add_instances(disk, 200)

    def capture(instance_id: str) -> str | None:
        for _ in range(50):  # a client retries while a dependency is down
            reply = client.call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
            if reply.status == 202:
                return str(reply.body["job_id"])
            assert reply.status in (0, 503), reply
            time.sleep(0.2)
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(capture, instances[:80]))
        subprocess.run(restart, check=True, timeout=120)
        rest = list(pool.map(capture, instances[80:]))
    accepted = [job_id for job_id in first + rest if job_id]
    outcome = chaos.settle(scenario, accepted)
    outcome.assert_clean()
    assert outcome.accepted == 200


@needs_services
@scenario_timeout(300)
def test_redis_restarts_during_two_hundred_jobs(chaos: ChaosEnv) -> None:
    _run_two_hundred(chaos, ["bash", "tests/restart-service", "redis"], "redis-restart")


@needs_services
@scenario_timeout(300)
def test_postgresql_restarts_during_two_hundred_jobs(chaos: ChaosEnv) -> None:
    _run_two_hundred(chaos, ["bash", "tests/restart-service", "postgresql"], "postgresql-restart")


@scenario_timeout(240)
def test_up_killed_whole_mid_capture_finishes_the_job_after_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``imagesvc up`` on the embedded default: SQLite, the file broker, one process group."""
    settings = Settings(data_dir=tmp_path / "var", **CHAOS_SETTINGS)
    env = ChaosEnv(settings, tmp_path)
    try:
        up = env.start("up", "--port", str(env.port))
        up.wait_for_output("Running on", timeout=60)
        env.sign_up()
        disk = make_raw_disk(tmp_path / "big.raw", size=2048 * MiB, data=512 * MiB)
        instance_id = env.add_instances(disk, 1)[0]
        reply = env.client().call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
        assert reply.status == 202, reply
        env.wait_for_status(reply.body["job_id"], {"working"})
        env.kill(up)  # the whole process group: API, worker, scheduler, supervisor
        assert env.job_status(reply.body["job_id"]) == "working"
        env.start("up", "--port", str(env.port)).wait_for_output("Running on", timeout=60)
        outcome = env.settle("up-killed-and-restarted", [reply.body["job_id"]])
    finally:
        env.close()
        show_summaries(capsys)
    outcome.assert_clean()
    assert outcome.succeeded == 1, outcome.reasons
