"""Hostile parameters against a running ``imagesvc api``: every one a 400 naming it.

Rows 6, 7, 8, 13 and 18 of issue 10: list parameters holding non-strings,
deep nesting, numbers past 4,300 digits, control and bidi characters in
names, and numbers that only look like integers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.hostile import Answer, Deployment, assert_contract_error, deployment

ZONE = "/v2/zone/ac1"
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
DEEP = "[" * 3000
HUGE = "1" * 5000


@dataclass
class Caller:
    api: Deployment
    token: str
    account_id: str
    image_id: str
    instance_id: str

    async def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
        merged = {"Authorization": f"Bearer {self.token}", **JSON, **(headers or {})}
        return await self.api.request(method, ZONE + path, merged, data)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("hostile-params")) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("disks") / "small.raw"
    with open(path, "wb") as file:
        file.truncate(1 << 20)
    return path


@pytest.fixture(scope="module")
def caller(api: Deployment, disk: Path) -> Caller:
    """One tenant for the module: every request here fails, so none changes its view."""
    return asyncio.run(_new_caller(api, disk))


async def _new_caller(api: Deployment, disk: Path) -> Caller:
    credentials, token = await api.tenant()
    instance_id = api.add_instance(credentials.account_id, disk)
    image_instance = api.add_instance(credentials.account_id, disk)
    made = Caller(api, token, credentials.account_id, "", instance_id)
    captured = await made.send("POST", "/images", {"instance": image_instance, "image_name": "x"})
    assert captured.status == 202, captured
    made.image_id = captured.json["image_id"]
    return made


def names(answer: Answer, parameter: str) -> None:
    body = assert_contract_error(answer, 400, 1100)
    assert f"'{parameter}'" in body["message"], body


# row 6 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "parameter"),
    [
        ("GET", "/images", {"images": [1]}, "images"),
        ("GET", "/images", {"images": [None]}, "images"),
        ("GET", "/images", {"images": [["img-a"]]}, "images"),
        ("GET", "/images", {"images": [{"a": 1}]}, "images"),
        ("GET", "/images", {"status": [1]}, "status"),
        ("GET", "/jobs", {"jobs": [1]}, "jobs"),
        ("GET", "/jobs", {"action": [True]}, "action"),
        ("GET", "/jobs", {"status": [None]}, "status"),
        ("POST", "/images/recover", {"images": [1]}, "images"),
        ("GET", "/images", {"images": 7}, "images"),
    ],
)
async def test_list_parameters_holding_non_strings_are_400(
    caller: Caller, method: str, path: str, body: Any, parameter: str
) -> None:
    names(await caller.send(method, path, body), parameter)


# row 7 -----------------------------------------------------------------------------


async def test_a_deeply_nested_list_parameter_is_400_in_query_body_and_path(
    caller: Caller,
) -> None:
    names(await caller.send("GET", f"/images?images={DEEP}"), "images")
    names(await caller.send("GET", "/jobs", {"jobs": DEEP}), "jobs")
    names(await caller.send("POST", "/images/recover", {"images": DEEP}), "images")
    names(await caller.send("DELETE", f"/images/{DEEP}"), "images")
    names(await caller.send("DELETE", f"/images/{DEEP + ']' * 3000}"), "images")
    nested_body = ('{"images": ' + DEEP + "]" * 3000 + "}").encode()
    assert_contract_error(await caller.send("GET", "/images", nested_body), 400, 1100)


# row 8 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "parameter"),
    [
        ("GET", "/images", '{"limit": ' + HUGE + "}", None),
        ("GET", "/jobs", '{"offset": ' + HUGE + "}", None),
        ("POST", "/images", '{"instance": ' + HUGE + "}", None),
        ("GET", "/images", '{"limit": "' + HUGE + '"}', "limit"),
        ("GET", f"/images?limit={HUGE}", "", "limit"),
        ("GET", f"/jobs?offset={HUGE}", "", "offset"),
        ("GET", "/images", '{"limit": 1e999}', None),
        ("GET", "/images", '{"limit": NaN}', None),
    ],
)
async def test_numbers_past_4300_digits_or_out_of_range_are_400(
    caller: Caller, method: str, path: str, body: str, parameter: str | None
) -> None:
    answer = await caller.send(method, path, body.encode())
    if parameter:
        names(answer, parameter)
    else:
        assert_contract_error(answer, 400, 1100)


async def test_a_huge_number_on_the_unauthenticated_token_endpoint_is_400(
    api: Deployment,
) -> None:
    body = ('{"grant_type": ' + HUGE + "}").encode()
    answer = await api.request("POST", "/v2/oauth2/token", JSON, body)
    assert_contract_error(answer, 400, 1100)
    form = ("grant_type=" + HUGE).encode()
    names(await api.request("POST", "/v2/oauth2/token", FORM, form), "grant_type")


# row 13 ----------------------------------------------------------------------------

HOSTILE_TEXT = ["a\x00b", "a\x01b", "a\x1b[31mb", "a\nb", "a\x7fb", "a\u202eb", "a\u2066b"]


@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=[repr(t) for t in HOSTILE_TEXT])
async def test_names_with_control_or_bidi_characters_are_400(caller: Caller, text: str) -> None:
    capture = {"instance": caller.instance_id, "image_name": text}
    names(await caller.send("POST", "/images", capture), "image_name")
    modify = {"image": caller.image_id, "image_name": text}
    names(await caller.send("PUT", "/images", modify), "image_name")
    described = {"image": caller.image_id, "description": text}
    names(await caller.send("PUT", "/images", described), "description")
    names(await caller.send("GET", "/images", {"search_word": text}), "search_word")
    names(await caller.send("GET", f"/images?search_word={quote(text)}"), "search_word")
    listed = await caller.send("GET", "/images", {"images": [caller.image_id]})
    assert listed.json["images"][0]["image_name"] == "x", "nothing was stored"


async def test_leading_and_trailing_spaces_are_trimmed(caller: Caller) -> None:
    capture = {"instance": caller.instance_id, "image_name": "   my image  "}
    captured = await caller.send("POST", "/images", capture)
    assert captured.status == 202, captured
    listed = await caller.send("GET", "/images", {"images": [captured.json["image_id"]]})
    assert listed.json["images"][0]["image_name"] == "my image"
    found = await caller.send("GET", "/images", {"search_word": "  my image "})
    assert [image["image_id"] for image in found.json["images"]] == [captured.json["image_id"]]


async def test_a_lone_surrogate_in_a_name_is_400(caller: Caller) -> None:
    body = b'{"image": "' + caller.image_id.encode() + b'", "image_name": "a\\ud800b"}'
    names(await caller.send("PUT", "/images", body), "image_name")


# row 18 ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "1_000", "1.0", "+1", " 1", "", [1]])
@pytest.mark.parametrize("parameter", ["limit", "offset"])
async def test_integers_follow_one_rule_in_body_and_query(
    caller: Caller, parameter: str, value: Any
) -> None:
    names(await caller.send("GET", "/images", {parameter: value}), parameter)
    names(await caller.send("GET", "/jobs", {parameter: value}), parameter)
    text = json.dumps(value) if not isinstance(value, str) else value
    names(await caller.send("GET", f"/images?{parameter}={quote(text)}"), parameter)


async def test_integers_as_json_numbers_or_digits_are_accepted(caller: Caller) -> None:
    for body in ({"limit": 1}, {"limit": "1"}):
        answer = await caller.send("GET", "/images", body)
        assert answer.status == 200 and len(answer.json["images"]) == 1, answer
    answer = await caller.send("GET", "/images?limit=1&offset=0")
    assert answer.status == 200, answer
