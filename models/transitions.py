"""Image status changes as compare-and-set updates over :data:`IMAGE_MOVES`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Update, update
from sqlalchemy.orm import Session

from models.errors import StateConflict
from models.states import IMAGE_MOVES, ImageAction, allowed_sources
from models.tables import Image, utcnow


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
    stmt = _move_statement(image_ids, action, conditions, values)
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount)


def moved_images(
    session: Session,
    image_ids: Sequence[str],
    action: ImageAction,
    *conditions: ColumnElement[bool],
    **values: Any,
) -> set[str]:
    """Like :func:`move_images`, in the same one statement; the ids of the images moved."""
    stmt = _move_statement(image_ids, action, conditions, values).returning(Image.image_id)
    return set(session.scalars(stmt))


def _move_statement(
    image_ids: Sequence[str],
    action: ImageAction,
    conditions: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
) -> Update:
    move = IMAGE_MOVES[action]
    if move.target is not None:
        values.update(status=move.target.value, status_time=utcnow())
    values["transition_status"] = move.target_transition.value
    return (
        update(Image)
        .where(
            Image.image_id.in_(list(image_ids)),
            Image.status.in_([s.value for s in move.sources]),
            Image.transition_status == move.source_transition.value,
            *conditions,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )


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
