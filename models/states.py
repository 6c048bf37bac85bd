"""Statuses, and the tables of moves between them.

Every status change goes through :func:`models.transitions.move_images` or
:func:`models.jobs.move_job`, which turn one row of these tables into a
compare-and-set ``UPDATE``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ImageStatus(enum.StrEnum):
    PENDING = "pending"
    AVAILABLE = "available"
    DEPRECATED = "deprecated"
    SUSPENDED = "suspended"
    DELETED = "deleted"
    CEASED = "ceased"


class TransitionStatus(enum.StrEnum):
    NONE = ""
    CREATING = "creating"
    DELETING = "deleting"
    RECOVERING = "recovering"
    SUSPENDING = "suspending"
    RESUMING = "resuming"


class Provider(enum.StrEnum):
    SYSTEM = "system"
    SELF = "self"


class Visibility(enum.StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"


class ProcessorType(enum.StrEnum):
    BIT64 = "64bit"
    BIT32 = "32bit"


class Platform(enum.StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"


class InstanceStatus(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    WORKING = "working"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    DONE_WITH_FAILURE = "done with failure"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset(
    {JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.DONE_WITH_FAILURE}
)


class JobPhase(enum.StrEnum):
    """What a job is doing, shown next to its progress.

    ``queued`` while pending, ``done`` once terminal; a working capture goes
    copying -> syncing -> (uploading, to an S3 store) -> recording, other working jobs are
    ``recording``.
    """

    QUEUED = "queued"
    COPYING = "copying"  # reading the instance's disk and writing the image file
    SYNCING = "syncing"  # waiting for the image file to reach the disk
    UPLOADING = "uploading"  # sending the image file to the image store (S3)
    RECORDING = "recording"  # committing the outcome to the database
    DONE = "done"

    @classmethod
    def of(cls, status: str, phase: str, action: str) -> JobPhase:
        """The phase to show for a job row: derived from a pending or terminal status."""
        if status == JobStatus.PENDING:
            return cls.QUEUED
        if JobStatus(status).is_terminal:
            return cls.DONE
        try:
            return cls(phase)
        except ValueError:  # not written yet (or by an earlier release)
            copies = action in (JobAction.CAPTURE_INSTANCE, JobAction.IMPORT_IMAGE)
            return cls.COPYING if copies else cls.RECORDING


class JobAction(enum.StrEnum):
    CAPTURE_INSTANCE = "CaptureInstance"
    DELETE_IMAGES = "DeleteImages"
    RECOVER_IMAGES = "RecoverImages"
    MODIFY_IMAGE_ATTRIBUTES = "ModifyImageAttributes"
    # The operator's import of a public system image; runs like a capture.
    IMPORT_IMAGE = "ImportImage"


class ImageAction(enum.StrEnum):
    """What can happen to an image; each is one row of :data:`IMAGE_MOVES`."""

    FINISH_CAPTURE = "finish capture"
    FAIL_CAPTURE = "fail capture"
    BEGIN_DELETE = "delete"
    FINISH_DELETE = "finish delete"
    BEGIN_RECOVER = "recover"
    FINISH_RECOVER = "finish recover"
    CEASE = "cease"
    CANCEL_DELETE = "cancel delete"
    CANCEL_RECOVER = "cancel recover"
    MODIFY = "modify"
    DEPRECATE = "deprecate"
    SUSPEND = "suspend"
    RESUME = "resume"
    RESUME_DEPRECATED = "resume deprecated"


@dataclass(frozen=True)
class Move:
    """From any of ``sources`` with ``source_transition``, to ``target``.

    A ``target`` of ``None`` keeps the status (a move that only starts a
    transition, or changes attributes).
    """

    sources: frozenset[ImageStatus]
    source_transition: TransitionStatus
    target: ImageStatus | None
    target_transition: TransitionStatus


_S = ImageStatus
_T = TransitionStatus
_OWNER_DELETABLE = frozenset({_S.AVAILABLE, _S.DEPRECATED})
_MODIFIABLE = frozenset({_S.PENDING, _S.AVAILABLE, _S.DEPRECATED, _S.SUSPENDED})
_USABLE = frozenset({_S.AVAILABLE, _S.DEPRECATED})


def _only(status: ImageStatus) -> frozenset[ImageStatus]:
    return frozenset({status})


IMAGE_MOVES: dict[ImageAction, Move] = {
    ImageAction.FINISH_CAPTURE: Move(_only(_S.PENDING), _T.CREATING, _S.AVAILABLE, _T.NONE),
    ImageAction.FAIL_CAPTURE: Move(_only(_S.PENDING), _T.CREATING, _S.CEASED, _T.NONE),
    ImageAction.BEGIN_DELETE: Move(_OWNER_DELETABLE, _T.NONE, None, _T.DELETING),
    ImageAction.FINISH_DELETE: Move(_OWNER_DELETABLE, _T.DELETING, _S.DELETED, _T.NONE),
    ImageAction.BEGIN_RECOVER: Move(_only(_S.DELETED), _T.NONE, None, _T.RECOVERING),
    ImageAction.FINISH_RECOVER: Move(_only(_S.DELETED), _T.RECOVERING, _S.AVAILABLE, _T.NONE),
    # A job that could not finish gives the image back as it was.
    ImageAction.CANCEL_DELETE: Move(_OWNER_DELETABLE, _T.DELETING, None, _T.NONE),
    ImageAction.CANCEL_RECOVER: Move(_only(_S.DELETED), _T.RECOVERING, None, _T.NONE),
    # Past the retention window; the sweep frees the file after the row has moved.
    ImageAction.CEASE: Move(_only(_S.DELETED), _T.NONE, _S.CEASED, _T.NONE),
    # Attributes may change while a capture runs, never while a status moves.
    ImageAction.MODIFY: Move(_MODIFIABLE, _T.NONE, None, _T.NONE),
    ImageAction.DEPRECATE: Move(_only(_S.AVAILABLE), _T.NONE, _S.DEPRECATED, _T.NONE),
    ImageAction.SUSPEND: Move(_USABLE, _T.NONE, _S.SUSPENDED, _T.NONE),
    ImageAction.RESUME: Move(_only(_S.SUSPENDED), _T.NONE, _S.AVAILABLE, _T.NONE),
    # A deprecated image that was suspended goes back to deprecated.
    ImageAction.RESUME_DEPRECATED: Move(_only(_S.SUSPENDED), _T.NONE, _S.DEPRECATED, _T.NONE),
}


def allowed_sources(action: ImageAction) -> str:
    """The statuses an action starts from, for error messages."""
    return " or ".join(sorted(IMAGE_MOVES[action].sources))


_J = JobStatus

# Target status -> the statuses a job may reach it from.
JOB_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    # Back to pending: its worker was lost, and it will be run again.
    _J.PENDING: frozenset({_J.WORKING}),
    _J.WORKING: frozenset({_J.PENDING}),
    _J.SUCCESSFUL: frozenset({_J.WORKING}),
    _J.DONE_WITH_FAILURE: frozenset({_J.WORKING}),
    _J.FAILED: frozenset({_J.PENDING, _J.WORKING}),
}
