"""Tests for workers.disk: real files in tmp_path, real qemu-img where needed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.backends import require_qemu_img
from tests.support.disks import MiB, chunked_checksum_of, write_sparse
from workers.checksum import CHUNKED_BLAKE3, data_extents
from workers.disk import (
    CopyPhase,
    DiskCopyFailed,
    DiskError,
    DiskFormat,
    DiskNotFound,
    StoredDisk,
    UnsupportedDiskFormat,
    detect_format,
    fsync_directory,
    partial_dir,
    qcow2_is_self_contained,
    sha256_file,
    sparse_copy,
    store_disk,
    virtual_size,
)

# (offset, length) of the random data written into the 64 MiB sparse test disk; the rest
# is holes. The last region ends before EOF so the file also has a trailing hole.
DATA_REGIONS = ((0, 2 * MiB), (20 * MiB + 4096, 3 * MiB), (50 * MiB, 1 * MiB + 512))
SPARSE_SIZE = 64 * MiB


# --------------------------------------------------------------------------- helpers


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a helper command, failing the test with its stderr if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{argv} failed: {result.stderr}"
    return result


def full_sha256(path: Path) -> str:
    """Reference digest: hash every byte read plainly, as sha256sum does."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_bytes(path: Path) -> int:
    """Bytes in the file's data extents, as SEEK_DATA/SEEK_HOLE report them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(end - start for start, end in data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def allocated(path: Path) -> int:
    """Bytes actually allocated on disk for the file."""
    return os.stat(path).st_blocks * 512


def make_sparse(path: Path, size: int = SPARSE_SIZE) -> Path:
    """Create a file of ``size`` bytes: random data in DATA_REGIONS, holes elsewhere."""
    return write_sparse(path, size, DATA_REGIONS)


def require_sparse(path: Path) -> None:
    """Skip when this filesystem allocates holes (then sparseness can't be checked)."""
    if allocated(path) >= path.stat().st_size:
        pytest.skip("the temporary filesystem does not create sparse files")


def qcow2_header(size: int) -> bytes:
    """A minimal qcow2 v3 header prefix announcing ``size`` virtual bytes."""
    return b"QFI\xfb" + struct.pack(">IQIIQ", 3, 0, 0, 16, size)


def make_qcow2(exe: str, path: Path) -> Path:
    """A 1 GiB qcow2 with a few MiB of data written at two offsets."""
    if shutil.which("qemu-io"):
        run(exe, "create", "-q", "-f", "qcow2", str(path), "1G")
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", str(path))
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5c 300M 2M", str(path))
    else:  # build it from a sparse raw file instead
        raw = make_sparse(path.with_suffix(".raw"), 1 << 30)
        run(exe, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path))
        raw.unlink()
    return path


def qemu_info(exe: str, path: Path) -> dict[str, object]:
    """``qemu-img info`` of a stored file, as JSON."""
    out = run(exe, "info", "-f", "qcow2", "--output=json", str(path)).stdout
    info: dict[str, object] = json.loads(out)
    return info


def assert_nothing_left(target: Path) -> None:
    """No target and no partial file after a failed store."""
    assert not target.exists()
    partials = partial_dir(target)
    assert not partials.exists() or list(partials.iterdir()) == []


class Recorder:
    """A progress callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def assert_complete(self, total: int) -> None:
        """Calls share one total, never go backwards, and end at the total."""
        assert self.calls, "progress was never reported"
        assert {t for _, t in self.calls} == {total}
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones)
        assert dones[-1] == total


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Image store directory."""
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def sparse_source(tmp_path: Path) -> Path:
    """A 64 MiB sparse raw disk with a few MiB of random data."""
    return make_sparse(tmp_path / "src.raw")


ENGINES = [pytest.param(False, id="python"), pytest.param(True, id="qemu-img")]


def engine(use_qemu: bool) -> bool:
    """Value for store_disk's use_qemu_img; the qemu variant requires qemu-img."""
    if use_qemu:
        require_qemu_img()
    return use_qemu


# --------------------------------------------------------------------------- inspection


