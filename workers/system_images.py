"""``imagesvc image import``: a system image's disk goes into the store like a capture's."""

from __future__ import annotations

from pathlib import Path

from models.db import Database
from models.errors import InvalidParameter
from models.images import SystemImageSpec, new_system_image, size_in_gb
from models.states import ImageAction
from models.transitions import move_images
from workers.disk import DiskError, DiskFormat, detect_format, store_disk, virtual_size


def import_system_image(
    database: Database, image_dir: Path, disk: Path, spec: SystemImageSpec
) -> str:
    """Copy ``disk`` into the store as a public, available system image; its id."""
    disk_format, _ = inspect_disk(disk)
    with database.transaction() as session:
        image_id = new_system_image(session, spec).image_id
    try:
        stored = store_disk(
            disk,
            disk_format,
            image_dir / f"{image_id}.{disk_format.value}",
            partial_name=f"import-{image_id}",
        )
    except DiskError as exc:
        with database.transaction() as session:
            move_images(session, [image_id], ImageAction.FAIL_CAPTURE)
        raise InvalidParameter(f"import of {disk.name} failed: {exc}") from exc
    with database.transaction() as session:
        move_images(
            session,
            [image_id],
            ImageAction.FINISH_CAPTURE,
            size=size_in_gb(stored.virtual_size),
            virtual_size=stored.virtual_size,
            byte_size=stored.byte_size,
            disk_format=stored.disk_format.value,
            checksum=stored.checksum,
            checksum_algorithm=stored.checksum_algorithm,
            file_name=stored.path.name,
        )
    return image_id


def inspect_disk(disk: Path) -> tuple[DiskFormat, int]:
    """Format and virtual size of an operator-given disk; InvalidParameter if unreadable."""
    try:
        disk_format = detect_format(disk)
        return disk_format, virtual_size(disk, disk_format)
    except DiskError as exc:
        raise InvalidParameter(f"disk {disk}: {exc}") from exc
