"""Image checksums: the digest recorded next to a stored image, and how to recompute it.

The current algorithm, ``blake3-chunks-4MiB``, splits the stored file into 4 MiB chunks
(the last one may be shorter), takes the BLAKE3 digest (32 bytes) of each chunk, and the
BLAKE3 digest of those digests concatenated in file order. In Python (PyPI ``blake3``)::

    outer = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            outer.update(blake3.blake3(chunk).digest())
    checksum = outer.hexdigest()

A chunk that is all zeros (a hole) always has the same digest, so a sparse file is hashed
at the cost of its data, and chunks are independent, so they are hashed on several threads
while the copy goes on. BLAKE3 hashes about three times as fast as SHA-256 on this kind of
machine (see docs/capture-profile.md), which is what a capture's CPU time follows.
Images stored by earlier releases carry ``sha256-chunks-4MiB`` (the same recipe with
SHA-256) or ``sha256`` (the plain SHA-256 of the whole file, as ``sha256sum`` prints it);
all three stay verifiable.

This module only deals with bytes and files (no Celery, aiohttp or SQLAlchemy).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

import blake3

CHUNKED_BLAKE3 = "blake3-chunks-4MiB"  # this release's algorithm
CHUNKED_SHA256 = "sha256-chunks-4MiB"  # the previous release's
PLAIN_SHA256 = "sha256"  # the release before
ALGORITHMS = (CHUNKED_BLAKE3, CHUNKED_SHA256, PLAIN_SHA256)

CHUNK_SIZE = 4 << 20
_HASH_THREADS = 2  # hashlib releases the GIL on big buffers: chunks hash in parallel
IN_FLIGHT = 4  # chunks being hashed after add_chunk returns: bounds memory to a few chunks
_ZERO_CHUNK = bytes(CHUNK_SIZE)
# lseek(SEEK_DATA) raises these when the filesystem cannot report holes.
_NO_HOLE_SUPPORT_ERRNOS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


class ChecksumError(Exception):
    """The file changed size while it was being hashed, or the algorithm is unknown."""


class _Hash(Protocol):
    """What both hashlib's and blake3's hash objects offer."""

    def update(self, data: bytes | bytearray, /) -> object: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


# The hash each chunked algorithm uses, for its chunks and for the digest of their digests.
_CHUNKED_HASHES: dict[str, Callable[[], _Hash]] = {
    CHUNKED_BLAKE3: blake3.blake3,
    CHUNKED_SHA256: hashlib.sha256,
}


def _chunked_hash(algorithm: str) -> Callable[[], _Hash]:
    """The hash of a chunked algorithm; ChecksumError for any other name."""
    try:
        return _CHUNKED_HASHES[algorithm]
    except KeyError:
        raise ChecksumError(f"unknown chunked checksum algorithm {algorithm!r}") from None


@functools.lru_cache(maxsize=8)
def zero_chunk_digest(length: int, algorithm: str = CHUNKED_BLAKE3) -> bytes:
    """Digest of ``length`` zero bytes: the digest of any hole chunk of that length."""
    return _digest(_chunked_hash(algorithm), bytes(length))


def _digest(new: Callable[[], _Hash], data: bytes | bytearray) -> bytes:
    hasher = new()
    hasher.update(data)
    return hasher.digest()


def is_all_zero(data: bytes | bytearray) -> bool:
    """True if ``data`` holds only zero bytes (a memcmp, far cheaper than hashing)."""
    return data == _ZERO_CHUNK[: len(data)] if len(data) <= CHUNK_SIZE else not any(data)


def chunk_digest(data: bytes | bytearray, algorithm: str = CHUNKED_BLAKE3) -> bytes:
    """Digest of one chunk; all-zero chunks use the known constant."""
    if is_all_zero(data):
        return zero_chunk_digest(len(data), algorithm)
    return _digest(_chunked_hash(algorithm), data)


def chunk_count(size: int) -> int:
    """Number of chunks of a file of ``size`` bytes."""
    return -(-size // CHUNK_SIZE)


def chunk_length(index: int, size: int) -> int:
    """Length of chunk ``index`` of a file of ``size`` bytes."""
    return min(CHUNK_SIZE, size - index * CHUNK_SIZE)


class ChunkedDigest:
    """Folds chunk digests in file order while the chunks are hashed on a thread pool.

    ``add_chunk(index, data)`` takes chunks with data in increasing index order; chunks
    never added are holes. ``hexdigest()`` fills in the trailing holes and returns the value.
    ``algorithm`` is one of the chunked algorithms. Use as a context manager so the threads
    stop even if the copy fails.
    """

    def __init__(self, size: int, algorithm: str = CHUNKED_BLAKE3) -> None:
        self.size = size
        self.algorithm = algorithm
        self._outer = _chunked_hash(algorithm)()
        self._next = 0  # index of the first chunk not yet queued
        self._pending: deque[Future[bytes]] = deque()
        self._pool = ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="chunk-hash")

    def __enter__(self) -> ChunkedDigest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add_chunk(self, index: int, data: bytes | bytearray) -> None:
        """Queue chunk ``index`` (its full content) for hashing.

        ``data`` is read by another thread until IN_FLIGHT more chunks have been added
        (ChunkBuffers relies on this to reuse buffers).
        """
        if index < self._next or len(data) != chunk_length(index, self.size):
            raise ChecksumError("chunks must come in order and whole")
        self._holes_until(index)
        self._pending.append(self._pool.submit(chunk_digest, data, self.algorithm))
        self._next = index + 1
        while len(self._pending) > IN_FLIGHT:
            self._outer.update(self._pending.popleft().result())

    def hexdigest(self) -> str:
        """The checksum of the whole file (trailing holes included)."""
        self._holes_until(chunk_count(self.size))
        self._drain()
        return self._outer.hexdigest()

    def _holes_until(self, index: int) -> None:
        """Fold the constant digests of the hole chunks before ``index``."""
        if index <= self._next:
            return
        self._drain()
        last = chunk_count(self.size) - 1
        full = min(index, last) - self._next  # hole chunks of full length
        while full > 0:
            batch = min(full, 4096)
            self._outer.update(zero_chunk_digest(CHUNK_SIZE, self.algorithm) * batch)
            full -= batch
        if index > last >= self._next:
            self._outer.update(zero_chunk_digest(chunk_length(last, self.size), self.algorithm))
        self._next = index

    def _drain(self) -> None:
        while self._pending:
            self._outer.update(self._pending.popleft().result())


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
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


def data_chunks(extents: Iterator[tuple[int, int]]) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """Group data extents by chunk: yield (chunk index, [(start, end) of data in it])."""
    current: int | None = None
    pieces: list[tuple[int, int]] = []
    for start, end in extents:
        for index in range(start // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1):
            piece = (max(start, index * CHUNK_SIZE), min(end, (index + 1) * CHUNK_SIZE))
            if index != current and current is not None:
                yield current, pieces
                pieces = []
            current = index
            pieces.append(piece)
    if current is not None:
        yield current, pieces


class ChunkBuffers:
    """Reads chunks into a ring of reused buffers, for a ChunkedDigest.

    Reusing buffers avoids faulting in fresh pages for every chunk (which costs more than
    the copy itself) and bounds memory. A buffer comes round again only after IN_FLIGHT + 1
    further reads, by which time ChunkedDigest has finished hashing it. Buffers are made on
    first use and kept for the process's next copy (a fresh 4 MiB buffer costs ~1000 page
    faults); leave the ``with`` block only after the digest is done with them.
    """

    _spare: ClassVar[list[bytearray]] = []
    _spare_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._ring: list[bytearray] = []
        self._turn = 0

    def __enter__(self) -> ChunkBuffers:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._spare_lock:
            self._spare.extend(self._ring[: IN_FLIGHT + 2 - len(self._spare)])
        self._ring = []

    def read(self, fd: int, index: int, size: int) -> bytes | bytearray:
        """The full content of chunk ``index`` (holes read as zeros)."""
        length = chunk_length(index, size)
        buffer = self._next_buffer()
        view = memoryview(buffer)[:length]
        done = 0
        while done < length:  # a short read is legal; an empty one means the file shrank
            count = os.preadv(fd, [view[done:]], index * CHUNK_SIZE + done)
            if count == 0:
                raise ChecksumError("the file changed size while it was being read")
            done += count
        view.release()
        # Only the last chunk of a file is short; copying it keeps comparisons fast (bytes).
        return buffer if length == CHUNK_SIZE else bytes(buffer[:length])

    def _next_buffer(self) -> bytearray:
        if len(self._ring) < IN_FLIGHT + 2:
            with self._spare_lock:
                spare = self._spare.pop() if self._spare else None
            self._ring.append(spare if spare is not None else bytearray(CHUNK_SIZE))
            return self._ring[-1]
        buffer = self._ring[self._turn]
        self._turn = (self._turn + 1) % len(self._ring)
        return buffer


ChunkDone = Callable[[int], None]  # called with the bytes of data just read


def chunked_checksum_fd(
    fd: int, size: int, on_chunk: ChunkDone | None = None, algorithm: str = CHUNKED_BLAKE3
) -> str:
    """A chunked checksum of the first ``size`` bytes of ``fd``, reading only data chunks."""
    with ChunkBuffers() as buffers, ChunkedDigest(size, algorithm) as digest:
        for index, pieces in data_chunks(data_extents(fd, size)):
            digest.add_chunk(index, buffers.read(fd, index, size))
            if on_chunk is not None:
                on_chunk(sum(end - start for start, end in pieces))
        return digest.hexdigest()


def plain_sha256_fd(fd: int, size: int) -> str:
    """SHA-256 of the whole content, as ``sha256sum`` prints it; holes fed as zeros unread."""
    digest = hashlib.sha256()
    position = 0
    for start, end in data_extents(fd, size):
        _feed_zeros(digest, start - position)
        offset = start
        while offset < end:
            data = os.pread(fd, min(end - offset, 1 << 20), offset)
            if not data:
                raise ChecksumError("the file changed size while it was being read")
            digest.update(data)
            offset += len(data)
        position = end
    _feed_zeros(digest, size - position)
    return digest.hexdigest()


def _feed_zeros(digest: hashlib._Hash, count: int) -> None:
    zeros = memoryview(_ZERO_CHUNK)
    while count > 0:
        step = min(count, len(zeros))
        digest.update(zeros[:step])
        count -= step


def checksum_file(path: Path, algorithm: str) -> str:
    """Recompute the checksum of the file at ``path`` with ``algorithm`` (one of ALGORITHMS).

    Raises OSError if the file cannot be read, ChecksumError for an unknown algorithm.
    """
    if algorithm not in ALGORITHMS:
        raise ChecksumError(f"unknown checksum algorithm {algorithm!r}")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if algorithm == PLAIN_SHA256:
            return plain_sha256_fd(fd, size)
        return chunked_checksum_fd(fd, size, algorithm=algorithm)
    finally:
        os.close(fd)


def checksum_stream(stream: BinaryIO, algorithm: str) -> str:
    """Recompute the checksum of the bytes read from ``stream`` (an object in a remote store)
    with ``algorithm`` (one of ALGORITHMS). Raises ChecksumError for an unknown algorithm."""
    if algorithm not in ALGORITHMS:
        raise ChecksumError(f"unknown checksum algorithm {algorithm!r}")
    if algorithm == PLAIN_SHA256:
        plain = hashlib.sha256()
        while data := stream.read(CHUNK_SIZE):
            plain.update(data)
        return plain.hexdigest()
    outer = _chunked_hash(algorithm)()
    while chunk := _read_chunk(stream):
        outer.update(chunk_digest(chunk, algorithm))
    return outer.hexdigest()


def _read_chunk(stream: BinaryIO) -> bytes:
    """One whole chunk (a network stream may return less per read), shorter only at the end."""
    parts = []
    wanted = CHUNK_SIZE
    while wanted and (data := stream.read(wanted)):
        parts.append(data)
        wanted -= len(data)
    return b"".join(parts)
