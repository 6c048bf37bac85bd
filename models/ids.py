"""Resource ids: a prefix and eight random lowercase letters and digits."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits
_BASE = len(_ALPHABET)


def new_id(prefix: str, length: int = 8) -> str:
    """``prefix`` and ``length`` characters of ``_ALPHABET``, uniformly random.

    One draw from the system's random source for the whole id, not one per
    character: each draw is a system call, and the API makes an id for every
    request (api/request_ids.py).
    """
    number = secrets.randbelow(_BASE**length)
    chars = []
    for _ in range(length):
        number, digit = divmod(number, _BASE)
        chars.append(_ALPHABET[digit])
    return prefix + "".join(chars)


def image_id() -> str:
    return new_id("img-")


def job_id() -> str:
    return new_id("j-")


def instance_id() -> str:
    return new_id("i-")


def account_id() -> str:
    return new_id("usr-")
