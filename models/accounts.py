"""Accounts, their API keys and access tokens.

Secrets are stored as salted scrypt hashes; access tokens as SHA-256 digests
(they are 256-bit random values, so a fast digest is enough and lets the
token be looked up on every request). Both are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models import ids
from models.errors import AuthenticationFailed
from models.tables import AccessToken, Account, utcnow

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
# Verified against when the api_key is unknown, so both paths cost the same.
_DECOY_HASH = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32


@dataclass(frozen=True)
class Credentials:
    """Shown once, when the account is created."""

    account_id: str
    api_key: str
    secret: str


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(secret, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    candidate = _scrypt(secret, bytes.fromhex(salt), int(n), int(r), int(p))
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_account(session: Session, name: str) -> Credentials:
    secret = secrets.token_urlsafe(32)
    account = Account(
        account_id=ids.account_id(),
        name=name,
        api_key=secrets.token_hex(10).upper(),
        secret_hash=hash_secret(secret),
    )
    session.add(account)
    return Credentials(account.account_id, account.api_key, secret)


def issue_token(session: Session, api_key: str, secret: str, ttl: int) -> IssuedToken:
    """Exchange an API key and secret for a bearer token (OAuth2 client credentials)."""
    account = session.scalars(select(Account).where(Account.api_key == api_key)).one_or_none()
    valid = verify_secret(secret, account.secret_hash if account else _DECOY_HASH)
    if account is None or not valid:
        raise AuthenticationFailed("invalid api_key or secret")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(delete(AccessToken).where(AccessToken.expires_at <= now))
    session.add(
        AccessToken(
            token_hash=token_digest(token),
            account_id=account.account_id,
            expires_at=now + timedelta(seconds=ttl),
        )
    )
    return IssuedToken(token, ttl)


def authenticate(session: Session, token: str) -> str:
    """The account id a bearer token stands for; AuthenticationFailed otherwise."""
    digest = token_digest(token)
    row = session.get(AccessToken, digest)
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise AuthenticationFailed("invalid access token")
    if row.expires_at <= utcnow():
        raise AuthenticationFailed("access token expired")
    return row.account_id
