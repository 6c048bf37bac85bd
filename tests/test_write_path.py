"""The API's write path (models/writes.py): a unit of work commits when it returns,
leaves nothing when it raises, turns a broken constraint into the IntegrityError the
domain catches, and runs once more when its connection was lost before its commit.

On PostgreSQL the path is asyncpg on the event loop; on SQLite, a Session in a thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import String, bindparam, func, select, text, tuple_

from api.responses import job_body
from api.schemas import CaptureOut, JobOut
from models.client_requests import DuplicateRequest, remember
from models.db import Database
from models.errors import StateConflict
from models.jobs import job_row, new_job
from models.reads import AsyncpgCompiler
from models.scoping import Caller
from models.statements import Statements, new_row
from models.states import JobAction, JobStatus
from models.tables import Image, Job
from models.writes import ExpandingCompiler, Writes, writes_for
from tests.support.records import Records


@pytest.fixture
async def writes(own_database: Database) -> AsyncIterator[Writes]:
    path = writes_for(own_database, pool_size=4)
    await path.open()
    yield path
    await path.close()


def _jobs_of(database: Database, caller: Caller) -> int:
    with database.reading() as session:
        return int(session.scalar(select(func.count()).where(Job.owner == caller.account_id)) or 0)


async def test_a_unit_commits_when_it_returns_and_leaves_nothing_when_it_raises(
    writes: Writes, records: Records, own_database: Database
) -> None:
    caller = records.account()

    def record(statements: Statements) -> str:
        return new_job(statements, caller, JobAction.DELETE_IMAGES, ["img-x"]).job_id

    def record_then_refuse(statements: Statements) -> None:
        new_job(statements, caller, JobAction.DELETE_IMAGES, ["img-y"])
        raise StateConflict("refused after recording")

    job_id = await writes.run(record)
    with pytest.raises(StateConflict):
        await writes.run(record_then_refuse)
    assert _jobs_of(own_database, caller) == 1
    with own_database.reading() as session:
        assert session.get(Job, job_id) is not None


async def test_a_broken_constraint_is_the_integrity_error_the_domain_catches(
    writes: Writes, records: Records
) -> None:
    caller = records.account()

    def take_key(statements: Statements) -> None:
        remember(statements, caller, "req-1", JobAction.DELETE_IMAGES, "j-1")

    await writes.run(take_key)
    with pytest.raises(DuplicateRequest):
        await writes.run(take_key)


async def test_a_unit_whose_connection_was_lost_runs_once_more_on_a_new_one(
    writes: Writes, records: Records, own_database: Database
) -> None:
    """As after a PostgreSQL restart: the path checks no connection before use, and
    a unit whose connection dies under it runs again; nothing of the first run stays."""
    if own_database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no connection to lose")
    caller = records.account()
    runs: list[int] = []

    def record_losing_the_first_connection(statements: Statements) -> None:
        runs.append(1)
        new_job(statements, caller, JobAction.DELETE_IMAGES, ["img-z"])
        if len(runs) == 1:
            pid = statements.first(text("SELECT pg_backend_pid() AS pid"), {}).pid
            _terminate(own_database, pid)
        new_job(statements, caller, JobAction.DELETE_IMAGES, ["img-z2"])

    await writes.run(record_losing_the_first_connection)
    assert runs == [1, 1]
    assert _jobs_of(own_database, caller) == 2


def _terminate(database: Database, pid: int) -> None:
    with database.engine.connect() as connection:
        statement = text("SELECT pg_terminate_backend(:pid)")
        assert connection.execute(statement, {"pid": pid}).scalar_one()


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("action", list(JobAction))
def test_a_writes_answer_is_the_response_models_json_byte_for_byte(
    action: JobAction, status: JobStatus
) -> None:
    # Writes answer from the row they inserted (api.responses.job_body), not through
    # JobOut / CaptureOut: the bytes must be the models' for every action and status.
    caller = Caller("usr-writer01", "ac1", request_id="req-1")
    job = job_row(caller, action, ['img-a\u00e9"b', "i-c"], status=status)
    if status.is_terminal:
        job.error_code, job.error_message = "DiskVanished", 'the disk "\u2603" is gone\n'
    assert job_body(job) == JobOut.from_row(job).model_dump_json().encode()
    captured = CaptureOut(**JobOut.from_row(job).model_dump(), image_id='img-\u00e9"x')
    assert job_body(job, 'img-\u00e9"x') == captured.model_dump_json().encode()


def test_a_statement_with_lists_is_rendered_once_per_length_with_sqlalchemys_arguments() -> None:
    # ExpandingCompiler reuses the SQL rendered for the same lengths of lists and picks
    # the arguments out itself: both must be what SQLAlchemy renders for every call.
    statement = select(Image.image_id).where(
        Image.image_id.in_(bindparam("ids", expanding=True)),
        Image.status.in_(["available", "pending"]),
        Image.owner == bindparam("owner", type_=String),
    )
    pairs = select(Image.image_id).where(
        tuple_(Image.image_id, Image.owner).in_(bindparam("pairs", expanding=True))
    )
    cached, rendered = ExpandingCompiler(), AsyncpgCompiler(expanding=True)
    for ids in (["img-a"], ["img-b", "img-c", "img-d"], [], ["img-e"], ["img-f", "img-g", "x"]):
        values = {"ids": ids, "owner": f"usr-{len(ids)}"}
        assert cached.bind(statement, values) == rendered.bind(statement, values)
        tuples = {"pairs": [(i, "usr-x") for i in ids] or [("img-z", "usr-z")]}
        assert cached.bind(pairs, tuples) == rendered.bind(pairs, tuples)


def test_a_new_row_reads_and_inserts_as_the_constructors_row(own_database: Database) -> None:
    """``new_row`` sets the state at once instead of through the instrumented constructor:
    the row must read the same, every default included, and a session must insert it the
    same (no attribute event fired means nothing for an insert)."""
    given = {
        "zone": "ac1",
        "owner": "acc-new-row",
        "image_name": "built",
        "processor_type": "64bit",
        "platform": "linux",
        "os_family": "ubuntu",
        "visibility": "private",
        "provider": "self",
        "status": "pending",
        "file_name": None,
    }
    fast = new_row(Image, image_id="img-fast", **given)
    slow = Image(image_id="img-slow", **given)
    with own_database.transaction() as session:
        session.add_all([fast, slow])
    with own_database.reading() as session:
        stored = {
            i.image_id: i
            for i in session.scalars(select(Image).where(Image.owner == "acc-new-row"))
        }
    for column in Image.__table__.columns:
        key = column.key
        if key in ("image_id", "create_time", "status_time"):
            continue
        assert getattr(fast, key) == getattr(stored["img-slow"], key), key
        assert getattr(stored["img-fast"], key) == getattr(stored["img-slow"], key), key
    assert fast.create_time is not None and stored["img-fast"].create_time == fast.create_time
    with pytest.raises(TypeError, match="no column sizes"):
        new_row(Image, image_id="img-x", sizes=1, **given)
