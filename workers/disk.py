"""Copy a virtual machine's disk file into the image store, durably.

This module is deliberately free of Celery, aiohttp and SQLAlchemy: it only deals with files,
so it can be tested with real files and reused by any worker.

The copy is written to ``<store>/.partial/<name>.part`` and only renamed onto the final path
once its bytes are on disk (fsync of the file, rename, fsync of the directory). A crash at any
point therefore leaves either no image or a complete one, never a truncated one.

Cost follows the data, not the virtual size: only the source's data extents are read, each
once; their checksum (``workers.checksum``) is computed from the same buffers on other
threads while the copy goes on, and writeback to disk starts while the copy is running so the
final fsync has little left to do. A self-contained qcow2 disk (no backing file, no external
data file, no encryption, no internal snapshots: see :func:`qcow2_is_self_contained`) is
copied the same way, as it is; any other qcow2 disk is flattened by ``qemu-img convert`` and
its stored file is hashed from the page cache while its writeback is awaited.

Every error raised to callers is a :class:`DiskError` whose message is safe to show to users:
it never contains server paths (the caller adds the instance id for context).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import os
import queue
import re
import select
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from workers.checksum import (
    CHUNK_SIZE,
    CHUNKED_BLAKE3,
    ChecksumError,
    ChunkBuffers,
    ChunkedDigest,
    data_chunks,
    data_extents,
    is_all_zero,
    plain_sha256_fd,
)

QCOW2_MAGIC = b"QFI\xfb"
# qcow2 header (v2 and v3): magic u32, version u32, backing_file_offset u64,
# backing_file_size u32, cluster_bits u32, size u64 -> the virtual size sits at byte 24.
_QCOW2_SIZE_OFFSET = 24
_QCOW2_SIZE = struct.Struct(">Q")

_SECTOR = 512  # qemu-img rounds raw images up to whole sectors
_STORED_MODE = 0o600
_POLL_SECONDS = 0.25  # how often a qemu-img copy's output is looked at (progress, writeback)
_INFO_SECONDS = 60  # qemu-img info only reads a header and tables: a minute is plenty


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
    checksum: str  # hex digest of the stored file's bytes (holes read as zeros)
    checksum_algorithm: str = CHUNKED_BLAKE3  # how ``checksum`` was computed


class CopyPhase(enum.StrEnum):
    """What store_disk is doing; reported through ``on_phase``."""

    COPYING = "copying"  # reading the source's data and writing the copy
    SYNCING = "syncing"  # waiting for the copy to reach the disk (qcow2: and hashing it)


# (bytes_done, bytes_total), in data bytes: store_disk counts every data byte of the source
# once when it is copied and once when it is on disk, so bytes_total is twice the data.
ProgressCallback = Callable[[int, int], None]
PhaseCallback = Callable[[CopyPhase], None]


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
    on_phase: PhaseCallback | None = None,
    use_qemu_img: bool | None = None,
    output_format: DiskFormat | None = None,
) -> StoredDisk:
    """Copy ``source`` durably to ``target`` and describe the stored file.

    The copy keeps the source format, unless ``output_format`` names another one: then
    ``qemu-img convert`` writes that format (raw to qcow2 stores only the data). It is
    written to ``partial_dir(target)/<partial_name>.part``
    (a leftover from an earlier attempt is replaced), fsynced, then renamed onto ``target`` and
    the directory fsynced. ``use_qemu_img``: None uses qemu-img for qcow2 and the single-pass
    Python copy for raw, False forbids qemu-img (raw only), True copies raw through qemu-img
    too. ``on_progress`` gets data bytes (see ProgressCallback) at least once per chunk or
    poll; ``on_phase`` gets each CopyPhase as it begins.

    On failure nothing is left behind (no partial file, no target) and a DiskError is raised:
    DiskNotFound, UnsupportedDiskFormat or DiskCopyFailed. A ``partial_name`` that is not a
    plain file name is a programming error (ValueError).
    """
    _check_partial_name(partial_name)
    partial = partial_dir(target) / f"{partial_name}.part"
    formats = (source_format, output_format or source_format)
    try:
        progress = _Progress(on_progress)
        return _store(source, formats, target, partial, progress, on_phase, use_qemu_img)
    except BaseException:
        # Also on cancellation (KeyboardInterrupt, task time limits): never leave a partial.
        _discard(partial)
        raise


def _store(
    source: Path,
    formats: tuple[DiskFormat, DiskFormat],
    target: Path,
    partial: Path,
    progress: _Progress,
    on_phase: PhaseCallback | None,
    use_qemu_img: bool | None,
) -> StoredDisk:
    """Body of store_disk; the caller removes ``partial`` if this raises."""
    source_format, output_format = formats
    size = virtual_size(source, source_format)  # also: DiskNotFound before touching the store
    copier = _choose_copier(source, formats, size, use_qemu_img)
    progress.start(_data_bytes(source))
    phase = on_phase or _no_phase
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)  # a previous attempt's leftover
        phase(CopyPhase.COPYING)
        checksum = copier(source, source_format, partial, progress)
        progress.copied(progress.data)
        phase(CopyPhase.SYNCING)
        stored = _make_durable(partial, output_format, target, progress, checksum)
        _publish(partial, target)
    except OSError as exc:
        raise _copy_error(exc, source) from exc
    except ChecksumError as exc:
        raise DiskCopyFailed("the disk changed size while it was being copied") from exc
    return stored


def _no_phase(phase: CopyPhase) -> None:
    """Default on_phase: nobody is listening."""


# A copier writes the partial file and returns its checksum, or None when it could not hash
# while copying (qemu-img): then the file is hashed while its writeback is awaited.
_Copier = Callable[[Path, DiskFormat, Path, "_Progress"], str | None]


def _choose_copier(
    source: Path, formats: tuple[DiskFormat, DiskFormat], size: int, use_qemu_img: bool | None
) -> _Copier:
    """Pick qemu-img or the Python copy for this disk (source format, stored format)."""
    output_format = formats[1]
    exe = qemu_img() if use_qemu_img is not False else None
    if DiskFormat.QCOW2 in formats:
        if exe is None:
            raise UnsupportedDiskFormat(
                "qcow2 disks need qemu-img, which is not installed on this worker"
            )
        if formats == (DiskFormat.QCOW2, DiskFormat.QCOW2) and qcow2_is_self_contained(exe, source):
            return _self_contained_qcow2_copier(exe)
        return _qemu_copier(exe, output_format)
    if use_qemu_img and exe is None:
        raise DiskCopyFailed("qemu-img was requested but is not installed on this worker")
    # qemu-img pads raw images to whole sectors, which would change the bytes (and checksum)
    # of an odd-sized file; the Python copy is exact, so use it for those.
    if use_qemu_img and exe is not None and size % _SECTOR == 0:
        return _qemu_copier(exe, output_format)
    return _python_copier


def _python_copier(source: Path, _fmt: DiskFormat, partial: Path, progress: _Progress) -> str:
    """Copier for raw disks: one pass that copies, hashes and starts writeback."""
    return sparse_copy(source, partial, lambda done, _total: progress.copied(done))


def _qemu_copier(exe: str, output_format: DiskFormat) -> _Copier:
    """Copier that runs ``qemu-img convert`` with the given executable, into ``output_format``."""

    def copy(source: Path, fmt: DiskFormat, partial: Path, progress: _Progress) -> None:
        _qemu_convert(exe, source, (fmt, output_format), partial, progress)

    return copy


def _self_contained_qcow2_copier(exe: str) -> _Copier:
    """Copier for a self-contained qcow2 disk: the file as it is, in the single-pass copy.

    What was stored is inspected again after the copy: the decision stands on the bytes that
    will be served, even if the source was changed after it was first looked at.
    """

    def copy(source: Path, fmt: DiskFormat, partial: Path, progress: _Progress) -> str:
        checksum = _python_copier(source, fmt, partial, progress)
        if not qcow2_is_self_contained(exe, partial):
            raise DiskCopyFailed("the disk changed while it was being copied")
        return checksum

    return copy


def _make_durable(
    partial: Path,
    disk_format: DiskFormat,
    target: Path,
    progress: _Progress,
    checksum: str | None,
) -> StoredDisk:
    """Wait for the partial's data to reach the disk (hashing it if needed), then fsync it."""
    # O_RDONLY suffices for fsync and sync_file_range on Linux; qemu-img creates files with
    # the umask's mode, so set the same private mode the Python copy uses.
    fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, _STORED_MODE)
        size = _fd_size(fd)
        if checksum is None:
            checksum = _sync_and_hash(fd, size, progress)
        else:
            _sync_data(fd, size, progress)
        os.fsync(fd)  # metadata, and the device's cache
    finally:
        os.close(fd)
    return StoredDisk(
        path=target,
        disk_format=disk_format,
        virtual_size=virtual_size(partial, disk_format),
        byte_size=size,
        checksum=checksum,
        checksum_algorithm=CHUNKED_BLAKE3,
    )


