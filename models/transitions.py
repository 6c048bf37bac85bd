"""Image status changes as compare-and-set updates over :data:`IMAGE_MOVES`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Table, Update, bindparam, update
from sqlalchemy.orm import Session

from models.errors import StateConflict
from models.states import IMAGE_MOVES, ImageAction, allowed_sources
from models.tables import Image, utcnow

# A Core statement on the table (unless a condition names the ORM's attributes): it touches
# no loaded object, so the ORM's bulk-update machinery would only add work.
_IMAGES = cast(Table, Image.__table__)


def move_images(
    session: Session,
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
    stmt, params = _move(image_ids, action, conditions, values)
    result: CursorResult[Any] = session.execute(stmt, params)  # type: ignore[assignment]
    return int(result.rowcount)


def moved_images(
    session: Session,
    image_ids: Sequence[str],
    action: ImageAction,
    *conditions: ColumnElement[bool],
    **values: Any,
) -> set[str]:
    """Like :func:`move_images`, in the same one statement; the ids of the images moved."""
    stmt, params = _move(image_ids, action, conditions, values)
    return set(session.scalars(stmt.returning(_IMAGES.c.image_id), params))


def _move(
    image_ids: Sequence[str],
    action: ImageAction,
    conditions: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
) -> tuple[Update, dict[str, Any]]:
    """The compare-and-set statement of ``action`` and its parameters."""
    move = IMAGE_MOVES[action]
    if move.target is not None:
        values.update(status=move.target.value, status_time=utcnow())
    values["transition_status"] = move.target_transition.value
    if conditions:
        stmt = _move_statement(action, tuple(values), tuple(conditions))
    else:  # the common case, built once per action and set of columns
        stmt = _cached_move_statement(action, tuple(sorted(values)))
    params = {f"b_{name}": value for name, value in values.items()}
    return stmt, {"b_image_ids": list(image_ids), **params}


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
