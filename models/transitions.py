"""Image status changes as compare-and-set updates over :data:`IMAGE_MOVES`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    Select,
    String,
    Table,
    Update,
    bindparam,
    func,
    select,
    update,
)

from models.errors import StateConflict
from models.scoping import Caller, changeable_image_range
from models.statements import Db, inserting_where, statements_of
from models.states import IMAGE_MOVES, ImageAction, allowed_sources
from models.tables import Image, utcnow

# A Core statement on the table (unless a condition names the ORM's attributes): it touches
# no loaded object, so the ORM's bulk-update machinery would only add work.
_IMAGES = cast(Table, Image.__table__)
# The caller's images that they may change (scoping.changeable_images), bound.
_CHANGEABLE = changeable_image_range(
    bindparam("caller_zone", type_=String), bindparam("caller_owner", type_=String)
)


def move_images(
    db: Db,
    image_ids: Sequence[str],
    action: ImageAction,
    *conditions: ColumnElement[bool],
    **values: Any,
) -> int:
    """Apply ``action`` to every image still in a state it allows; the number moved.

    The ``WHERE`` clause repeats the move's source states (and any extra
    ``conditions``), so a row that changed since it was read is left alone
    and not counted.
    """
    values = _new_values(action, values)
    if conditions:
        stmt = _move_statement(action, tuple(values), tuple(conditions))
    else:  # the common case, built once per action and set of columns
        stmt = _cached_move_statement(action, tuple(sorted(values)))
    return statements_of(db).count(stmt, _params(image_ids, values))


def moved_changeable_images(
    db: Db,
    caller: Caller,
    image_ids: Sequence[str],
    action: ImageAction,
    then: tuple[Table, dict[str, Any]] | None = None,
) -> set[str]:
    """Like :func:`move_images` for the images ``caller`` may change
    (scoping.changeable_images), in one statement built once; the ids of the images moved.

    ``then``, PostgreSQL only: a table and the values of a row (statements.insert_values)
    inserted in the same statement (data-modifying ``WITH``) if every image moved.
    """
    values = _new_values(action, {})
    columns = tuple(sorted(values))
    if then is None:
        stmt: Executable = _changeable_move_statement(action, columns)
    else:
        stmt = _changeable_move_then_insert(action, columns, then[0])
        values_of_row = {**then[1], "moves_wanted": len(set(image_ids))}
    params = {**_params(image_ids, values), "caller_zone": caller.zone}
    params["caller_owner"] = caller.account_id
    if then is not None:
        params.update(values_of_row)
    return {row.image_id for row in statements_of(db).rows(stmt, params)}


def _new_values(action: ImageAction, values: dict[str, Any]) -> dict[str, Any]:
    """The columns ``action`` sets: ``values``, and the move's status and transition."""
    move = IMAGE_MOVES[action]
    if move.target is not None:
        values.update(status=move.target.value, status_time=utcnow())
    values["transition_status"] = move.target_transition.value
    return values


def _params(image_ids: Sequence[str], values: dict[str, Any]) -> dict[str, Any]:
    params = {f"b_{name}": value for name, value in values.items()}
    return {"b_image_ids": list(image_ids), **params}


def _move_statement(
    action: ImageAction, columns: tuple[str, ...], conditions: Sequence[ColumnElement[bool]] = ()
) -> Update:
    """The compare-and-set of ``action``, its new values bound as ``b_<column>``."""
    move = IMAGE_MOVES[action]
    images = _IMAGES.c
    return (
        update(_IMAGES)
        .where(
            images.image_id.in_(bindparam("b_image_ids", expanding=True)),
            images.status.in_(sorted(s.value for s in move.sources)),
            images.transition_status == move.source_transition.value,
            *conditions,
        )
        .values({name: bindparam(f"b_{name}", type_=images[name].type) for name in columns})
    )


_cached_move_statement = functools.cache(_move_statement)


@functools.cache
def _changeable_move_statement(action: ImageAction, columns: tuple[str, ...]) -> Update:
    return _move_statement(action, columns, _CHANGEABLE).returning(_IMAGES.c.image_id)


@functools.cache
def _changeable_move_then_insert(
    action: ImageAction, columns: tuple[str, ...], table: Table
) -> Select[Any]:
    """The move of :func:`_changeable_move_statement`, and the insert of a row of
    ``table`` only if it moved ``moves_wanted`` images; the ids moved."""
    moved = _changeable_move_statement(action, columns).cte("moved")
    moved_count = select(func.count()).select_from(moved).scalar_subquery()
    every_one = moved_count == bindparam("moves_wanted", type_=Integer)
    recorded = inserting_where(table, every_one).cte("recorded")
    return select(moved.c.image_id).add_cte(recorded)


def can_move(image: Image, action: ImageAction) -> bool:
    move = IMAGE_MOVES[action]
    return image.status in move.sources and image.transition_status == move.source_transition


def describe_state(image: Image) -> str:
    transition = f" ({image.transition_status})" if image.transition_status else ""
    return f"image {image.image_id}, which is {image.status}{transition}"


def refusal(action: ImageAction, images: Sequence[Image]) -> StateConflict:
    """The 409 for an illegal move: names the images, their states and the action."""
    verb = action.value.split()[0]  # "resume deprecated" is a resume to the user
    described = ", ".join(describe_state(image) for image in images)
    return StateConflict(
        f"cannot {verb} {described}; {verb} needs an image that is {allowed_sources(action)}"
    )
