"""Leaked credentials and guessed secrets, against running ``imagesvc api`` processes.

Row 11 of issue 10: the operator disables, enables and rotates; a client
revokes its own tokens (RFC 7009). Row 2: failed logins are throttled per
api_key and per address, in Redis when the broker is Redis (shared by every
API process), and scrypt does not starve the other requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import create_engine, text

from imagesvc.bootstrap import services_for
from models.accounts import (
    Credentials,
    client_record,
    hash_secret,
    verified_account,
    verify_secret,
)
from models.migrate import upgrade
from tests.hostile import Answer, Deployment, assert_contract_error, basic, deployment, free_port
from tests.support.databases import scratch_database
from tests.support.deployment import make_settings
from tests.support.processes import ServiceProcess, run_imagesvc

IMAGES = "/v2/zone/ac1/images"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GRANT = b"grant_type=client_credentials"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("hostile-accounts")) as deployed:
        yield deployed


async def login(
    api: Deployment, api_key: str, secret: str, local_addr: str | None = None
) -> Answer:
    headers = {"Authorization": basic(api_key, secret), **FORM}
    return await api.request("POST", "/v2/oauth2/token", headers, GRANT, local_addr=local_addr)


async def images_status(api: Deployment, token: str) -> int:
    return (await api.session_get(IMAGES, token))[0]


def operator(api: Deployment, *argv: str) -> dict[str, object]:
    result = run_imagesvc(api.settings, "account", *argv, "--json")
    assert result.returncode == 0, result.stderr
    output: dict[str, object] = json.loads(result.stdout)
    return output


# row 11: the operator --------------------------------------------------------------


async def test_a_disabled_accounts_tokens_and_secret_stop_working_at_once(
    api: Deployment,
) -> None:
    credentials, token = await api.tenant()
    assert await images_status(api, token) == 200
    assert operator(api, "disable", credentials.account_id)["disabled"] is True
    assert await images_status(api, token) == 401
    refused = await login(api, credentials.api_key, credentials.secret)
    assert_contract_error(refused, 401, 1200)
    assert (refused.header("www-authenticate") or "").startswith("Basic"), refused.headers

    assert operator(api, "enable", credentials.account_id)["disabled"] is False
    assert await images_status(api, token) == 401, "tokens revoked by disabling stay revoked"
    fresh = await login(api, credentials.api_key, credentials.secret)
    assert fresh.status == 200, fresh
    assert await images_status(api, fresh.json["access_token"]) == 200


async def test_rotating_a_secret_kills_the_old_secret_and_its_tokens(api: Deployment) -> None:
    credentials, token = await api.tenant()
    rotated = operator(api, "rotate-secret", credentials.account_id)
    assert rotated["account_id"] == credentials.account_id
    assert rotated["api_key"] == credentials.api_key
    new_secret = str(rotated["secret"])
    assert new_secret and new_secret != credentials.secret
    assert await images_status(api, token) == 401
    assert_contract_error(await login(api, credentials.api_key, credentials.secret), 401, 1200)
    fresh = await login(api, credentials.api_key, new_secret)
    assert fresh.status == 200, fresh
    assert await images_status(api, fresh.json["access_token"]) == 200


def test_the_operator_commands_name_an_unknown_account(api: Deployment) -> None:
    # disable, enable and rotate-secret find the account the same way (accounts._account).
    result = run_imagesvc(api.settings, "account", "rotate-secret", "usr-nosuch")
    assert result.returncode == 2, result
    assert "usr-nosuch not found" in result.stderr and "Traceback" not in result.stderr


# row 11: the client ------------------------------------------------------------------


async def revoke(api: Deployment, credentials: Credentials, token: str, **extra: str) -> Answer:
    body = urlencode({"token": token, **extra}).encode()
    headers = {"Authorization": basic(credentials.api_key, credentials.secret), **FORM}
    return await api.request("POST", "/v2/oauth2/revoke", headers, body)


async def test_a_client_revokes_its_own_token(api: Deployment) -> None:
    credentials, token = await api.tenant()
    other = await api.token(credentials)
    answer = await revoke(api, credentials, token, token_type_hint="access_token")
    assert (answer.status, answer.json) == (200, {}), answer
    assert answer.header("cache-control") == "no-store"
    assert await images_status(api, token) == 401
    assert await images_status(api, other) == 200, "only the revoked token dies"
    again = await revoke(api, credentials, token)
    assert again.status == 200, "revoking an unknown token is no error (RFC 7009 §2.2)"


async def test_a_client_cannot_revoke_another_clients_token(api: Deployment) -> None:
    mallory, _ = await api.tenant()
    _, victims_token = await api.tenant()
    assert (await revoke(api, mallory, victims_token)).status == 200
    assert await images_status(api, victims_token) == 200


async def test_revocation_needs_the_clients_own_credentials(api: Deployment) -> None:
    credentials, token = await api.tenant()
    wrong = Credentials(credentials.account_id, credentials.api_key, credentials.secret + "x")
    assert_contract_error(await revoke(api, wrong, token), 401, 1200)
    no_auth = await api.request("POST", "/v2/oauth2/revoke", FORM, f"token={token}".encode())
    assert_contract_error(no_auth, 401, 1200)
    in_query = await api.request(
        "POST",
        f"/v2/oauth2/revoke?token={token}",
        {"Authorization": basic(credentials.api_key, credentials.secret)},
    )
    assert_contract_error(in_query, 400, 1100)
    missing = await revoke(api, credentials, "")
    assert_contract_error(missing, 400, 1100)
    assert await images_status(api, token) == 200


# row 2 -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def throttled_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    settings = {"throttle_failures": 5, "throttle_window": 60.0}
    with deployment(tmp_path_factory.mktemp("throttled"), **settings) as deployed:
        yield deployed


async def test_failed_logins_are_throttled_per_api_key(throttled_api: Deployment) -> None:
    api = throttled_api
    victim = api.new_account()
    _, token = await api.tenant()
    # 100 wrong secrets at once, from addresses of their own, while a tenant works.
    guesses = [
        login(api, victim.api_key, f"guess-{n}", local_addr=f"127.0.1.{n % 50 + 1}")
        for n in range(100)
    ]
    flood = asyncio.gather(*guesses)
    jobs = await api.session_get("/v2/zone/ac1/jobs", token)
    answers = await flood
    assert jobs[0] == 200, jobs
    assert {a.status for a in answers} <= {401, 429}, answers
    throttled = [a for a in answers if a.status == 429]
    assert len(throttled) >= 50, [a.status for a in answers]
    for answer in throttled:
        assert_contract_error(answer, 429, 2500)
        assert int(answer.header("retry-after") or 0) >= 1, answer.headers
    right = await login(api, victim.api_key, victim.secret, local_addr="127.0.2.1")
    assert_contract_error(right, 429, 2500)
    other = api.new_account()
    assert (await login(api, other.api_key, other.secret, local_addr="127.0.2.2")).status == 200


async def test_failed_logins_are_throttled_per_address(throttled_api: Deployment) -> None:
    api = throttled_api
    address = "127.0.3.1"
    for _ in range(5):
        someone = api.new_account()
        wrong = await login(api, someone.api_key, "wrong", local_addr=address)
        assert_contract_error(wrong, 401, 1200)
    honest = api.new_account()
    refused = await login(api, honest.api_key, honest.secret, local_addr=address)
    assert_contract_error(refused, 429, 2500)
    assert (await login(api, honest.api_key, honest.secret, local_addr="127.0.3.2")).status == 200


async def test_the_throttle_is_shared_by_api_processes_when_redis_is_configured(
    throttled_api: Deployment,
) -> None:
    api = throttled_api
    address = "127.0.4.1"
    victim = api.new_account()
    for n in range(5):
        await login(api, victim.api_key, f"guess-{n}", local_addr=address)
    second = Deployment(api.settings, api.services, free_port(), api.tmp)
    second.api = ServiceProcess(api.settings, "api", "--port", str(second.port))
    try:
        second.api.wait_for_output("Running on", timeout=60)
        answer = await login(second, victim.api_key, victim.secret, local_addr="127.0.4.2")
    finally:
        second.api.stop()
    if api.settings.broker_url.startswith("redis"):
        assert_contract_error(answer, 429, 2500)
    else:
        assert answer.status == 200, "the embedded default counts in each process"


# the migration ---------------------------------------------------------------------


def test_accounts_of_the_earlier_release_keep_working_after_the_upgrade(tmp_path: Path) -> None:
    """Migration 0006 adds accounts.disabled_at to a live database, its data in place."""
    with scratch_database(tmp_path) as url:
        upgrade(url, "0004")
        secret = "a-secret-of-the-earlier-release"
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO accounts (account_id, name, api_key, secret_hash, created_at)"
                    " VALUES ('usr-old', 'old', 'OLDKEY', :hash, :now)"
                ),
                {"hash": hash_secret(secret), "now": datetime.now(UTC)},
            )
        engine.dispose()
        upgrade(url)
        with services_for(make_settings(tmp_path, url)) as services:
            with services.database.reading() as session:
                client = client_record(session, "OLDKEY")
                account = verified_account(session, client)
            assert verify_secret(secret, client.secret_hash)
            assert account.account_id == "usr-old" and account.disabled_at is None
