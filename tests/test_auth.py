"""OAuth2 client credentials as the SDK uses them, bearer tokens, and safe failures."""

from __future__ import annotations

import json
import secrets
from base64 import b64encode
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy
from sqlalchemy import select

from models.accounts import Credentials, create_account, new_secret, token_digest
from models.db import Database
from models.tables import AccessToken, Account
from tests.support.tenants import Tenant

TOKEN = "/v2/oauth2/token"
IMAGES = "/v2/zone/ac1/images"
GRANT = {"grant_type": "client_credentials"}


@dataclass
class Answer:
    status: int
    body: Any
    text: str
    headers: CIMultiDictProxy[str]


async def send(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    authorization: str | None = None,
    **kwargs: Any,
) -> Answer:
    headers = dict(kwargs.pop("headers", {}))
    if authorization is not None:
        headers["Authorization"] = authorization
    async with client.request(method, path, headers=headers, **kwargs) as response:
        text = await response.text()
        return Answer(response.status, json.loads(text), text, response.headers)


def basic(api_key: str, secret: str) -> str:
    return "Basic " + b64encode(f"{api_key}:{secret}".encode()).decode()


@pytest.fixture
def credentials(database: Database) -> Credentials:
    with database.transaction() as session:
        return create_account(session, f"auth-{secrets.token_hex(3)}")


def assert_failure(answer: Answer, status: int, ret_code: int) -> None:
    assert (answer.status, answer.body["ret_code"]) == (status, ret_code), answer
    assert set(answer.body) == {"ret_code", "message"} and answer.body["message"], answer
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    assert "Traceback" not in answer.text and 'File "' not in answer.text, answer.text


async def test_the_sdks_token_flow(
    client: TestClient[Any, Any], credentials: Credentials, database: Database
) -> None:
    answer = await send(
        client, "POST", TOKEN, basic(credentials.api_key, credentials.secret), data=GRANT
    )
    assert answer.status == 200, answer
    assert set(answer.body) == {"access_token", "token_type", "expires_in"}, answer.body
    assert (answer.body["token_type"], answer.body["expires_in"]) == ("Bearer", 3600)
    token = answer.body["access_token"]
    assert isinstance(token, str) and len(token) >= 32
    assert answer.headers["Cache-Control"] == "no-store"

    images = await send(client, "GET", IMAGES, f"Bearer {token}")
    assert images.status == 200, images
    assert set(images.body) == {"images", "total_count"}
    jobs = await send(client, "GET", "/v2/zone/ac1/jobs", f"bearer {token}")
    assert jobs.body == {"jobs": [], "total_count": 0}, "the scheme is case-insensitive"

    with database.reading() as session:
        row = session.get(AccessToken, token_digest(token))
        assert row is not None and row.account_id == credentials.account_id
        lifetime = row.expires_at - datetime.now(UTC)
        assert timedelta(seconds=3500) < lifetime <= timedelta(seconds=3600)
        assert session.get(AccessToken, token) is None, "tokens are stored as digests"


async def test_a_json_token_request_and_every_token_works(
    client: TestClient[Any, Any], credentials: Credentials
) -> None:
    authorization = basic(credentials.api_key, credentials.secret)
    first = await send(client, "POST", TOKEN, authorization, json=GRANT)
    second = await send(client, "POST", TOKEN, authorization, data=GRANT)
    assert first.status == second.status == 200, (first, second)
    assert first.body["access_token"] != second.body["access_token"]
    for answer in (first, second):
        reply = await send(client, "GET", IMAGES, f"Bearer {answer.body['access_token']}")
        assert reply.status == 200, reply


@pytest.mark.parametrize(
    "case",
    [
        "wrong secret",
        "unknown api_key",
        "not base64",
        "no colon",
        "not utf-8",
        "empty basic",
        "no header",
    ],
)
async def test_bad_client_credentials_are_401(
    client: TestClient[Any, Any], credentials: Credentials, case: str
) -> None:
    headers: dict[str, str | None] = {
        "wrong secret": basic(credentials.api_key, credentials.secret + "x"),
        "unknown api_key": basic("NOSUCHKEY0000", credentials.secret),
        "not base64": "Basic !!!not-base64!!!",
        "no colon": "Basic " + b64encode(credentials.api_key.encode()).decode(),
        "not utf-8": "Basic " + b64encode(b"\xff\xfe:\xff").decode(),
        "empty basic": "Basic ",
        "no header": None,
    }
    answer = await send(client, "POST", TOKEN, headers[case], data=GRANT)
    assert_failure(answer, 401, 1200)
    assert "access_token" not in answer.body
    assert answer.headers["WWW-Authenticate"].startswith("Basic"), answer.headers


@pytest.mark.parametrize(
    "form", [{}, {"grant_type": "password"}, {"grant_type": "authorization_code"}]
)
async def test_a_missing_or_other_grant_type_is_400(
    client: TestClient[Any, Any], credentials: Credentials, form: dict[str, str]
) -> None:
    authorization = basic(credentials.api_key, credentials.secret)
    answer = await send(client, "POST", TOKEN, authorization, data=form)
    assert_failure(answer, 400, 1100)
    assert "grant_type" in answer.body["message"], answer


