"""The one place that decides which rows a caller may see or change.

Every query for a user's resources starts from one of these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, or_, select

from models.states import Visibility
from models.tables import Image, Instance, Job


@dataclass(frozen=True)
class Caller:
    """An authenticated account acting in one zone, in the request ``request_id``."""

    account_id: str
    zone: str
    request_id: str | None = None


def visible_images(caller: Caller) -> Select[Image]:
    """Images the caller may read: public ones and their own."""
    return select(Image).where(
        Image.zone == caller.zone,
        or_(Image.owner == caller.account_id, Image.visibility == Visibility.PUBLIC.value),
    )


def owned_jobs(caller: Caller) -> Select[Job]:
    return select(Job).where(Job.zone == caller.zone, Job.owner == caller.account_id)


def owned_instances(caller: Caller) -> Select[Instance]:
    return select(Instance).where(Instance.zone == caller.zone, Instance.owner == caller.account_id)