def _sync_data(fd: int, size: int, progress: _Progress) -> None:
    """Wait, chunk by chunk, for the file's data to be written back; report it as synced."""
    extents = list(data_extents(fd, size))
    total = sum(end - start for start, end in extents)
    _writeback(fd, 0, 0, _SYNC_WRITE)  # queue all of it at once: the disk sees a deep queue
    done = 0
    for start, end in extents:
        for offset in range(start, end, CHUNK_SIZE):
            length = min(CHUNK_SIZE, end - offset)
            _writeback(fd, offset, length, _SYNC_WAIT)
            done += length
            progress.synced(done, total)


def _sync_and_hash(fd: int, size: int, progress: _Progress) -> str:
    """Hash the file's data chunks (from the page cache) while their writeback is awaited."""
    extents = list(data_extents(fd, size))
    total = sum(end - start for start, end in extents)
    _writeback(fd, 0, 0, _SYNC_WRITE)
    done = 0
    with ChunkBuffers() as buffers, ChunkedDigest(size) as digest:
        for index, pieces in data_chunks(iter(extents)):
            digest.add_chunk(index, buffers.read(fd, index, size))
            _writeback(fd, index * CHUNK_SIZE, CHUNK_SIZE, _SYNC_WAIT)
            done += sum(end - start for start, end in pieces)
            progress.synced(done, total)
        return digest.hexdigest()


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