@pytest.mark.parametrize(
    ("path", "authorization"),
    [
        (IMAGES, None),
        (IMAGES, "Basic dXNlcjpwYXNz"),
        (IMAGES, "Token abcdef"),
        (IMAGES, "Bearer"),
        (IMAGES, "Bearer   "),
        (IMAGES, "Bearer garbage-token"),
        ("/v2/zone/ac1/jobs", "Bearer garbage-token"),
        ("/v2/zone/ac1/job/j-zzzzzzzz", None),
        ("/v2/zone/zz9/images", "Bearer garbage-token"),
    ],
)
async def test_calls_without_a_valid_bearer_token_are_401_with_a_challenge(
    client: TestClient[Any, Any], path: str, authorization: str | None
) -> None:
    answer = await send(client, "GET", path, authorization)
    assert_failure(answer, 401, 1200)
    assert answer.headers["WWW-Authenticate"].startswith("Bearer"), answer.headers


async def test_a_token_is_refused_once_expired(tenant: Tenant, database: Database) -> None:
    assert (await tenant.call("GET", "/images")).status == 200
    with database.transaction() as session:
        row = session.get(AccessToken, token_digest(tenant.token))
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    answer = await send(tenant.client, "GET", IMAGES, f"Bearer {tenant.token}")
    assert_failure(answer, 401, 1200)
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/images", {"instance": "i-nosuchone"}),  # else 404
        ("POST", "/images", {"image_name": "no instance"}),  # else 400
        ("DELETE", "/images/img-nosuchone", {}),  # else 404
        ("DELETE", "/images/,,", {}),  # else 400
        ("PUT", "/images", {"image": "img-nosuchone", "image_name": "x"}),  # else 404
        ("POST", "/images/recover", {"images": "img-nosuchone"}),  # else 404
    ],
)
async def test_writes_refuse_an_expired_token_before_anything_else(
    tenant: Tenant, database: Database, method: str, path: str, body: dict[str, str]
) -> None:
    """The writes check the token in their own unit of work: still a 401 first."""
    with database.transaction() as session:
        row = session.get(AccessToken, token_digest(tenant.token))
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    answer = await tenant.curl(method, path, json.dumps(body))
    assert answer.status == 401, answer
    assert answer.body["ret_code"] == 1200, answer


async def test_tokens_written_straight_to_the_table_follow_their_expiry(
    tenant: Tenant, database: Database
) -> None:
    live, dead = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with database.transaction() as session:
        for token, expires_at in ((live, now + timedelta(minutes=5)), (dead, now)):
            session.add(
                AccessToken(
                    token_hash=token_digest(token),
                    account_id=tenant.account_id,
                    expires_at=expires_at,
                )
            )
    ok = await send(tenant.client, "GET", IMAGES, f"Bearer {live}")
    assert ok.status == 200, ok
    expired = await send(tenant.client, "GET", IMAGES, f"Bearer {dead}")
    assert_failure(expired, 401, 1200)
    digest_as_token = await send(tenant.client, "GET", IMAGES, f"Bearer {token_digest(live)}")
    assert_failure(digest_as_token, 401, 1200)


async def test_a_secret_is_never_stored_in_clear(
    client: TestClient[Any, Any], credentials: Credentials, database: Database
) -> None:
    with database.reading() as session:
        account = session.scalars(
            select(Account).where(Account.account_id == credentials.account_id)
        ).one()
        stored = account.secret_hash
    assert stored.startswith("scrypt$"), stored
    assert credentials.secret not in stored
    assert credentials.secret.encode().hex() not in stored
    assert credentials.secret not in account.api_key
    authorization = basic(credentials.api_key, credentials.secret)
    answer = await send(client, "POST", TOKEN, authorization, data=GRANT)
    assert answer.status == 200, "the stored hash still verifies the secret"


HUGE = b'{"image_name": "' + b"x" * (65 * 1024) + b'"}'
BAD_BODIES = {
    "invalid utf-8": b"\xff\xfe{\x80\x81}",
    "over 64 KiB": HUGE,
    # Valid JSON texts under the size limit, nested deeper than a recursive parser goes.
    "deeply nested array": b"[" * 30_000 + b"]" * 30_000,
    "deeply nested object": b'{"images": ' * 5_000 + b"1" + b"}" * 5_000,
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
@pytest.mark.parametrize(("method", "path"), [("GET", IMAGES), ("PUT", IMAGES), ("POST", TOKEN)])
async def test_a_malformed_body_is_a_400_without_a_stack_trace(
    tenant: Tenant, method: str, path: str, case: str
) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    authorization = f"Bearer {tenant.token}"
    if path == TOKEN:
        authorization = "Basic " + b64encode(b"ANYKEY:anysecret").decode()
    answer = await send(
        tenant.client, method, path, authorization, data=BAD_BODIES[case], headers=headers
    )
    # A body past the size limit is refused before it is read: 413, still ret_code 1100.
    assert_failure(answer, 413 if BAD_BODIES[case] is HUGE else 400, 1100)


def test_a_new_secret_never_reads_as_a_command_line_option() -> None:
    # 1 in 64 secrets would start with "-" and break `imagectl login --secret SECRET`.
    assert not any(new_secret().startswith("-") for _ in range(2000))
