"""Random sequences of lifecycle actions against a running API obey the transition table.

A hypothesis state machine captures images, then applies random actions to
them: the user's (delete, recover, modify) through HTTP, the operator's
(deprecate, suspend, resume) and the retention sweep through the same
domain functions the CLI and scheduler call. :data:`ORACLE`, the lifecycle
written out by hand from the contract (not derived from ``IMAGE_MOVES``),
predicts each outcome, so a wrong entry in the code's table fails the test;
after every step each image's status matches the oracle and its
``transition_status`` is back to ``""``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

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
from models.states import ImageAction, ImageStatus
from models.tables import Image, utcnow
from tests.support.disks import MiB, make_raw_disk
from tests.support.http import Client
from tests.support.processes import ServiceProcess, free_port, running

USER_ACTIONS = ("delete", "recover", "modify")
OPERATOR_ACTIONS = {
    "deprecate": ImageAction.DEPRECATE,
    "suspend": ImageAction.SUSPEND,
    "resume": ImageAction.RESUME,
}

# What each action does to an image in each state; None: the action is refused (409).
# A suspended image remembers whether it was deprecated, and resumes to that.
_REFUSED = dict.fromkeys(("delete", "recover", "modify", "deprecate", "suspend", "resume", "cease"))
ORACLE: dict[str, dict[str, str | None]] = {
    "available": {
        **_REFUSED,
        "delete": "deleted",
        "modify": "available",
        "deprecate": "deprecated",
        "suspend": "suspended",
    },
    "deprecated": {
        **_REFUSED,
        "delete": "deleted",
        "modify": "deprecated",
        "suspend": "suspended, was deprecated",
    },
    "suspended": {**_REFUSED, "modify": "suspended", "resume": "available"},
    "suspended, was deprecated": {
        **_REFUSED,
        "modify": "suspended, was deprecated",
        "resume": "deprecated",
    },
    # Recovering forgets a deprecation: the image comes back available.
    "deleted": {**_REFUSED, "recover": "available", "cease": "ceased"},
    "ceased": {**_REFUSED},
}


def shown_status(state: str) -> str:
    """The status the API shows for a state of the oracle."""
    return state.split(",")[0]


class Lifecycle(RuleBasedStateMachine):
    # Set by the test before the machine runs.
    api_port = 0
    database: Database
    settings: Settings
    disk: Path

    images = Bundle("images")

    def __init__(self) -> None:
        super().__init__()
        self.http = Client(self.api_port)
        with self.database.transaction() as session:
            credentials = create_account(session, "property")
        self.http.sign_in(credentials.api_key, credentials.secret)
        self.account_id = credentials.account_id
        self.model: dict[str, str] = {}

    # Few images, many steps each: long paths through the table.
    @precondition(lambda self: len(self.model) < 2)
    @rule(target=images)
    def capture(self) -> str:
        new = NewInstance("ac1", self.account_id, str(self.disk), "raw", 4 * MiB)
        with self.database.transaction() as session:
            instance_id = add_instance(session, new).instance_id
        reply = self.http.call("POST", "/v2/zone/ac1/images", {"instance": instance_id})
        assert reply.status == 202, reply
        assert self.http.wait_job(reply.body["job_id"])["status"] == "successful"
        self.model[reply.body["image_id"]] = "available"
        return str(reply.body["image_id"])

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
        expected = ORACLE[self.model[image_id]][action]
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
        reply = {
            "delete": lambda: self.http.call("DELETE", f"/v2/zone/ac1/images/{image_id}"),
            "recover": lambda: self.http.call(
                "POST", "/v2/zone/ac1/images/recover", {"images": [image_id]}
            ),
            "modify": lambda: self.http.call(
                "PUT", "/v2/zone/ac1/images", {"image": image_id, "description": action}
            ),
        }[action]()
        if reply.status == 409:
            assert reply.body["ret_code"] == 1400 and image_id in reply.body["message"], reply
            return False
        # Modify answers with its job already done; delete and recover accept a job.
        assert reply.status == (200 if action == "modify" else 202), reply
        assert self.http.wait_job(reply.body["job_id"])["status"] == "successful"
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
        reply = self.http.call("GET", f"/v2/zone/ac1/images?images={ids}&limit=100")
        assert reply.status == 200, reply
        seen = {image["image_id"]: image for image in reply.body["images"]}
        for image_id, expected in self.model.items():
            assert seen[image_id]["status"] == shown_status(expected), (image_id, expected)
            assert seen[image_id]["transition_status"] == "", seen[image_id]


@pytest.fixture
def api_port(service_settings: Settings, worker: ServiceProcess) -> Iterator[int]:
    port = free_port()
    with running(service_settings, "Running on", "api", "--port", str(port)):
        yield port


# 20 examples of up to 25 steps, each step waiting at most 60 s for its job: far above
# the default timeout's two minutes on a busy machine, and far below a hang's cost.
@pytest.mark.timeout(600)
def test_random_action_sequences_obey_the_transition_table(
    api_port: int, database: Database, service_settings: Settings, tmp_path: Path
) -> None:
    Lifecycle.api_port = api_port
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
