"""Disks to capture, and the files an image has in the store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import blake3

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
    return write_sparse(
        path, size, [(index * step + _PAGE, per_region) for index in range(regions)]
    )


def write_sparse(path: Path, size: int, regions: Iterable[tuple[int, int]]) -> Path:
    """A file of ``size`` bytes: random data at each (offset, length), holes elsewhere."""
    with open(path, "wb") as disk:
        disk.truncate(size)
        for offset, length in regions:
            block = os.urandom(min(length, _BLOCK))
            disk.seek(offset)
            for start in range(0, length, len(block)):
                disk.write(block[: length - start])
    return path


def stored_files(image_dir: Path, image_id: str) -> list[Path]:
    """The files in the store that belong to an image (one run's copy, named by its attempt)."""
    return sorted(image_dir.glob(f"{image_id}.*"))


def stored_file(image_dir: Path, image_id: str) -> Path:
    """The one file an image has in the store (fails if it has none or several)."""
    files = stored_files(image_dir, image_id)
    assert len(files) == 1, f"{image_id} should have exactly one file, has {files}"
    return files[0]


# The hash of each chunked checksum algorithm, as the README's recipes use it.
CHUNKED_HASHES: dict[str, Callable[[], Any]] = {
    "blake3-chunks-4MiB": blake3.blake3,
    "sha256-chunks-4MiB": hashlib.sha256,
}


def chunked_checksum_of(path: Path, algorithm: str = "blake3-chunks-4MiB") -> str:
    """A chunked checksum the plain way, as the README's recipe: every 4 MiB chunk read."""
    new = CHUNKED_HASHES[algorithm]
    outer = new()
    with open(path, "rb") as stream:
        while chunk := stream.read(4 * MiB):
            inner = new()
            inner.update(chunk)
            outer.update(inner.digest())
    return str(outer.hexdigest())