def test_detect_format(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    qcow = tmp_path / "disk.qcow2"
    qcow.write_bytes(qcow2_header(1 << 30))
    empty = tmp_path / "empty"
    empty.touch()

    assert detect_format(raw) is DiskFormat.RAW
    assert detect_format(qcow) is DiskFormat.QCOW2
    assert detect_format(empty) is DiskFormat.RAW
    with pytest.raises(DiskNotFound):
        detect_format(tmp_path / "missing")


def test_virtual_size(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(10 * MiB + 512)
    qcow = tmp_path / "disk.qcow2"
    qcow.write_bytes(qcow2_header(5 << 30) + b"\0" * 100)

    assert virtual_size(raw, DiskFormat.RAW) == 10 * MiB + 512
    assert virtual_size(qcow, DiskFormat.QCOW2) == 5 << 30
    with pytest.raises(DiskNotFound):
        virtual_size(tmp_path / "missing", DiskFormat.RAW)
    with pytest.raises(DiskCopyFailed):  # raw bytes are not a qcow2 header
        virtual_size(raw, DiskFormat.QCOW2)
    (tmp_path / "short").write_bytes(b"QFI\xfb\0\0\0\3")
    with pytest.raises(DiskCopyFailed):
        virtual_size(tmp_path / "short", DiskFormat.QCOW2)


def test_virtual_size_matches_qemu_img(tmp_path: Path) -> None:
    exe = require_qemu_img()
    path = tmp_path / "disk.qcow2"
    run(exe, "create", "-q", "-f", "qcow2", str(path), "3G")
    assert detect_format(path) is DiskFormat.QCOW2
    assert virtual_size(path, DiskFormat.QCOW2) == qemu_info(exe, path)["virtual-size"] == 3 << 30


def test_errors_have_codes() -> None:
    assert issubclass(DiskNotFound, DiskError)
    assert (DiskNotFound.code, UnsupportedDiskFormat.code, DiskCopyFailed.code) == (
        "DiskNotFound",
        "UnsupportedDiskFormat",
        "DiskCopyFailed",
    )


# --------------------------------------------------------------------------- sparse_copy


def test_sparse_copy_keeps_content_and_holes(tmp_path: Path, sparse_source: Path) -> None:
    require_sparse(sparse_source)
    dst = tmp_path / "dst.raw"

    sparse_copy(sparse_source, dst)

    assert dst.read_bytes() == sparse_source.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    data = sum(length for _, length in DATA_REGIONS)
    # Allocation follows the data (plus block rounding), not the 64 MiB length.
    assert allocated(dst) <= allocated(sparse_source) + 1 * MiB
    assert allocated(dst) < data + 2 * MiB  # ~8 MiB of 64 MiB


def test_sparse_copy_reports_progress(tmp_path: Path) -> None:
    # Long data extents (> 64 MiB) so progress is also reported inside an extent.
    src = tmp_path / "src.raw"
    with src.open("wb") as f:
        f.truncate(200 * MiB)
        f.seek(10 * MiB)
        f.write(b"\x01" * (150 * MiB))
    recorder = Recorder()

    sparse_copy(src, tmp_path / "dst.raw", recorder)

    recorder.assert_complete(data_bytes(src))  # data bytes, not the 200 MiB length
    assert len(recorder.calls) >= 3  # not just a single final call


def test_sparse_copy_truncates_existing_destination(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(b"new" * 1000)
    dst = tmp_path / "dst.raw"
    dst.write_bytes(b"old" * 100_000)

    sparse_copy(src, dst)

    assert dst.read_bytes() == src.read_bytes()


def test_sparse_copy_across_filesystems(tmp_path: Path) -> None:
    # tmpfs -> tmp_path: copy_file_range refuses cross-filesystem-type copies with EXDEV on
    # current kernels, which exercises the pread/pwrite fallback.
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a different filesystem than tmp_path")
    src = make_sparse(shm / f"imagesvc-test-{os.getpid()}.raw", 8 * MiB)
    try:
        dst = tmp_path / "dst.raw"
        sparse_copy(src, dst)
        assert full_sha256(dst) == full_sha256(src)
    finally:
        src.unlink()


def test_sparse_copy_empty_file(tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.touch()
    recorder = Recorder()
    sparse_copy(src, tmp_path / "dst", recorder)
    assert (tmp_path / "dst").read_bytes() == b""
    assert recorder.calls == [(0, 0)]


# --------------------------------------------------------------------------- sha256_file


@pytest.mark.parametrize(
    "content",
    [b"", b"x", os.urandom(3 * MiB + 17), b"\0" * (2 * MiB)],
    ids=["empty", "one-byte", "dense-odd-size", "zeros"],
)
def test_sha256_file_dense(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    assert sha256_file(path) == hashlib.sha256(content).hexdigest()


def test_sha256_file_sparse_equals_plain_read(sparse_source: Path) -> None:
    assert sha256_file(sparse_source) == full_sha256(sparse_source)


def test_sha256_file_equals_sha256sum(sparse_source: Path) -> None:
    tool = shutil.which("sha256sum")
    if tool is None:
        pytest.skip("sha256sum is not installed")
    out = run(tool, str(sparse_source)).stdout
    assert sha256_file(sparse_source) == out.split()[0]


def test_sha256_file_leading_hole_and_all_hole(tmp_path: Path) -> None:
    leading = tmp_path / "leading"
    with leading.open("wb") as f:
        f.truncate(5 * MiB)
        f.seek(5 * MiB - 3)
        f.write(b"end")
    holes = tmp_path / "holes"
    with holes.open("wb") as f:
        f.truncate(7 * MiB + 5)
    assert sha256_file(leading) == full_sha256(leading)
    assert sha256_file(holes) == full_sha256(holes)


# --------------------------------------------------------------------------- store_disk raw


def test_store_raw_without_qemu_img(store: Path, sparse_source: Path) -> None:
    target = store / "img-1.raw"
    expected = chunked_checksum_of(sparse_source)

    stored = store_disk(
        sparse_source, DiskFormat.RAW, target, partial_name="job-1", use_qemu_img=False
    )

    assert stored == StoredDisk(
        path=target,
        disk_format=DiskFormat.RAW,
        virtual_size=SPARSE_SIZE,
        byte_size=SPARSE_SIZE,
        checksum=expected,
        checksum_algorithm=CHUNKED_BLAKE3,
    )
    assert chunked_checksum_of(target) == expected
    assert full_sha256(target) == full_sha256(sparse_source)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert list(partial_dir(target).iterdir()) == []
    if allocated(sparse_source) < SPARSE_SIZE:
        assert allocated(target) <= allocated(sparse_source) + 1 * MiB


def test_store_raw_with_qemu_img(store: Path, sparse_source: Path) -> None:
    require_qemu_img()
    target = store / "img-1.raw"
    expected = chunked_checksum_of(sparse_source)

    stored = store_disk(
        sparse_source, DiskFormat.RAW, target, partial_name="job-1", use_qemu_img=True
    )

    assert stored == StoredDisk(target, DiskFormat.RAW, SPARSE_SIZE, SPARSE_SIZE, expected)
    assert chunked_checksum_of(target) == expected
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert list(partial_dir(target).iterdir()) == []
    if allocated(sparse_source) < SPARSE_SIZE:  # qemu-img writes holes for zero runs
        assert allocated(target) <= allocated(sparse_source) + 1 * MiB


def test_store_raw_odd_size_is_exact(store: Path, tmp_path: Path) -> None:
    # qemu-img would pad a raw image to a whole sector; the stored copy must be byte-exact.
    src = tmp_path / "odd.raw"
    src.write_bytes(os.urandom(1000))
    stored = store_disk(src, DiskFormat.RAW, store / "odd.raw", partial_name="odd")
    assert (stored.virtual_size, stored.byte_size) == (1000, 1000)
    assert stored.checksum == chunked_checksum_of(src) == chunked_checksum_of(store / "odd.raw")


def test_store_overwrites_existing_target(store: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(b"\x07" * 4096)
    target = store / "img.raw"
    target.write_bytes(b"stale" * 10_000)
    stored = store_disk(src, DiskFormat.RAW, target, partial_name="j", use_qemu_img=False)
    assert target.read_bytes() == src.read_bytes()
    assert stored.byte_size == 4096


# --------------------------------------------------------------------------- store_disk qcow2


def test_store_qcow2(store: Path, tmp_path: Path) -> None:
    exe = require_qemu_img()
    src = make_qcow2(exe, tmp_path / "src.qcow2")
    target = store / "img-2.qcow2"
    recorder = Recorder()

    stored = store_disk(src, DiskFormat.QCOW2, target, partial_name="job-2", on_progress=recorder)

    info = qemu_info(exe, target)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == stored.virtual_size == 1 << 30
    assert info.get("backing-filename") is None  # self-contained image
    assert stored.path == target
    assert stored.disk_format is DiskFormat.QCOW2
    assert stored.byte_size == target.stat().st_size
    assert stored.checksum == chunked_checksum_of(target)  # qcow2: the stored file's bytes
    assert detect_format(target) is DiskFormat.QCOW2
    # Self-contained: stored as it is, in the same pass as its checksum.
    assert target.read_bytes() == src.read_bytes()
    # Same guest-visible content, block for block.
    run(exe, "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(src), str(target))
    assert list(partial_dir(target).iterdir()) == []
    # Data bytes, each counted once copied and once synced; not the 1 GiB virtual size.
    recorder.assert_complete(2 * data_bytes(src))
    assert recorder.calls[0] == (0, 2 * data_bytes(src))


def make_overlay(exe: str, path: Path, backing: Path, backing_format: str = "qcow2") -> Path:
    """A qcow2 over ``backing``, with a little data of its own when qemu-io is there."""
    run(exe, "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", backing_format, str(path))
    if shutil.which("qemu-io"):
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 512K 1M", str(path))
    return path


def assert_flattened(exe: str, src: Path, target: Path) -> dict[str, object]:
    """``target`` is a plain qcow2 with the guest-visible content of ``src``; its info."""
    info = qemu_info(exe, target)
    assert info.get("backing-filename") is None and not info.get("snapshots")
    assert "data-file" not in str(info.get("format-specific"))
    run(exe, "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(src), str(target))
    return info


def with_a_backing_file(exe: str, tmp_path: Path) -> Path:
    return make_overlay(exe, tmp_path / "over.qcow2", make_qcow2(exe, tmp_path / "base.qcow2"))


def with_an_external_data_file(exe: str, tmp_path: Path) -> Path:
    src, data_file = tmp_path / "src.qcow2", tmp_path / "src.data"
    run(exe, "create", "-q", "-f", "qcow2", "-o", f"data_file={data_file}", str(src), "64M")
    if shutil.which("qemu-io"):
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 2M", str(src))
    return src


def with_an_internal_snapshot(exe: str, tmp_path: Path) -> Path:
    src = make_qcow2(exe, tmp_path / "src.qcow2")
    run(exe, "snapshot", "-c", "before", str(src))  # convert keeps only the current state
    return src


@pytest.mark.parametrize(
    "make", [with_a_backing_file, with_an_external_data_file, with_an_internal_snapshot]
)
def test_qcow2_that_is_not_self_contained_is_flattened(
    store: Path, tmp_path: Path, make: Callable[[str, Path], Path]
) -> None:
    exe = require_qemu_img()
    src = make(exe, tmp_path)
    target = store / "img.qcow2"
    assert not qcow2_is_self_contained(exe, src)

    stored = store_disk(src, DiskFormat.QCOW2, target, partial_name="j")

    assert_flattened(exe, src, target)  # e.g. the backing file's data is in the image itself
    assert stored.checksum == chunked_checksum_of(target)
    assert list(partial_dir(target).iterdir()) == []


def test_deciding_never_opens_the_backing_file(tmp_path: Path) -> None:
    # A backing file names a host file; looking at the image must not open it. A FIFO shows
    # any open: the writer's own open returns only once someone opens the FIFO to read.
    exe = require_qemu_img()
    fifo = tmp_path / "host-file"
    os.mkfifo(fifo)
    overlay = tmp_path / "over.qcow2"  # -u: create it without opening the FIFO either
    run(exe, "create", "-q", "-u", "-f", "qcow2", "-b", str(fifo), "-F", "raw", str(overlay), "1M")
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert not qcow2_is_self_contained(exe, overlay)
    woken = opened.wait(timeout=1.0)  # had qemu-img opened it, the writer would be awake
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # release the writer
    thread.join()
    os.close(reader)
    assert not woken, "qemu-img info opened the backing file"


def test_qcow2_that_gains_a_backing_file_during_the_copy_is_refused(
    store: Path, tmp_path: Path
) -> None:
    # Looked at, it was self-contained; what was copied names a host file: never stored.
    exe = require_qemu_img()
    src = make_qcow2(exe, tmp_path / "src.qcow2")
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host secret!" * (1 << 18))  # 3 MiB
    overlay = make_overlay(exe, tmp_path / "over.qcow2", secret, "raw")
    target = store / "img.qcow2"

    def swap(phase: CopyPhase) -> None:
        if phase is CopyPhase.COPYING:
            src.write_bytes(overlay.read_bytes())  # same file, new content

    with pytest.raises(DiskCopyFailed, match="changed while it was being copied"):
        store_disk(src, DiskFormat.QCOW2, target, partial_name="j", on_phase=swap)
    assert_nothing_left(target)


def test_qcow2_without_qemu_img_is_unsupported(store: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.qcow2"
    src.write_bytes(qcow2_header(1 << 30) + b"\0" * 512)
    target = store / "img.qcow2"

    with pytest.raises(UnsupportedDiskFormat) as excinfo:
        store_disk(src, DiskFormat.QCOW2, target, partial_name="j", use_qemu_img=False)

    assert str(excinfo.value) == "qcow2 disks need qemu-img, which is not installed on this worker"
    assert_nothing_left(target)


def test_corrupt_qcow2_fails_cleanly(store: Path, tmp_path: Path) -> None:
    require_qemu_img()
    src = tmp_path / "bad.qcow2"
    src.write_bytes(b"QFI\xfb" + b"garbage!" * 64)
    target = store / "img.qcow2"

    with pytest.raises(DiskCopyFailed) as excinfo:
        store_disk(src, DiskFormat.QCOW2, target, partial_name="j")

    message = str(excinfo.value)
    assert message.startswith("qemu-img failed: ")
    assert str(tmp_path) not in message
    assert "/" not in message
    assert_nothing_left(target)


def test_raw_claimed_as_qcow2_fails_cleanly(store: Path, sparse_source: Path) -> None:
    target = store / "img.qcow2"
    with pytest.raises(DiskCopyFailed):
        store_disk(sparse_source, DiskFormat.QCOW2, target, partial_name="j")
    assert_nothing_left(target)


def test_raw_disk_with_fake_qcow2_header_is_copied_as_raw(store: Path, tmp_path: Path) -> None:
    # A guest can write a qcow2 header (with a backing file pointing at a host file) into its
    # raw disk; it must be stored verbatim, never interpreted.
    exe = require_qemu_img()
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host secret" * 1000)
    evil = tmp_path / "evil.qcow2"
    run(exe, "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(evil), "1M")
    src = tmp_path / "guest.raw"
    src.write_bytes(evil.read_bytes().ljust(1 * MiB, b"\0"))
    target = store / "img.raw"

    stored = store_disk(src, DiskFormat.RAW, target, partial_name="j")

    assert target.read_bytes() == src.read_bytes()
    assert stored.virtual_size == 1 * MiB
    assert b"host secret" not in target.read_bytes()


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("use_qemu", ENGINES)
def test_leftover_partial_is_replaced(store: Path, sparse_source: Path, use_qemu: bool) -> None:
    target = store / "img.raw"
    leftover = partial_dir(target) / "job-3.part"
    leftover.parent.mkdir()
    leftover.write_bytes(b"half-written previous attempt" * 100_000)  # longer than nothing

    stored = store_disk(
        sparse_source, DiskFormat.RAW, target, partial_name="job-3", use_qemu_img=engine(use_qemu)
    )

    assert not leftover.exists()
    assert stored.checksum == chunked_checksum_of(sparse_source) == chunked_checksum_of(target)
    assert stored.byte_size == SPARSE_SIZE


@pytest.mark.parametrize("fmt", list(DiskFormat))
def test_missing_source(store: Path, tmp_path: Path, fmt: DiskFormat) -> None:
    target = store / "img"
    with pytest.raises(DiskNotFound) as excinfo:
        store_disk(tmp_path / "nope", fmt, target, partial_name="j")
    assert str(tmp_path) not in str(excinfo.value)
    assert_nothing_left(target)


@pytest.mark.parametrize("use_qemu", ENGINES)
def test_source_vanishing_before_copy(store: Path, sparse_source: Path, use_qemu: bool) -> None:
    # The first progress report happens after the source was checked and before it is
    # opened for copying: deleting it there reproduces the race without mocks.
    target = store / "img.raw"

    def vanish(done: int, total: int) -> None:
        sparse_source.unlink(missing_ok=True)

    with pytest.raises(DiskNotFound):
        store_disk(
            sparse_source,
            DiskFormat.RAW,
            target,
            partial_name="j",
            on_progress=vanish,
            use_qemu_img=engine(use_qemu),
        )
    assert_nothing_left(target)


def test_qcow2_source_vanishing_before_copy(store: Path, tmp_path: Path) -> None:
    exe = require_qemu_img()
    src = tmp_path / "src.qcow2"
    run(exe, "create", "-q", "-f", "qcow2", str(src), "64M")
    target = store / "img.qcow2"

    def vanish(done: int, total: int) -> None:
        src.unlink(missing_ok=True)

    with pytest.raises(DiskNotFound):
        store_disk(src, DiskFormat.QCOW2, target, partial_name="j", on_progress=vanish)
    assert_nothing_left(target)


class Cancelled(Exception):
    """Raised from a progress callback to simulate a cancelled task."""


@pytest.mark.parametrize("use_qemu", ENGINES)
def test_exception_in_callback_cleans_up(store: Path, tmp_path: Path, use_qemu: bool) -> None:
    src = tmp_path / "src.raw"
    with src.open("wb") as f:  # dense enough that the copy reports progress midway
        f.write(b"\x01" * (160 * MiB))
    target = store / "img.raw"

    def cancel(done: int, total: int) -> None:
        if done > 0:
            raise Cancelled

    with pytest.raises(Cancelled):
        store_disk(
            src,
            DiskFormat.RAW,
            target,
            partial_name="j",
            on_progress=cancel,
            use_qemu_img=engine(use_qemu),
        )
    assert_nothing_left(target)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x"])
def test_bad_partial_name(store: Path, sparse_source: Path, name: str) -> None:
    with pytest.raises(ValueError):
        store_disk(sparse_source, DiskFormat.RAW, store / "img", partial_name=name)


# --------------------------------------------------------------------------- progress & misc


@pytest.mark.parametrize("use_qemu", ENGINES)
def test_store_progress(store: Path, sparse_source: Path, use_qemu: bool) -> None:
    recorder = Recorder()
    store_disk(
        sparse_source,
        DiskFormat.RAW,
        store / "img.raw",
        partial_name="j",
        on_progress=recorder,
        use_qemu_img=engine(use_qemu),
    )
    total = 2 * data_bytes(sparse_source)
    recorder.assert_complete(total)
    assert recorder.calls[0] == (0, total)


def test_store_empty_raw(store: Path, tmp_path: Path) -> None:
    src = tmp_path / "empty.raw"
    src.touch()
    recorder = Recorder()
    stored = store_disk(
        src, DiskFormat.RAW, store / "e.raw", partial_name="e", on_progress=recorder
    )
    assert (stored.virtual_size, stored.byte_size) == (0, 0)
    assert stored.checksum == chunked_checksum_of(src)  # of no chunk at all
    assert recorder.calls == [(0, 0)]


def test_fsync_directory(tmp_path: Path) -> None:
    fsync_directory(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_directory(Path(__file__))


def test_partial_dir(tmp_path: Path) -> None:
    assert partial_dir(tmp_path / "store" / "img.qcow2") == tmp_path / "store" / ".partial"


@pytest.mark.parametrize("use_qemu", ENGINES)
def test_progress_moves_in_every_phase(store: Path, tmp_path: Path, use_qemu: bool) -> None:
    src = tmp_path / "src.raw"
    with src.open("wb") as f:  # several chunks of data, and holes
        f.truncate(256 * MiB)
        f.seek(64 * MiB)
        f.write(os.urandom(40 * MiB))
    phases: list[CopyPhase] = []
    seen: list[tuple[CopyPhase, int]] = []

    store_disk(
        src,
        DiskFormat.RAW,
        store / "img.raw",
        partial_name="j",
        on_progress=lambda done, total: seen.append((phases[-1], done)) if phases else None,
        on_phase=phases.append,
        use_qemu_img=engine(use_qemu),
    )

    assert phases == [CopyPhase.COPYING, CopyPhase.SYNCING]
    for phase in phases:
        done = [d for p, d in seen if p is phase]
        assert len(done) >= 2 and done[-1] > done[0], f"progress stood still while {phase}"
    assert seen[-1][1] == 2 * data_bytes(src)
