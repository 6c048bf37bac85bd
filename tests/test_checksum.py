"""workers.checksum: the recorded digest equals the plain recipe, whatever the file's layout.

Also: the migration gives the earlier release's checksums their algorithm name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from models.migrate import upgrade
from tests.support.databases import scratch_database
from tests.support.disks import chunked_checksum_of
from workers.checksum import (
    ALGORITHMS,
    CHUNK_SIZE,
    CHUNKED_BLAKE3,
    CHUNKED_SHA256,
    PLAIN_SHA256,
    ChecksumError,
    checksum_file,
)
from workers.disk import sparse_copy

MiB = 1 << 20
CHUNKED = [CHUNKED_BLAKE3, CHUNKED_SHA256]


def layout(size: int, *writes: tuple[int, bytes]) -> Callable[[Path], Path]:
    """A file maker: ``size`` bytes of holes, with ``writes`` (offset, bytes) in it."""

    def make(path: Path) -> Path:
        with path.open("wb") as f:
            f.truncate(size)
            for offset, data in writes:
                f.seek(offset)
                f.write(data)
        return path

    return make


LAYOUTS = {
    "empty": layout(0),
    "one-byte": layout(1, (0, b"x")),
    "one-chunk": layout(CHUNK_SIZE, (0, os.urandom(CHUNK_SIZE))),
    "chunk-plus-one": layout(CHUNK_SIZE + 1, (CHUNK_SIZE, b"\x01")),
    "all-holes-odd-size": layout(10 * MiB + 3),
    "data-across-a-chunk-boundary": layout(20 * MiB, (CHUNK_SIZE - 4096, os.urandom(8192))),
    "two-extents-in-one-chunk": layout(
        9 * MiB, (4 * MiB + 8192, b"a" * 4096), (6 * MiB, b"b" * 4096)
    ),
    "written-zeros": layout(12 * MiB, (0, bytes(12 * MiB))),
    "leading-hole-trailing-data": layout(17 * MiB + 5, (17 * MiB - 100, os.urandom(105))),
}


@pytest.fixture(params=list(LAYOUTS), ids=list(LAYOUTS))
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return LAYOUTS[request.param](tmp_path / "disk.raw")


@pytest.mark.parametrize("algorithm", CHUNKED)
def test_checksum_file_equals_the_recipe(disk: Path, algorithm: str) -> None:
    # This release's algorithm, and the previous release's, which its images keep.
    assert checksum_file(disk, algorithm) == chunked_checksum_of(disk, algorithm)


def test_the_copy_hashes_what_it_writes(disk: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.raw"
    checksum = sparse_copy(disk, copy)
    assert copy.read_bytes() == disk.read_bytes()
    assert checksum == chunked_checksum_of(disk) == chunked_checksum_of(copy)


def test_the_algorithms_differ(tmp_path: Path) -> None:
    disk = layout(CHUNK_SIZE + 5, (7, b"data"))(tmp_path / "d.raw")
    assert len({checksum_file(disk, algorithm) for algorithm in ALGORITHMS}) == len(ALGORITHMS)


def test_the_plain_sha256_of_the_earlier_release(disk: Path) -> None:
    assert checksum_file(disk, PLAIN_SHA256) == hashlib.sha256(disk.read_bytes()).hexdigest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("offset", [0, CHUNK_SIZE - 1, 9 * MiB])
def test_one_changed_byte_changes_the_checksum(tmp_path: Path, offset: int, algorithm: str) -> None:
    disk = layout(10 * MiB, (CHUNK_SIZE - 4096, os.urandom(8192)))(tmp_path / "d.raw")
    before = checksum_file(disk, algorithm)
    with disk.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x01]))
    assert checksum_file(disk, algorithm) != before


def test_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    disk = layout(1, (0, b"x"))(tmp_path / "d.raw")
    with pytest.raises(ChecksumError):
        checksum_file(disk, "md5")


def test_migration_names_the_earlier_releases_algorithm(tmp_path: Path) -> None:
    columns = (
        "image_id, zone, owner, image_name, description, size, virtual_size, byte_size, "
        "disk_format, checksum, file_name, processor_type, platform, os_family, visibility, "
        "provider, recommended_type, default_user, default_passwd, status, transition_status, "
        "create_time, status_time"
    )

    def row(image_id: str, checksum: str, status: str) -> str:
        return (
            f"('{image_id}', 'ac1', 'usr-x', 'n', '', 1, 1, 1, 'raw', '{checksum}', NULL, "
            f"'64bit', 'linux', 'linux', 'private', 'self', '', '', '', '{status}', '', "
            "'2026-01-01 00:00:00+00:00', '2026-01-01 00:00:00+00:00')"
        )

    with scratch_database(tmp_path) as url:
        upgrade(url, "0004")
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(
                        f"INSERT INTO images ({columns}) VALUES "
                        f"{row('img-old', 'ab' * 32, 'available')}, {row('img-new', '', 'pending')}"
                    )
                )
            upgrade(url)
            with engine.connect() as connection:
                rows = connection.execute(text("SELECT image_id, checksum_algorithm FROM images"))
                algorithms = {str(row[0]): str(row[1]) for row in rows.all()}
        finally:
            engine.dispose()
    assert algorithms == {"img-old": PLAIN_SHA256, "img-new": ""}