def fsync_directory(path: Path) -> None:
    """fsync a directory so renames/creations inside it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- writeback

# sync_file_range(2) flags. Writeback is started early and awaited chunk by chunk so the copy
# and the disk work at once and the sync phase can report progress; it is only a means to
# that: durability still comes from fsync, so where the call is missing it is skipped.
_SYNC_WRITE = 2  # SYNC_FILE_RANGE_WRITE: start writeback of dirty pages, do not wait
_SYNC_WAIT = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on its way to disk


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def _writeback(fd: int, offset: int, length: int, flags: int) -> None:
    """Best-effort sync_file_range (ctypes releases the GIL while it waits)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, flags)  # a failure is left to the final fsync


# --------------------------------------------------------------------------- qemu-img


def qcow2_is_self_contained(exe: str, path: Path) -> bool:
    """True if the qcow2 file at ``path`` holds the whole disk, so it may be stored as it is.

    A qcow2 file can name other files: a backing file (the guest sees this file's clusters
    over that file's) or an external data file. Stored as it is, such an image would name a
    file of this host, and whoever later opened it would read that file: it must be flattened
    by ``qemu-img convert`` instead. An encrypted image (its key is not ours), one with
    internal snapshots (convert keeps only the current state), and one marked corrupt or
    dirty (it needs a repair that convert does as it reads) are converted too. A file that
    ``qemu-img info`` cannot read is left to convert, which reports why.
    ``qemu-img info`` reads only this file's header and tables: it opens no backing file.
    """
    info = _qcow2_info(exe, path)
    if info is None:
        return False
    specific = info.get("format-specific")
    details = specific.get("data") if isinstance(specific, dict) else None
    return bool(
        info.get("format") == "qcow2"
        and "backing-filename" not in info
        and "full-backing-filename" not in info
        and not info.get("encrypted", False)
        and not info.get("snapshots")
        and not info.get("dirty-flag", False)
        and isinstance(details, dict)
        and "data-file" not in details
        and "encrypt" not in details
        and details.get("corrupt") is False
    )


