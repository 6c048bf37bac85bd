"""Copy a virtual machine's disk file into the image store, durably.

This module is deliberately free of Celery, aiohttp and SQLAlchemy: it only deals with files,
so it can be tested with real files and reused by any worker.

The copy is written to ``<store>/.partial/<name>.part`` and only renamed onto the final path
once its bytes are on disk (fsync of the file, rename, fsync of the directory). A crash at any
point therefore leaves either no image or a complete one, never a truncated one.

Every error raised to callers is a :class:`DiskError` whose message is safe to show to users:
it never contains server paths (the caller adds the instance id for context).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

QCOW2_MAGIC = b"QFI\xfb"
# qcow2 header (v2 and v3): magic u32, version u32, backing_file_offset u64,
# backing_file_size u32, cluster_bits u32, size u64 -> the virtual size sits at byte 24.
_QCOW2_SIZE_OFFSET = 24
_QCOW2_SIZE = struct.Struct(">Q")

_READ_CHUNK = 1 << 20  # 1 MiB: hashing / read-write fallback granularity
_COPY_CHUNK = 64 << 20  # 64 MiB: one copy_file_range call, and one progress report
_SECTOR = 512  # qemu-img rounds raw images up to whole sectors
_STORED_MODE = 0o600

# copy_file_range refuses some fd pairs (cross-filesystem on old kernels, special files,
# filesystems without support); these errnos mean "do it by hand", anything else is real.
_COPY_FALLBACK_ERRNOS = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
)
# lseek(SEEK_DATA) raises these when the filesystem cannot report holes.
_NO_HOLE_SUPPORT_ERRNOS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})

_ZEROS = bytes(_READ_CHUNK)


class DiskFormat(enum.StrEnum):
    """On-disk format of a virtual machine disk."""

    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class StoredDisk:
    """What :func:`store_disk` put into the image store."""

    path: Path  # final path of the stored file
    disk_format: DiskFormat
    virtual_size: int  # bytes the guest sees (raw: file length; qcow2: header's virtual size)
    byte_size: int  # st_size of the stored file in bytes
    checksum: str  # sha256 hex digest of the stored file's bytes (holes read as zeros)


ProgressCallback = Callable[[int, int], None]  # (bytes_done, bytes_total)


class DiskError(Exception):
    """Base of all disk errors; ``str(exc)`` is safe to show users (no server paths)."""

    code: str = "DiskError"


class DiskNotFound(DiskError):
    """The source disk does not exist (or vanished during the copy)."""

    code = "DiskNotFound"


class UnsupportedDiskFormat(DiskError):
    """The disk's format cannot be handled by this worker."""

    code = "UnsupportedDiskFormat"


class DiskCopyFailed(DiskError):
    """Reading, converting or writing the disk failed."""

    code = "DiskCopyFailed"


# --------------------------------------------------------------------------- inspection


def detect_format(path: Path) -> DiskFormat:
    """Return QCOW2 if the file starts with the qcow2 magic, else RAW.

    Raises DiskNotFound if the file is missing, DiskCopyFailed if it cannot be read.
    """
    try:
        with path.open("rb") as f:
            magic = f.read(len(QCOW2_MAGIC))
    except OSError as exc:
        raise _open_error(exc) from exc
    return DiskFormat.QCOW2 if magic == QCOW2_MAGIC else DiskFormat.RAW


def qemu_img() -> str | None:
    """Return the path of the qemu-img executable, or None if it is not installed."""
    return shutil.which("qemu-img")


