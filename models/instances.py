"""Instances, as the compute service would report them.

The image service only reads instances, through :class:`InstanceInventory`;
the SQL table behind :class:`SqlInventory` stands in for the compute
service's inventory until a real backend replaces it. The operator's
``imagesvc instance`` commands write it with :func:`add_instance` and
:func:`set_instance_status`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import String, Table, bindparam, select, update
from sqlalchemy.orm import Session

from models import ids
from models.db import Database
from models.errors import InvalidParameter, ResourceNotFound, StateConflict
from models.scoping import Caller
from models.statements import Db, statements_of
from models.states import InstanceStatus, Platform, ProcessorType
from models.tables import LOCAL_HOST, Account, Instance

# A compute host's name; it becomes part of a queue name, so it is kept plain.
HOST_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
HOST_NAME = re.compile(HOST_PATTERN)

_INSTANCES = cast(Table, Instance.__table__)
# The caller's instance (scoping.owned_instances), bound: built once.
_OWNED = select(*_INSTANCES.c).where(
    _INSTANCES.c.zone == bindparam("zone", type_=String),
    _INSTANCES.c.owner == bindparam("owner", type_=String),
    _INSTANCES.c.instance_id == bindparam("instance_id", type_=String),
)


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    zone: str
    owner: str
    instance_name: str
    status: InstanceStatus
    disk_path: str
    disk_format: str
    disk_size: int
    os_family: str
    platform: str
    processor_type: str
    default_user: str
    recommended_type: str
    host: str = LOCAL_HOST

    def attributes(self) -> dict[str, str]:
        """What an image captured from this instance inherits."""
        return {
            "processor_type": self.processor_type,
            "platform": self.platform,
            "os_family": self.os_family,
            "default_user": self.default_user,
            "recommended_type": self.recommended_type,
        }


class InstanceInventory(Protocol):
    """What the image service needs to know about instances."""

    def find_owned(
        self, caller: Caller, instance_id: str, db: Db | None = None
    ) -> InstanceInfo | None:
        """The caller's instance, or None if it does not exist or is not theirs.

        ``db``, the caller's unit of work: an inventory kept in this service's
        database reads through it (no second connection); any other inventory
        ignores it.
        """

    def find(self, zone: str, instance_id: str) -> InstanceInfo | None:
        """Any instance, for workers acting on a job already authorised."""


class SqlInventory:
    """The stand-in inventory: the ``instances`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def find_owned(
        self, caller: Caller, instance_id: str, db: Db | None = None
    ) -> InstanceInfo | None:
        values = {"zone": caller.zone, "owner": caller.account_id, "instance_id": instance_id}
        if db is not None:
            return _info_or_none(statements_of(db).first(_OWNED, values))
        with self._database.reading() as reading:
            return _info_or_none(statements_of(reading).first(_OWNED, values))

    def find(self, zone: str, instance_id: str) -> InstanceInfo | None:
        stmt = select(Instance).where(Instance.zone == zone, Instance.instance_id == instance_id)
        with self._database.reading() as session:
            return _info_or_none(session.scalars(stmt).one_or_none())


def _info_or_none(row: Any) -> InstanceInfo | None:
    return instance_info(row) if row is not None else None


def instance_info(row: Instance | Any) -> InstanceInfo:
    """What the inventory tells of an instance row."""
    return InstanceInfo(
        instance_id=row.instance_id,
        zone=row.zone,
        owner=row.owner,
        instance_name=row.instance_name,
        status=InstanceStatus(row.status),
        disk_path=row.disk_path,
        disk_format=row.disk_format,
        disk_size=row.disk_size,
        os_family=row.os_family,
        platform=row.platform,
        processor_type=row.processor_type,
        default_user=row.default_user,
        recommended_type=row.recommended_type,
        host=row.host,
    )


@dataclass(frozen=True)
class NewInstance:
    """What the operator gives when registering an instance."""

    zone: str
    owner: str
    disk_path: str
    disk_format: str
    disk_size: int
    status: InstanceStatus = InstanceStatus.STOPPED
    instance_name: str = ""
    os_family: str = "linux"
    platform: Platform = Platform.LINUX
    processor_type: ProcessorType = ProcessorType.BIT64
    default_user: str = "root"
    recommended_type: str = ""
    host: str = LOCAL_HOST


def require_host_name(name: str) -> str:
    """``name`` if it can name a compute host (and so a queue); InvalidParameter if not."""
    if not HOST_NAME.fullmatch(name):
        raise InvalidParameter(
            f"host {name!r} is not a host name: letters, digits, '.', '_' or '-', at most 64"
        )
    return name


def add_instance(session: Session, new: NewInstance) -> Instance:
    require_host_name(new.host)
    if session.get(Account, new.owner) is None:
        raise ResourceNotFound(f"account {new.owner} not found")
    row = Instance(
        instance_id=ids.instance_id(),
        zone=new.zone,
        owner=new.owner,
        instance_name=new.instance_name,
        status=new.status.value,
        disk_path=new.disk_path,
        disk_format=new.disk_format,
        disk_size=new.disk_size,
        os_family=new.os_family,
        platform=new.platform.value,
        processor_type=new.processor_type.value,
        default_user=new.default_user,
        recommended_type=new.recommended_type,
        host=new.host,
    )
    session.add(row)
    return row


def set_instance_status(session: Session, instance_id: str, status: InstanceStatus) -> None:
    stmt = update(Instance).where(Instance.instance_id == instance_id).values(status=status.value)
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        raise ResourceNotFound(f"instance {instance_id} not found")


def require_stopped(instance: InstanceInfo) -> None:
    if instance.status is not InstanceStatus.STOPPED:
        raise StateConflict(
            f"instance {instance.instance_id} is {instance.status.value}; "
            "only a stopped instance can be captured"
        )
