"""Resource ids: a prefix and eight random lowercase letters and digits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str, length: int = 8) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def image_id() -> str:
    return new_id("img-")


def job_id() -> str:
    return new_id("j-")


def instance_id() -> str:
    return new_id("i-")


def account_id() -> str:
    return new_id("usr-")