def virtual_size(path: Path, disk_format: DiskFormat) -> int:
    """Return the size in bytes the guest sees.

    raw: the file length (or the device size for a block device).
    qcow2: the virtual size from the image header; read directly so no qemu-img is needed.
    Raises DiskNotFound if the file is missing, DiskCopyFailed if a qcow2 header is invalid.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(exc) from exc
    try:
        if disk_format is DiskFormat.RAW:
            return _fd_size(fd)
        header = os.pread(fd, _QCOW2_SIZE_OFFSET + _QCOW2_SIZE.size, 0)
    except OSError as exc:
        raise _io_error(exc) from exc
    finally:
        os.close(fd)
    if len(header) < _QCOW2_SIZE_OFFSET + _QCOW2_SIZE.size or not header.startswith(QCOW2_MAGIC):
        raise DiskCopyFailed("the disk is not a valid qcow2 image")
    (size,) = _QCOW2_SIZE.unpack_from(header, _QCOW2_SIZE_OFFSET)
    return int(size)


def partial_dir(target: Path) -> Path:
    """Directory holding in-progress copies for ``target``.

    It is inside the target's directory so the final os.replace is an atomic same-filesystem
    rename, and dot-named so listings of the store skip it.
    """
    return target.parent / ".partial"


# --------------------------------------------------------------------------- store_disk


def store_disk(
    source: Path,
    source_format: DiskFormat,
    target: Path,
    *,
    partial_name: str,
    on_progress: ProgressCallback | None = None,
    use_qemu_img: bool | None = None,
) -> StoredDisk:
    """Copy ``source`` durably to ``target`` and describe the stored file.

    The copy keeps the source format. It is written to ``partial_dir(target)/<partial_name>.part``
    (a leftover from an earlier attempt is replaced), fsynced, then renamed onto ``target`` and
    the directory fsynced. ``use_qemu_img``: None uses qemu-img when installed, False forces the
    pure-Python copy (raw only), True requires qemu-img. In auto mode a raw file whose length
    is not a multiple of 512 is copied in Python, because qemu-img would pad it.

    On failure nothing is left behind (no partial file, no target) and a DiskError is raised:
    DiskNotFound, UnsupportedDiskFormat or DiskCopyFailed. A ``partial_name`` that is not a
    plain file name is a programming error (ValueError).
    """
    _check_partial_name(partial_name)
    partial = partial_dir(target) / f"{partial_name}.part"
    try:
        return _store(source, source_format, target, partial, on_progress, use_qemu_img)
    except BaseException:
        # Also on cancellation (KeyboardInterrupt, task time limits): never leave a partial.
        _discard(partial)
        raise


def _store(
    source: Path,
    source_format: DiskFormat,
    target: Path,
    partial: Path,
    on_progress: ProgressCallback | None,
    use_qemu_img: bool | None,
) -> StoredDisk:
    """Body of store_disk; the caller removes ``partial`` if this raises."""
    total = virtual_size(source, source_format)  # also: DiskNotFound before touching the store
    copier = _choose_copier(source_format, total, use_qemu_img)
    progress = _Progress(on_progress, total)
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)  # a previous attempt's leftover
        progress.update(0)
        copier(source, source_format, partial, progress)
        progress.update(total)
        _sync_file(partial)
        stored = _describe(partial, source_format, target)
        _publish(partial, target)
    except OSError as exc:
        raise _copy_error(exc, source) from exc
    return stored


_Copier = Callable[[Path, DiskFormat, Path, "_Progress"], None]


def _choose_copier(disk_format: DiskFormat, size: int, use_qemu_img: bool | None) -> _Copier:
    """Pick qemu-img or the Python copy for this disk."""
    exe = qemu_img() if use_qemu_img is not False else None
    if disk_format is DiskFormat.QCOW2:
        if exe is None:
            raise UnsupportedDiskFormat(
                "qcow2 disks need qemu-img, which is not installed on this worker"
            )
        return _qemu_copier(exe)
    if use_qemu_img and exe is None:
        raise DiskCopyFailed("qemu-img was requested but is not installed on this worker")
    # qemu-img pads raw images to whole sectors, which would change the bytes (and checksum)
    # of an odd-sized file; the Python copy is exact, so use it for those.
    if exe is None or (size % _SECTOR and not use_qemu_img):
        return _python_copier
    return _qemu_copier(exe)


def _python_copier(source: Path, _fmt: DiskFormat, partial: Path, progress: _Progress) -> None:
    """Copier for raw disks without qemu-img."""
    sparse_copy(source, partial, lambda done, _total: progress.update(done))


def _qemu_copier(exe: str) -> _Copier:
    """Copier that runs ``qemu-img convert`` with the given executable."""

    def copy(source: Path, fmt: DiskFormat, partial: Path, progress: _Progress) -> None:
        _qemu_convert(exe, source, fmt, partial, progress)

    return copy


def _describe(partial: Path, disk_format: DiskFormat, target: Path) -> StoredDisk:
    """Measure and hash the finished partial file."""
    return StoredDisk(
        path=target,
        disk_format=disk_format,
        virtual_size=virtual_size(partial, disk_format),
        byte_size=partial.stat().st_size,
        checksum=sha256_file(partial),
    )


def _publish(partial: Path, target: Path) -> None:
    """Atomically move the synced partial onto ``target`` and make the rename durable."""
    os.replace(partial, target)
    try:
        fsync_directory(target.parent)
    except BaseException:
        # The rename may not survive a crash; report failure and undo it so a retry starts
        # clean instead of trusting a target that might vanish.
        target.unlink(missing_ok=True)
        raise


def _check_partial_name(name: str) -> None:
    """Reject names that would escape the partial directory."""
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        raise ValueError("partial_name must be a plain file name")


def _discard(path: Path) -> None:
    """Remove ``path`` if it exists; cleanup must not mask the original error."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _sync_file(path: Path) -> None:
    """Restrict the file's permissions and flush its data to stable storage."""
    # O_RDONLY suffices for fsync on Linux; qemu-img creates files with the umask's mode,
    # so set the same private mode the Python copy uses.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, _STORED_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    """fsync a directory so renames/creations inside it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- qemu-img


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def _qemu_convert(
    exe: str, source: Path, fmt: DiskFormat, partial: Path, progress: _Progress
) -> None:
    """Run ``qemu-img convert`` from source to partial in the same format."""
    # Absolute paths: qemu-img treats "proto:..." and "json:{...}" file names as options, and
    # a name starting with "-" as a flag; an absolute path is always just a file.
    src, dst = os.path.abspath(source), os.path.abspath(partial)
    # -f is always explicit: letting qemu probe a raw guest disk would honour a fake qcow2
    # header written by the guest (e.g. a backing file pointing at a host file).
    # Default cache mode (no -t): qemu does not flush, we fsync the result ourselves, which
    # also works on tmpfs where -t none (O_DIRECT) is refused.
    argv = [exe, "convert", "-p", "-f", fmt.value, "-O", fmt.value, src, dst]
    rc, stderr = _run_with_progress(argv, lambda pct: progress.update(int(progress.total * pct)))
    if rc == 0:
        return
    if not source.exists():
        raise DiskNotFound("disk file not found")
    raise DiskCopyFailed(f"qemu-img failed: {_scrub_qemu_message(stderr, (src, dst))}")


