"""Random sequences of lifecycle actions against a running API obey the transition table.

A hypothesis state machine captures images, then applies random actions to
them: the user's (delete, recover, modify) through HTTP, the operator's
(deprecate, suspend, resume) and the retention sweep through the same
domain functions the CLI and scheduler call. A model built from
``IMAGE_MOVES`` predicts each outcome; after every step each image's status
matches the model and its ``transition_status`` is back to ``""``.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import update

from imagesvc.settings import Settings
from models.accounts import create_account
from models.db import Database
from models.errors import StateConflict
from models.image_lifecycle import cease_expired, operator_move
from models.instances import NewInstance, add_instance
from models.states import IMAGE_MOVES, ImageAction, ImageStatus
from models.tables import Image, utcnow
from tests.conftest import MiB, make_raw_disk
from tests.support import ServiceProcess

USER_ACTIONS = ("delete", "recover", "modify")
OPERATOR_ACTIONS = {
    "deprecate": ImageAction.DEPRECATE,
    "suspend": ImageAction.SUSPEND,
    "resume": ImageAction.RESUME,
}


@dataclass
class Expected:
    status: ImageStatus
    deprecated: bool = False


def predict(state: Expected, action: str) -> Expected | None:
    """The state after ``action`` by the transition table, or None if it is illegal."""
    table_action = {
        "delete": ImageAction.BEGIN_DELETE,
        "recover": ImageAction.BEGIN_RECOVER,
        "modify": ImageAction.MODIFY,
        "cease": ImageAction.CEASE,
        **OPERATOR_ACTIONS,
    }[action]
    if action == "resume" and state.deprecated:
        table_action = ImageAction.RESUME_DEPRECATED
    if state.status not in IMAGE_MOVES[table_action].sources:
        return None
    finish = {"delete": ImageAction.FINISH_DELETE, "recover": ImageAction.FINISH_RECOVER}
    final = IMAGE_MOVES[finish.get(action, table_action)].target or state.status
    deprecated = (state.deprecated or action == "deprecate") and action != "recover"
    return Expected(final, deprecated)


@dataclass
class Http:
    base: str
    token: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", **self.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_job(self, job_id: str) -> dict[str, Any]:
        for _ in range(600):
            status, job = self.call("GET", f"/v2/zone/ac1/job/{job_id}")
            assert status == 200, job
            if job["status"] in ("successful", "failed", "done with failure"):
                return dict(job)
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never finished")


class Lifecycle(RuleBasedStateMachine):
    # Set by the test before the machine runs.
    api_base = ""
    database: Database
    settings: Settings
    disk: Path

    images = Bundle("images")

    def __init__(self) -> None:
        super().__init__()
        self.http = Http(self.api_base)
        self.account_id = self._new_account()
        self.model: dict[str, Expected] = {}

    def _new_account(self) -> str:
        with self.database.transaction() as session:
            credentials = create_account(session, "property")
        basic = b64encode(f"{credentials.api_key}:{credentials.secret}".encode()).decode()
        request = urllib.request.Request(
            self.api_base + "/v2/oauth2/token",
            data=b"grant_type=client_credentials",
            headers={"Authorization": f"Basic {basic}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            self.http.token = json.loads(response.read())["access_token"]
        return credentials.account_id

    # Few images, many steps each: long paths through the table.
    @precondition(lambda self: len(self.model) < 2)
    @rule(target=images)
    def capture(self) -> str:
        new = NewInstance("ac1", self.account_id, str(self.disk), "raw", 4 * MiB)
        with self.database.transaction() as session:
            instance_id = add_instance(session, new).instance_id
        status, reply = self.http.call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
        assert status == 202, reply
        assert self.http.wait_job(reply["job_id"])["status"] == "successful"
        self.model[reply["image_id"]] = Expected(ImageStatus.AVAILABLE)
        return str(reply["image_id"])

    # One rule per action, so that most steps act on images rather than make new ones.
    @rule(image_id=images)
    def delete(self, image_id: str) -> None:
        self._step(image_id, "delete")

    @rule(image_id=images)
    def recover(self, image_id: str) -> None:
        self._step(image_id, "recover")

    @rule(image_id=images)
    def modify(self, image_id: str) -> None:
        self._step(image_id, "modify")

    @rule(image_id=images)
    def deprecate(self, image_id: str) -> None:
        self._step(image_id, "deprecate")

    @rule(image_id=images)
    def suspend(self, image_id: str) -> None:
        self._step(image_id, "suspend")

    @rule(image_id=images)
    def resume(self, image_id: str) -> None:
        self._step(image_id, "resume")

    @rule(image_id=images)
    def cease(self, image_id: str) -> None:
        self._step(image_id, "cease")

    def _step(self, image_id: str, action: str) -> None:
        expected = predict(self.model[image_id], action)
        done = self._perform(image_id, action)
        assert done == (expected is not None), (image_id, action, self.model[image_id])
        if expected is not None:
            self.model[image_id] = expected

    def _perform(self, image_id: str, action: str) -> bool:
        if action in USER_ACTIONS:
            return self._user_action(image_id, action)
        if action == "cease":
            return self._sweep(image_id)
        try:
            with self.database.transaction() as session:
                operator_move(session, image_id, OPERATOR_ACTIONS[action])
        except StateConflict as refusal:
            assert image_id in refusal.message and action in refusal.message
            return False
        return True

    def _user_action(self, image_id: str, action: str) -> bool:
        status, reply = {
            "delete": lambda: self.http.call("DELETE", f"/v2/zone/ac1/images/{image_id}"),
            "recover": lambda: self.http.call(
                "POST", "/v2/zone/ac1/images/recover", {"images": [image_id]}
            ),
            "modify": lambda: self.http.call(
                "PUT", "/v2/zone/ac1/images", {"image": image_id, "description": action}
            ),
        }[action]()
        if status == 409:
            assert reply["ret_code"] == 1400 and image_id in reply["message"], reply
            return False
        assert status in (200, 202), reply
        assert self.http.wait_job(reply["job_id"])["status"] == "successful"
        return True

    def _sweep(self, image_id: str) -> bool:
        """The retention window passes for this image, and the sweep runs."""
        retention = self.settings.deleted_retention
        with self.database.transaction() as session:
            session.execute(
                update(Image)
                .where(Image.image_id == image_id, Image.status == ImageStatus.DELETED.value)
                .values(status_time=utcnow() - timedelta(seconds=retention + 1))
            )
            return image_id in cease_expired(session, retention)

    @invariant()
    def images_match_the_model(self) -> None:
        if not self.model:
            return
        ids = ",".join(self.model)
        status, reply = self.http.call("GET", f"/v2/zone/ac1/images?images={ids}&limit=100")
        assert status == 200, reply
        seen = {image["image_id"]: image for image in reply["images"]}
        for image_id, expected in self.model.items():
            assert seen[image_id]["status"] == expected.status.value, (image_id, expected)
            assert seen[image_id]["transition_status"] == "", seen[image_id]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def api_process(service_settings: Settings, worker: ServiceProcess) -> Iterator[str]:
    port = free_port()
    process = ServiceProcess(service_settings, "api", "--port", str(port))
    try:
        process.wait_for_output("Running on")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def test_random_action_sequences_obey_the_transition_table(
    api_process: str, database: Database, service_settings: Settings, tmp_path: Path
) -> None:
    Lifecycle.api_base = api_process
    Lifecycle.database = database
    Lifecycle.settings = service_settings
    Lifecycle.disk = make_raw_disk(tmp_path / "small.raw", size=4 * MiB, regions=1)
    run = settings(
        max_examples=20,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    Lifecycle.TestCase.settings = run
    Lifecycle.TestCase().runTest()