def _qcow2_info(exe: str, path: Path) -> dict[str, Any] | None:
    """``qemu-img info`` of a qcow2 file as JSON, or None if qemu-img cannot read it."""
    # -f: never probe; an absolute path: never read as an option or a protocol (see convert).
    argv = [exe, "info", "-f", DiskFormat.QCOW2.value, "--output=json", os.path.abspath(path)]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
            timeout=_INFO_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    try:
        info = json.loads(done.stdout)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def _qemu_convert(
    exe: str,
    source: Path,
    formats: tuple[DiskFormat, DiskFormat],
    partial: Path,
    progress: _Progress,
) -> None:
    """Run ``qemu-img convert`` from source to partial (source format, output format)."""
    # Absolute paths: qemu-img treats "proto:..." and "json:{...}" file names as options, and
    # a name starting with "-" as a flag; an absolute path is always just a file.
    src, dst = os.path.abspath(source), os.path.abspath(partial)
    # -f is always explicit: letting qemu probe a raw guest disk would honour a fake qcow2
    # header written by the guest (e.g. a backing file pointing at a host file).
    # Default cache mode (no -t): qemu does not flush, we fsync the result ourselves, which
    # also works on tmpfs where -t none (O_DIRECT) is refused.
    argv = [exe, "convert", "-p", "-f", formats[0].value, "-O", formats[1].value, src, dst]
    watch = _OutputWatch(partial, progress)
    rc, stderr = _run_with_progress(argv, watch.on_fraction, watch.on_tick)
    if rc == 0:
        return
    if not source.exists():
        raise DiskNotFound("disk file not found")
    raise DiskCopyFailed(f"qemu-img failed: {_scrub_qemu_message(stderr, (src, dst))}")