def _run_with_progress(argv: list[str], on_fraction: Callable[[float], None]) -> tuple[int, str]:
    """Run a ``qemu-img -p`` command, feeding its progress; return (exit code, stderr)."""
    env = {**os.environ, "LC_ALL": "C"}  # stable, untranslated error messages
    # stderr goes to a file, not a pipe: reading only stdout while qemu-img fills an unread
    # stderr pipe could deadlock.
    with tempfile.TemporaryFile() as err:
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
        ) as proc:
            try:
                assert proc.stdout is not None  # guaranteed by stdout=PIPE
                _pump_progress(proc.stdout, on_fraction)
            except BaseException:
                # The callback raised or we were interrupted: don't leave qemu-img writing a
                # file we are about to delete (Popen.__exit__ then reaps it).
                proc.kill()
                raise
        err.seek(0)
        return proc.returncode, err.read().decode("utf-8", "replace")


def _pump_progress(stream: IO[bytes], on_fraction: Callable[[float], None]) -> None:
    """Parse ``(12.50/100%)`` records, separated by carriage returns, until EOF."""
    pending = b""
    while chunk := os.read(stream.fileno(), 4096):
        *records, pending = (pending + chunk).split(b"\r")
        for record in records:
            match = _PERCENT.search(record)
            if match:
                on_fraction(min(float(match.group(1)), 100.0) / 100.0)


_QUOTED_PATH = re.compile(r"'[^']*/[^']*'|\"[^\"]*/[^\"]*\"")
_BARE_PATH = re.compile(r"(?<![\w.])/[^\s'\",;]+")


def _scrub_qemu_message(stderr: str, paths: tuple[str, ...]) -> str:
    """Make a qemu-img error message short and free of server paths."""
    text = " ".join(line.strip() for line in stderr.splitlines() if line.strip())
    text = text.replace("qemu-img: ", "")
    for path in paths:
        text = text.replace(path, "<file>")
    # Paths qemu-img mentions that we did not pass (backing files, lock holders...).
    text = _BARE_PATH.sub("<file>", _QUOTED_PATH.sub("<file>", text))
    text = text.replace("'<file>'", "<file>")
    if len(text) > 300:
        text = text[:297] + "..."
    return text or "unknown error"


# --------------------------------------------------------------------------- sparse copy


