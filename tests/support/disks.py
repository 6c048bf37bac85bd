"""Disks to capture, and the files an image has in the store."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
_BLOCK = 8 * MiB
# Data starts past the first page, so a random first block never looks like a qcow2 header.
_PAGE = 4096


def make_raw_disk(
    path: Path, size: int = 64 * MiB, regions: int | None = None, data: int | None = None
) -> Path:
    """A sparse raw disk of ``size`` bytes, random data in equally spaced regions, holes between.

    By default 3 regions of 1 MiB; given only ``data``, that many bytes in 8 MiB regions.
    """
    if regions is None:
        regions = 3 if data is None else max(1, data // _BLOCK)
    regions = max(regions, 1)
    step = size // regions
    per_region = min((regions * MiB if data is None else data) // regions, step - _PAGE)
    with open(path, "wb") as disk:
        disk.truncate(size)
        for index in range(regions):
            block = os.urandom(min(per_region, _BLOCK))
            disk.seek(index * step + _PAGE)
            for start in range(0, per_region, len(block)):
                disk.write(block[: per_region - start])
    return path


def stored_files(image_dir: Path, image_id: str) -> list[Path]:
    """The files in the store that belong to an image (one run's copy, named by its attempt)."""
    return sorted(image_dir.glob(f"{image_id}.*"))


def stored_file(image_dir: Path, image_id: str) -> Path:
    """The one file an image has in the store (fails if it has none or several)."""
    files = stored_files(image_dir, image_id)
    assert len(files) == 1, f"{image_id} should have exactly one file, has {files}"
    return files[0]
