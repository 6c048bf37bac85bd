"""Fuzzing every endpoint of a running ``imagesvc api`` with generated requests.

Hypothesis generates methods, paths, queries, bodies and headers (authenticated
as a tenant, as nobody, and with broken credentials), and every answer must
keep the invariants of issue 10:

- never a 5xx, except 503 for a dependency that is down;
- every error is the contract's ``{"ret_code", "message"}`` JSON;
- a request that fails changes no row and no file;
- another tenant's resource is never returned.

The seed is fixed (``derandomize``) and the budget small in CI. For a longer
local run: ``IMAGESVC_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from models.tables import Base
from tests.hostile import Deployment, basic, deployment

EXAMPLES = int(os.environ.get("IMAGESVC_FUZZ_EXAMPLES", "150"))
# A long local run gets the time it needs: about a second per example at worst.
pytestmark = pytest.mark.timeout(max(120, EXAMPLES))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class World:
    """A deployment, the fuzzing tenant and the tenant whose resources must never leak."""

    api: Deployment
    token: str
    api_key: str
    secret: str
    own: dict[str, str]
    foreign: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fuzz")
    disk = tmp / "disk.raw"
    with open(disk, "wb") as file:
        file.truncate(1 << 20)
    # Generous throttling: fuzzed logins must not turn the tenant's own into 429s only.
    with deployment(tmp, throttle_failures=1000) as api:
        yield asyncio.run(_populate(api, disk))


async def _populate(api: Deployment, disk: Path) -> World:
    resources = []
    for _ in range(2):
        credentials, token = await api.tenant()
        instance = api.add_instance(credentials.account_id, disk)
        body = json.dumps({"instance": api.add_instance(credentials.account_id, disk)}).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        captured = await api.request("POST", "/v2/zone/ac1/images", headers, body)
        assert captured.status == 202, captured
        ids = {
            "account": credentials.account_id,
            "instance": instance,
            "image": captured.json["image_id"],
            "job": captured.json["job_id"],
        }
        resources.append((credentials, token, ids))
    (mine, token, own), (_, _, foreign) = resources
    return World(api, token, mine.api_key, mine.secret, own, foreign)


# strategies --------------------------------------------------------------------------

PARAMS = [
    "images", "image", "instance", "image_name", "description", "status", "jobs", "action",
    "offset", "limit", "search_word", "os_family", "visibility", "provider", "processor_type",
    "grant_type", "client_id", "client_secret", "token", "request_id",
]  # fmt: skip
odd_text = st.sampled_from(
    ["", " ", "a\x00b", "\u202e", "[" * 50, "1" * 5000, "1_000", "true", "-1", "1.0", "%0A"]
)
text = st.one_of(st.text(max_size=40), odd_text)
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def ids_from(world: World) -> st.SearchStrategy[str]:
    known = [world.own["image"], world.foreign["image"], world.own["job"], world.foreign["job"]]
    return st.one_of(st.sampled_from(known), text, st.just(",".join(known)))


VALID = ["available", "deleted", "pending", "successful", "self", "public", "64bit", "10", "0"]


def values(world: World) -> st.SearchStrategy[Any]:
    valid = st.sampled_from(
        [*VALID, world.own["image"], world.own["instance"], "client_credentials"]
    )
    return st.one_of(valid, json_value, ids_from(world), st.lists(ids_from(world), max_size=3))


def routes(world: World) -> st.SearchStrategy[tuple[str, str]]:
    """Mostly a route of the API with its own method, sometimes anything at all."""
    zone = st.sampled_from(["ac1", "ac1", "ac1", "ac2", "zz9", "", "ac1%00"])
    ident = ids_from(world).map(lambda s: quote(s, safe=",[]"))
    method = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    return st.one_of(
        st.tuples(st.sampled_from(["GET", "POST", "PUT"]), zone.map("/v2/zone/{}/images".format)),
        st.tuples(st.just("DELETE"), st.builds("/v2/zone/{}/images/{}".format, zone, ident)),
        st.tuples(st.just("POST"), zone.map("/v2/zone/{}/images/recover".format)),
        st.tuples(st.just("GET"), st.builds("/v2/zone/{}/job/{}".format, zone, ident)),
        st.tuples(st.just("GET"), zone.map("/v2/zone/{}/jobs".format)),
        st.tuples(st.just("POST"), st.sampled_from(["/v2/oauth2/token", "/v2/oauth2/revoke"])),
        st.tuples(method, st.sampled_from(["/healthz", "/", "/v2", "/v2/zone/ac1/images"])),
        st.tuples(method, st.text(max_size=30).map(lambda s: "/" + quote(s, safe="/"))),
    )


def bodies(world: World) -> st.SearchStrategy[tuple[bytes, str | None]]:
    """A body and the Content-Encoding it is sent with."""
    params = st.dictionaries(st.sampled_from(PARAMS), values(world), max_size=3)
    as_json = params.map(lambda p: json.dumps(p).encode())
    as_form = params.map(lambda p: urlencode({k: str(v) for k, v in p.items()}).encode())
    plain = st.one_of(st.just(b""), as_json, as_form, st.binary(max_size=64))
    return st.one_of(
        st.tuples(plain, st.none()),
        st.tuples(as_json.map(gzip.compress), st.just("gzip")),
        st.tuples(plain, st.sampled_from(["gzip", "deflate", "br", "identity", "x"])),
    )


def authorizations(world: World) -> st.SearchStrategy[str | None]:
    good = f"Bearer {world.token}"
    return st.sampled_from(
        [
            good,
            good,
            good,
            None,
            f"Bearer {world.token}",
            f"Bearer {world.token}x",
            "Bearer ",
            basic(world.api_key, world.secret),
            basic(world.api_key, "wrong"),
            "Basic !!!",
            "Digest x",
        ]
    )


CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]


def requests(world: World) -> st.SearchStrategy[dict[str, Any]]:
    """Whole requests: a route, a query, a body with its encoding, and headers."""
    return st.builds(
        _request,
        st.dictionaries(st.sampled_from(PARAMS), values(world), max_size=3),
        routes(world),
        bodies(world),
        st.sampled_from(CONTENT_TYPES),
        authorizations(world),
    )


def _request(
    query: dict[str, Any],
    route: tuple[str, str],
    body: tuple[bytes, str | None],
    content_type: str,
    authorization: str | None,
) -> dict[str, Any]:
    method, path = route
    if query:
        path += "?" + urlencode(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in query.items()}
        )
    headers = {"Content-Type": content_type}
    if body[1]:
        headers["Content-Encoding"] = body[1]
    if authorization:
        headers["Authorization"] = authorization
    return {"method": method, "path": path, "headers": headers, "body": body[0]}


# invariants --------------------------------------------------------------------------


def snapshot(api: Deployment) -> tuple[object, ...]:
    """Every row of every table, and every file of the store."""
    with api.services.database.reading() as session:
        present = set(inspect(session.connection()).get_table_names())
        rows = tuple(
            tuple(tuple(row) for row in session.execute(select(table)).all())
            for table in Base.metadata.sorted_tables
            if table.name in present  # some tables exist on PostgreSQL only
        )
    files = tuple(sorted((p.name, p.stat().st_size) for p in api.settings.image_dir.iterdir()))
    return rows, files


def send(api: Deployment, request: dict[str, Any]) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        connection.request(request["method"], request["path"], request["body"], request["headers"])
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def check(world: World, request: dict[str, Any], status: int, ctype: str, body: bytes) -> None:
    assert status < 500 or status == 503, (request, status, body)
    sent = json.dumps(request, default=repr)
    text = body.decode("utf-8", "replace")
    for name in ("account", "image", "job", "instance"):
        leaked = world.foreign[name]
        assert leaked not in text or (status >= 400 and leaked in sent), (request, body)
    if status >= 400:
        assert ctype.startswith("application/json"), (request, status, ctype, body)
        error = json.loads(body)
        assert set(error) == {"ret_code", "message"}, (request, error)
        assert isinstance(error["ret_code"], int) and isinstance(error["message"], str)


def test_fuzzed_requests_keep_the_invariants(world: World) -> None:
    @FUZZ
    @given(request=requests(world))
    def fuzz(request: dict[str, Any]) -> None:
        before = snapshot(world.api)
        status, ctype, body = send(world.api, request)
        event(f"status {status}")  # --hypothesis-show-statistics: what the fuzzing reached
        check(world, request, status, ctype, body)
        if status >= 400:
            assert snapshot(world.api) == before, f"a failed request changed state: {request}"

    fuzz()


raw_lines = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.builds(
        lambda m, p, v: m + b" " + p + b" " + v,
        st.sampled_from([b"GET", b"POST", b"G(T", b"", b"\xff"]),
        st.binary(max_size=60).map(lambda b: b"/" + b),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 x", b""]),
    ),
)


def test_fuzzed_raw_bytes_never_crash_the_server(world: World) -> None:
    @FUZZ
    @given(line=raw_lines, headers=st.lists(st.binary(max_size=80), max_size=4))
    def fuzz(line: bytes, headers: list[bytes]) -> None:
        data = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
        with socket.create_connection(("127.0.0.1", world.api.port), timeout=10) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        if not answer:
            return  # the server may close on bytes that are no request at all
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert status < 500, answer
        if status >= 400:
            assert b"application/json" in head, answer
            assert set(json.loads(body.split(b"HTTP/1.1")[0])) == {"ret_code", "message"}

    fuzz()
