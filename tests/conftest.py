"""Fixtures: deployments with a real worker process, tenants, disks, and per-test databases.

End-to-end tests share one deployment per session (a database, a store, a
queue and a worker process) and stay independent by acting as fresh
accounts: every query is scoped to its caller, so one test's images are
invisible to another's. What is not scoped to a caller (public images, the
files in the store) would couple tests, so a module that publishes images
or scans or sweeps the store is marked ``own_deployment`` and gets a deployment of its
own for its tests. Domain tests (marked ``domain``) get a database each, a
clone of a template migrated once per session.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from imagesvc.bootstrap import Services, services_for
from imagesvc.settings import Settings
from models.db import Database
from tests.chaos import ChaosEnv, chaos_deployment, show_summaries
from tests.support.databases import DatabaseTemplate, migrated_template
from tests.support.deployment import (
    deployment_settings,
    make_settings,
    running_worker,
    serve_api,
)
from tests.support.disks import MiB, make_raw_disk
from tests.support.http import ContractTestServer
from tests.support.processes import ServiceProcess
from tests.support.records import Records
from tests.support.s3_server import S3Server, s3_store_server
from tests.support.tenants import Account, Tenant, TenantFactory, new_account, sign_up

OWN_DEPLOYMENT = "own_deployment"


def _has_own_deployment(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker(OWN_DEPLOYMENT) is not None


# The session's shared deployment ----------------------------------------------


@pytest.fixture(scope="session")
def shared_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with deployment_settings(tmp_path_factory.mktemp("imagesvc")) as settings:
        yield settings


@pytest.fixture(scope="session")
def shared_worker(shared_settings: Settings) -> Iterator[ServiceProcess]:
    with running_worker(shared_settings) as process:
        yield process


# The deployment a module's tests use: the shared one, or its own ------------------


@pytest.fixture(scope="session")
def at_session_end() -> Iterator[ExitStack]:
    """Clean-ups that need not hold up the next module (a worker takes seconds to stop)."""
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="module")
def service_settings(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    at_session_end: ExitStack,
) -> Settings:
    """The shared deployment's settings, or (``own_deployment`` modules) the module's own."""
    if not _has_own_deployment(request):
        return cast(Settings, request.getfixturevalue("shared_settings"))
    own = deployment_settings(tmp_path_factory.mktemp("own"))
    return at_session_end.enter_context(own)


@pytest.fixture(scope="module")
def services(service_settings: Settings) -> Iterator[Services]:
    """The parts the service's own entry points use, built by the one composition root."""
    with services_for(service_settings) as services:
        yield services


@pytest.fixture(scope="module")
def database(services: Services) -> Database:
    return services.database


@pytest.fixture(scope="module")
def worker(
    request: pytest.FixtureRequest, service_settings: Settings, at_session_end: ExitStack
) -> Iterator[ServiceProcess]:
    if not _has_own_deployment(request):
        yield request.getfixturevalue("shared_worker")
        return
    process = ServiceProcess(service_settings, "worker", "--concurrency", "2")
    at_session_end.callback(process.stop)
    process.wait_for_output(" ready.")
    yield process
    # Asked to stop now, waited for at the end: the next module need not wait.
    process.process.send_signal(signal.SIGTERM)


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    service_settings: Settings,
    worker: ServiceProcess,
) -> TestClient[Any, Any]:
    return await aiohttp_client(ContractTestServer(create_app(service_settings)))


@pytest.fixture
def new_tenant(client: TestClient[Any, Any], database: Database, tmp_path: Path) -> TenantFactory:
    async def make() -> Tenant:
        return await sign_up(client, database, tmp_path)

    return make


@pytest.fixture
async def tenant(new_tenant: TenantFactory) -> Tenant:
    return await new_tenant()


# A database per test, for the domain tier ----------------------------------------


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseTemplate]:
    with migrated_template(tmp_path_factory.mktemp("template")) as template:
        yield template


@pytest.fixture
def own_services(database_template: DatabaseTemplate, tmp_path: Path) -> Iterator[Services]:
    """Parts over a database of this test's own (a clone of the migrated template)."""
    with database_template.clone(tmp_path) as url, services_for(make_settings(tmp_path, url)) as s:
        yield s


@pytest.fixture
def own_database(own_services: Services) -> Database:
    """A migrated database only this test sees."""
    return own_services.database


# Disks -------------------------------------------------------------------------------


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    return make_raw_disk(tmp_path / f"disk-{secrets.token_hex(3)}.raw")


@pytest.fixture
def disk_factory(tmp_path: Path) -> Callable[..., Path]:
    def make(size: int = 64 * MiB, regions: int = 3) -> Path:
        return make_raw_disk(tmp_path / f"disk-{secrets.token_hex(3)}.raw", size, regions)

    return make


@pytest.fixture
def records(own_database: Database) -> Records:
    """Accounts, instances, images and jobs made in this test's own database."""
    return Records(own_database)


# Clients that are separate programs ------------------------------------------------


@pytest.fixture(scope="module")
def api_url(service_settings: Settings, worker: ServiceProcess) -> Iterator[str]:
    """``imagesvc api`` on a real port, for clients that are separate programs."""
    process, url = serve_api(service_settings)
    yield url
    process.stop()


@pytest.fixture
def account(database: Database) -> Account:
    """A new account's id and credentials, for a client that gets its own tokens."""
    return new_account(database)


@pytest.fixture
def chaos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[ChaosEnv]:
    """A scratch deployment of real processes; its outcome lines are shown even on failure."""
    try:
        with chaos_deployment(tmp_path) as env:
            yield env
    finally:
        show_summaries(capsys)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``.ci/run``'s S3 server (IMAGESVC_TEST_S3_*), or one of the module's own."""
    with s3_store_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    """A bucket of the module's own on that server: no test sees another module's objects."""
    return s3_server.new_bucket()