class _OutputWatch:
    """Progress of a qemu-img copy: its ``-p`` percentage and the growth of its output.

    qemu-img prints only whole-percent steps, which can be minutes apart on a big disk, so
    the output's allocated bytes are also polled; each poll also starts writeback of what
    qemu-img wrote, so the disk works during the copy rather than only at the final fsync.
    """

    def __init__(self, partial: Path, progress: _Progress) -> None:
        self._partial = partial
        self._progress = progress

    def on_fraction(self, fraction: float) -> None:
        """qemu-img's percentage: of the allocated data it has to copy."""
        self._progress.copied(int(self._progress.data * fraction))

    def on_tick(self) -> None:
        """Poll the output file: its allocation so far, and start its writeback."""
        try:
            fd = os.open(self._partial, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return  # not created yet
        try:
            allocated = os.fstat(fd).st_blocks * 512
            _writeback(fd, 0, 0, _SYNC_WRITE)
        finally:
            os.close(fd)
        # Metadata also takes blocks: never claim the copy done before qemu-img says so.
        self._progress.copied(min(allocated, self._progress.data * 99 // 100))


def _run_with_progress(
    argv: list[str], on_fraction: Callable[[float], None], on_tick: Callable[[], None]
) -> tuple[int, str]:
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
                _pump_progress(proc.stdout, on_fraction, on_tick)
            except BaseException:
                # The callback raised or we were interrupted: don't leave qemu-img writing a
                # file we are about to delete (Popen.__exit__ then reaps it).
                proc.kill()
                raise
        err.seek(0)
        return proc.returncode, err.read().decode("utf-8", "replace")


def _pump_progress(
    stream: IO[bytes], on_fraction: Callable[[float], None], on_tick: Callable[[], None]
) -> None:
    """Parse ``(12.50/100%)`` records, separated by carriage returns, until EOF.

    ``on_tick`` runs whenever qemu-img has been quiet for a poll interval, and at least
    once per interval while it prints.
    """
    pending = b""
    fd = stream.fileno()
    next_tick = time.monotonic() + _POLL_SECONDS
    while True:
        ready, _, _ = select.select([fd], [], [], _POLL_SECONDS)
        if time.monotonic() >= next_tick:
            on_tick()
            next_tick = time.monotonic() + _POLL_SECONDS
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return
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
) -> str:
    """Copy ``source`` to ``destination`` byte for byte, keeping holes; return its checksum.

    Only the source's data extents are read, once, in 4 MiB chunks; each chunk is hashed on a
    thread pool (``blake3-chunks-4MiB``, see workers.checksum) and written unless it is all
    zeros, and its writeback to disk is started at once. The destination is created (or
    truncated) with mode 0o600; it is not fsynced. Progress counts data bytes: (copied, data)
    after each chunk, starting with (0, data).
    Raises OSError on I/O errors and ChecksumError if the source shrinks during the copy.
    """
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(
            destination,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
            _STORED_MODE,
        )
        try:
            return _copy_and_hash(src, dst, on_progress)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_and_hash(src: int, dst: int, on_progress: ProgressCallback | None) -> str:
    """Copy the data chunks of ``src`` into ``dst`` and hash them; the rest stays a hole."""
    size = _fd_size(src)
    extents = list(data_extents(src, size))
    data = sum(end - start for start, end in extents)
    report = on_progress or _no_progress
    report(0, data)
    # Truncating to full length first makes every region we skip a hole in the destination.
    os.ftruncate(dst, size)
    done = 0
    with ChunkBuffers() as buffers, ChunkedDigest(size) as digest, _Flusher(dst) as flusher:
        for index, pieces in data_chunks(iter(extents)):
            chunk = buffers.read(src, index, size)
            digest.add_chunk(index, chunk)
            if not is_all_zero(chunk):
                _write_pieces(dst, chunk, index * CHUNK_SIZE, pieces)
                flusher.start(index * CHUNK_SIZE, len(chunk))
            done += sum(end - start for start, end in pieces)
            report(done, data)
        return digest.hexdigest()


def _no_progress(done: int, total: int) -> None:
    """Default on_progress: nobody is listening."""


def _write_pieces(
    dst: int, chunk: bytes | bytearray, base: int, pieces: list[tuple[int, int]]
) -> None:
    """Write the data pieces of a chunk; its holes stay holes."""
    view = memoryview(chunk)
    for start, end in pieces:
        piece = view[start - base : end - base]
        offset = start
        while piece:  # pwrite may write less than asked
            written = os.pwrite(dst, piece, offset)
            piece = piece[written:]
            offset += written


class _Flusher:
    """Starts writeback of written ranges on a thread of its own.

    Submitting writeback can block while the disk's queue is full; doing it here keeps the
    copy loop reading, hashing and writing meanwhile.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._ranges: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)

    def __enter__(self) -> _Flusher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ranges.put(None)
        self._thread.join()  # the fd must stay open until the thread is done with it

    def start(self, offset: int, length: int) -> None:
        """Have the range's writeback started soon."""
        self._ranges.put((offset, length))

    def _run(self) -> None:
        while (item := self._ranges.get()) is not None:
            _writeback(self._fd, item[0], item[1], _SYNC_WRITE)


# --------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    """Return the plain sha256 hex digest of the file's content, as ``sha256sum`` would.

    This was the earlier release's checksum (algorithm ``sha256``); images stored then are
    verified with it. Holes are fed to the hash as zeros without reading them from disk.
    Raises OSError on I/O errors and ChecksumError if the file shrinks while being read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return plain_sha256_fd(fd, _fd_size(fd))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- helpers


def _data_bytes(source: Path) -> int:
    """Bytes in the data extents of ``source``: what its copy will read and write."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(exc) from exc
    try:
        return sum(end - start for start, end in data_extents(fd, _fd_size(fd)))
    except OSError as exc:
        raise _io_error(exc) from exc
    finally:
        os.close(fd)


def _fd_size(fd: int) -> int:
    """Length of a regular file, or of a block device (whose st_size is 0)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if not stat.S_ISREG(st.st_mode):
        raise DiskNotFound("the disk is not a regular file or block device")
    return st.st_size


class _Progress:
    """Forwards progress in data bytes: non-decreasing, clamped, no repeats.

    Each data byte counts twice, once copied and once on disk, so the total is twice the
    source's data and progress moves during both the copy and the sync.
    """

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.data = 0
        self._callback = callback
        self._copied = 0
        self._synced = 0
        self._last: int | None = None

    def start(self, data: int) -> None:
        """The source holds ``data`` bytes of data; report (0, total)."""
        self.data = data
        self._report()

    def copied(self, done: int) -> None:
        """``done`` data bytes of the source are copied."""
        self._copied = min(max(done, self._copied), self.data)
        self._report()

    def synced(self, done: int, total: int) -> None:
        """``done`` of the copy's ``total`` data bytes are on their way to disk."""
        share = self.data if total == 0 else self.data * done // total
        self._synced = min(max(share, self._synced), self.data)
        self._report()

    def _report(self) -> None:
        done = self._copied + self._synced
        if self._last is not None and done <= self._last:
            return
        self._last = done
        if self._callback is not None:
            self._callback(done, 2 * self.data)


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