def sparse_copy(
    source: Path, destination: Path, on_progress: ProgressCallback | None = None
) -> None:
    """Copy ``source`` to ``destination`` byte for byte, keeping holes as holes.

    The destination is created (or truncated) with mode 0o600. Progress is reported after each
    copied chunk (at most 64 MiB) and once at the end with (total, total).
    Raises OSError on I/O errors and DiskCopyFailed if the source shrinks during the copy.
    """
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(
            destination,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
            _STORED_MODE,
        )
        try:
            _copy_fd(src, dst, on_progress)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_fd(src: int, dst: int, on_progress: ProgressCallback | None) -> None:
    """Copy the data extents of ``src`` into ``dst``; the rest stays unallocated."""
    total = _fd_size(src)
    progress = _Progress(on_progress, total)
    # Truncating to full length first makes every region we skip a hole in the destination.
    os.ftruncate(dst, total)
    for start, end in _data_extents(src, total):
        offset = start
        while offset < end:
            offset += _copy_chunk(src, dst, offset, min(end - offset, _COPY_CHUNK))
            progress.update(offset)
    progress.update(total)


def _copy_chunk(src: int, dst: int, offset: int, count: int) -> int:
    """Copy up to ``count`` bytes at ``offset``; return how many were copied (never 0)."""
    try:
        copied = os.copy_file_range(src, dst, count, offset, offset)
    except OSError as exc:
        if exc.errno not in _COPY_FALLBACK_ERRNOS:
            raise
        copied = _copy_by_hand(src, dst, offset, count)
    if copied == 0:
        # EOF inside what was a data extent: the file was truncated under us.
        raise DiskCopyFailed("the disk changed size while it was being copied")
    return copied


def _copy_by_hand(src: int, dst: int, offset: int, count: int) -> int:
    """pread/pwrite fallback for copy_file_range; returns bytes copied."""
    done = 0
    while done < count:
        data = os.pread(src, min(count - done, _READ_CHUNK), offset + done)
        if not data:
            break
        view = memoryview(data)
        while view:  # pwrite may write less than asked
            written = os.pwrite(dst, view, offset + done)
            view = view[written:]
            done += written
    return done


# --------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    """Return the sha256 hex digest of the file's content, as ``sha256sum`` would.

    Holes are fed to the hash as zeros without reading them from disk, so a mostly-empty
    sparse image hashes at CPU speed instead of disk speed.
    Raises OSError on I/O errors and DiskCopyFailed if the file shrinks while being read.
    """
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = _fd_size(fd)
        position = 0
        for start, end in _data_extents(fd, size):
            _hash_zeros(digest, start - position)
            _hash_range(digest, fd, start, end)
            position = end
        _hash_zeros(digest, size - position)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _hash_zeros(digest: hashlib._Hash, count: int) -> None:
    """Feed ``count`` zero bytes to the digest."""
    zeros = memoryview(_ZEROS)
    while count > 0:
        step = min(count, len(zeros))
        digest.update(zeros[:step])
        count -= step


def _hash_range(digest: hashlib._Hash, fd: int, start: int, end: int) -> None:
    """Feed bytes [start, end) of ``fd`` to the digest."""
    offset = start
    while offset < end:
        data = os.pread(fd, min(end - offset, _READ_CHUNK), offset)
        if not data:
            raise DiskCopyFailed("the disk changed size while it was being read")
        digest.update(data)
        offset += len(data)


# --------------------------------------------------------------------------- helpers


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of the regions of ``fd`` that hold data, in order, within ``size``."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset: the rest is a hole
                return
            if exc.errno in _NO_HOLE_SUPPORT_ERRNOS and offset == 0:
                yield 0, size  # filesystem can't tell: treat everything as data
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def _fd_size(fd: int) -> int:
    """Length of a regular file, or of a block device (whose st_size is 0)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if not stat.S_ISREG(st.st_mode):
        raise DiskNotFound("the disk is not a regular file or block device")
    return st.st_size


class _Progress:
    """Forwards progress to an optional callback: non-decreasing, clamped, no repeats."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.total = total
        self._callback = callback
        self._last: int | None = None

    def update(self, done: int) -> None:
        """Report ``done`` bytes out of ``total``."""
        done = min(max(done, 0), self.total)
        if self._last is not None and done <= self._last:
            return
        self._last = done
        if self._callback is not None:
            self._callback(done, self.total)


def _open_error(exc: OSError) -> DiskError:
    """Translate an error opening the source disk into a user-safe DiskError."""
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return DiskNotFound("disk file not found")
    return _io_error(exc)


def _io_error(exc: OSError) -> DiskError:
    """A DiskCopyFailed naming only the OS reason (strerror never contains a path)."""
    reason = os.strerror(exc.errno) if exc.errno else "input/output error"
    return DiskCopyFailed(f"disk copy failed: {reason}")


def _copy_error(exc: OSError, source: Path) -> DiskError:
    """Translate an OSError raised mid-copy; a vanished source is DiskNotFound."""
    if not os.path.exists(source):
        return DiskNotFound("disk file not found")
    return _io_error(exc)
