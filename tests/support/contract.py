"""What every reply of the API is checked against: its shape, its times, its job statuses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.states import JobStatus

# The contract's time format: UTC, to the second, with a Z.
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal)


@dataclass
class Reply:
    """One answer of the API: its status code and its JSON body (status 0: no answer)."""

    status: int
    body: Any

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


def parse_time(value: str) -> datetime:
    """A time the API returned, checked against the contract's format."""
    assert ISO_UTC.match(value), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
