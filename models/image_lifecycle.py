"""The image lifecycle beyond the user's calls: operator moves, retention and cease.

Operator moves (deprecate, suspend, resume) act on any image by id; the
sweep ceases deleted images past the retention window, and purges ceased
rows after the audit window. All of them go through :data:`IMAGE_MOVES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from models.errors import ResourceNotFound
from models.states import ImageAction, ImageStatus, TransitionStatus
from models.tables import Image, utcnow
from models.transitions import move_images, refusal

# The moves an operator makes by name (the CLI offers exactly these).
OPERATOR_ACTIONS = (ImageAction.DEPRECATE, ImageAction.SUSPEND, ImageAction.RESUME)
SWEEP_BATCH = 500


def operator_move(session: Session, image_id: str, action: ImageAction) -> Image:
    """Deprecate, suspend or resume one image; 409 naming it if its state forbids that."""
    image = session.get(Image, image_id, with_for_update=True)
    if image is None:
        raise ResourceNotFound(f"image {image_id} not found")
    values: dict[str, object] = {}
    if action is ImageAction.DEPRECATE:
        values["deprecated_at"] = utcnow()
    if action is ImageAction.RESUME and image.deprecated_at is not None:
        action = ImageAction.RESUME_DEPRECATED
    if move_images(session, [image_id], action, **values) != 1:
        raise refusal(action, [image])
    session.refresh(image)
    return image


def cease_expired(session: Session, retention: float, now: datetime | None = None) -> list[str]:
    """Cease deleted images whose retention window has passed; their ids."""
    cutoff = (now or utcnow()) - timedelta(seconds=retention)
    expired = (
        Image.status == ImageStatus.DELETED.value,
        Image.transition_status == TransitionStatus.NONE.value,
        Image.status_time <= cutoff,
    )
    candidates = list(session.scalars(select(Image.image_id).where(*expired).limit(SWEEP_BATCH)))
    if not candidates:
        return []
    move_images(session, candidates, ImageAction.CEASE, Image.status_time <= cutoff)
    ceased = select(Image.image_id).where(
        Image.image_id.in_(candidates), Image.status == ImageStatus.CEASED.value
    )
    return list(session.scalars(ceased))


@dataclass(frozen=True)
class HeldFile:
    image_id: str
    file_name: str


def files_of_ceased(session: Session) -> list[HeldFile]:
    """Files still held by ceased images: the sweep frees them."""
    stmt = (
        select(Image.image_id, Image.file_name)
        .where(Image.status == ImageStatus.CEASED.value, Image.file_name.is_not(None))
        .limit(SWEEP_BATCH)
    )
    return [HeldFile(image_id, name) for image_id, name in session.execute(stmt) if name]


def forget_file(session: Session, image_id: str) -> None:
    session.execute(
        update(Image)
        .where(Image.image_id == image_id, Image.status == ImageStatus.CEASED.value)
        .values(file_name=None, byte_size=0)
    )


def purge_ceased(session: Session, window: float, now: datetime | None = None) -> int:
    """Delete ceased rows older than the audit ``window``; how many."""
    cutoff = (now or utcnow()) - timedelta(seconds=window)
    stmt = delete(Image).where(
        Image.status == ImageStatus.CEASED.value,
        Image.status_time <= cutoff,
        Image.file_name.is_(None),
    )
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
