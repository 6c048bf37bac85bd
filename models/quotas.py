"""Per-account limits on images: how many, and how many GB, not counting ceased ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, Select, String, bindparam, func, select, update
from sqlalchemy.orm import Session

from models.errors import QuotaExceeded, ResourceNotFound
from models.statements import Db, statements_of
from models.states import ImageStatus
from models.tables import Account, Image

_ACCOUNT = bindparam("account_id", type_=String)
_QUOTA = select(Account.quota_images, Account.quota_gb).where(Account.account_id == _ACCOUNT)
# Held until commit: concurrent captures by one account are counted one after the other.
_LOCKED_QUOTA = _QUOTA.with_for_update()
_USAGE = select(func.count(), func.coalesce(func.sum(Image.size), 0)).where(
    Image.owner == _ACCOUNT, Image.status != ImageStatus.CEASED.value
)


@dataclass(frozen=True)
class Quota:
    images: int
    gb: int


@dataclass(frozen=True)
class Usage:
    images: int
    gb: int


def quota_of(db: Db, account_id: str, default: Quota, *, lock: bool = False) -> Quota:
    """The account's quota. With ``lock``, holds the account row until commit so that
    concurrent captures by one account are counted one after the other."""
    stmt = _LOCKED_QUOTA if lock else _QUOTA
    row = statements_of(db).first(stmt, {"account_id": account_id})
    if row is None:
        raise ResourceNotFound(f"account {account_id} not found")
    images, gb = row
    return quota_from(images, gb, default)


def quota_from(images: int | None, gb: int | None, default: Quota) -> Quota:
    """An account's quota from its ``quota_images`` and ``quota_gb`` (None: the default)."""
    return Quota(
        images=default.images if images is None else images,
        gb=default.gb if gb is None else gb,
    )


def usage_of(db: Db, account_id: str) -> Usage:
    images, gb = statements_of(db).rows(_USAGE, {"account_id": account_id})[0]
    return Usage(images=int(images), gb=int(gb))


def require_room(db: Db, account_id: str, default: Quota, adding_gb: int) -> None:
    """Refuse (429) a new image of ``adding_gb`` that would exceed the account's quota."""
    quota = quota_of(db, account_id, default, lock=True)
    _refuse_over(quota, usage_of(db, account_id), adding_gb)


def require_room_for_added(db: Db, account_id: str, quota: Quota, added_gb: int) -> None:
    """Refuse (429) the image of ``added_gb`` just recorded, if it exceeds ``quota``.

    ``quota`` comes from :func:`quota_of` with ``lock``, taken before the image
    was recorded: the usage read here, in a later statement, counts every image
    of a capture that held the lock before, and this one.
    """
    used = usage_of(db, account_id)
    _refuse_over(quota, Usage(used.images - 1, used.gb - added_gb), added_gb)


def usage_beside(*inserts: Insert) -> Select[int, int]:
    """PostgreSQL: one statement that runs ``inserts`` (data-modifying ``WITH``) and reads
    the usage of the account bound as ``account_id``: a round trip for each insert saved.

    The usage is read from the statement's snapshot, which does not hold the rows
    it inserts: it is the usage beside them, as :func:`require_room_beside` takes it.
    Run after :func:`quota_of` with ``lock``, like :func:`require_room_for_added`.
    """
    statement = _USAGE
    for n, inserted in enumerate(inserts):
        statement = statement.add_cte(inserted.cte(f"inserted_{n}"))
    return statement


def require_room_beside(quota: Quota, row: Any, adding_gb: int) -> None:
    """Refuse (429) an image of ``adding_gb`` beyond the usage read by :func:`usage_beside`."""
    images, gb = row
    _refuse_over(quota, Usage(int(images), int(gb)), adding_gb)


def _refuse_over(quota: Quota, used: Usage, adding_gb: int) -> None:
    if used.images + 1 > quota.images:
        raise QuotaExceeded(f"image quota exceeded: {used.images} of {quota.images} images in use")
    if used.gb + adding_gb > quota.gb:
        raise QuotaExceeded(
            f"size quota exceeded: this image needs {adding_gb} GB and "
            f"{used.gb} of {quota.gb} GB are in use"
        )


def set_quota(session: Session, account_id: str, images: int | None, gb: int | None) -> None:
    """Override the defaults for one account; None leaves that limit as it is."""
    values = {
        key: value
        for key, value in (("quota_images", images), ("quota_gb", gb))
        if value is not None
    }
    stmt = update(Account).where(Account.account_id == account_id).values(**values)
    if values and session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        raise ResourceNotFound(f"account {account_id} not found")
    if not values and session.get(Account, account_id) is None:
        raise ResourceNotFound(f"account {account_id} not found")
