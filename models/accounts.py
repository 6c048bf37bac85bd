"""Accounts, their API keys and access tokens.

Secrets are stored as salted scrypt hashes; access tokens as SHA-256 digests
(they are 256-bit random values, so a fast digest is enough and lets the
token be looked up on every request). Both are compared in constant time.

A secret is checked in two steps, so that the API can run the slow scrypt
apart from its database threads: :func:`client_record` reads the hash, and
:func:`verified_account` re-reads the account when the token is issued, so a
secret rotated or an account disabled in between is refused. The operator
disables, enables and rotates; disabling and rotating revoke every token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import String, bindparam, delete, select
from sqlalchemy.orm import Session

from models import ids
from models.errors import AuthenticationFailed, ResourceNotFound
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
    return hashlib.scrypt(
        secret.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, dklen=32
    )


def token_digest(token: str) -> str:
    # surrogatepass: a token decoded from hostile bytes still has a digest (that matches nothing).
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_account(session: Session, name: str) -> Credentials:
    secret = new_secret()
    account = Account(
        account_id=ids.account_id(),
        name=name,
        api_key=secrets.token_hex(10).upper(),
        secret_hash=hash_secret(secret),
    )
    session.add(account)
    return Credentials(account.account_id, account.api_key, secret)


@dataclass(frozen=True)
class ClientRecord:
    """What a secret is checked against: the account's hash, or a decoy for an unknown key."""

    account_id: str | None
    secret_hash: str


def client_record(session: Session, api_key: str) -> ClientRecord:
    """The stored hash for ``api_key``; unknown keys get a decoy, so both cost one scrypt."""
    account = session.scalars(select(Account).where(Account.api_key == api_key)).one_or_none()
    if account is None:
        return ClientRecord(None, _DECOY_HASH)
    return ClientRecord(account.account_id, account.secret_hash)


def verified_account(session: Session, client: ClientRecord) -> Account:
    """The account whose secret was verified against ``client``, if it is still valid.

    A secret rotated or an account disabled since the check refuses it.
    """
    account = session.get(Account, client.account_id) if client.account_id else None
    if account is None or account.secret_hash != client.secret_hash:
        raise AuthenticationFailed("invalid api_key or secret")
    if account.disabled_at is not None:
        raise AuthenticationFailed(f"account {account.account_id} is disabled")
    return account


def issue_token(session: Session, client: ClientRecord, ttl: int) -> IssuedToken:
    """A bearer token for a verified client (OAuth2 client credentials)."""
    account = verified_account(session, client)
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


def revoke_token(session: Session, client: ClientRecord, token: str) -> None:
    """RFC 7009: forget ``token`` if it was issued to this client; anything else is a no-op."""
    account = verified_account(session, client)
    session.execute(
        delete(AccessToken).where(
            AccessToken.token_hash == token_digest(token),
            AccessToken.account_id == account.account_id,
        )
    )


# The bearer token's row and its account's, for the token's digest bound as ``digest``.
BEARER = (
    select(AccessToken.token_hash, AccessToken.expires_at, Account.account_id, Account.disabled_at)
    .join(Account, Account.account_id == AccessToken.account_id)
    .where(AccessToken.token_hash == bindparam("digest", type_=String))
    .subquery("bearer")
)
# The bearer's row with its account's quota, the account row locked until commit (a
# capture's first statement: the token's check and the quota's lock in one round trip).
BEARER_LOCKING_QUOTA = (
    select(
        AccessToken.token_hash,
        AccessToken.expires_at,
        Account.account_id,
        Account.disabled_at,
        Account.quota_images,
        Account.quota_gb,
    )
    .join(Account, Account.account_id == AccessToken.account_id)
    .where(AccessToken.token_hash == bindparam("digest", type_=String))
    .with_for_update(of=Account)
)


def authenticate(session: Session, token: str) -> str:
    """The account id a bearer token stands for; AuthenticationFailed otherwise.

    Read on every request, never cached: a revoked token or a disabled
    account stops working at once. Listings read the same row in their own
    first statement instead (``BEARER``, :func:`bearer_account`).
    """
    digest = token_digest(token)
    row = session.execute(select(BEARER), {"digest": digest}).one_or_none()
    return bearer_account(row, digest)


def bearer_account(row: Any, digest: str) -> str:
    """The account of a row of ``BEARER`` read for ``digest`` (None: no such token),
    if the token is unexpired and its account enabled; AuthenticationFailed otherwise."""
    if row is None:
        raise AuthenticationFailed("invalid access token")
    bearer = row._mapping  # by name: an attribute is a Python call per field on asyncpg's rows
    if not hmac.compare_digest(bearer["token_hash"], digest):
        raise AuthenticationFailed("invalid access token")
    if bearer["expires_at"] <= utcnow():
        raise AuthenticationFailed("access token expired")
    if bearer["disabled_at"] is not None:
        raise AuthenticationFailed(f"account {bearer['account_id']} is disabled")
    return str(bearer["account_id"])


def _account(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise ResourceNotFound(f"account {account_id} not found")
    return account


def _revoke_all_tokens(session: Session, account_id: str) -> None:
    session.execute(delete(AccessToken).where(AccessToken.account_id == account_id))


def disable_account(session: Session, account_id: str) -> Account:
    """The account's secret and every token stop working (operator)."""
    account = _account(session, account_id)
    if account.disabled_at is None:
        account.disabled_at = utcnow()
    _revoke_all_tokens(session, account_id)
    return account


def enable_account(session: Session, account_id: str) -> Account:
    """The account's secret works again; its old tokens stay revoked (operator)."""
    account = _account(session, account_id)
    account.disabled_at = None
    return account


def new_secret() -> str:
    """A fresh account secret: 32 random bytes, URL-safe, never starting with ``-``, so that
    ``imagectl login --secret SECRET`` (or any command line) cannot read it as an option."""
    while (secret := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return secret


def rotate_secret(session: Session, account_id: str) -> Credentials:
    """A new secret, shown once; the old one and every token issued with it stop working."""
    account = _account(session, account_id)
    secret = new_secret()
    account.secret_hash = hash_secret(secret)
    _revoke_all_tokens(session, account_id)
    return Credentials(account.account_id, account.api_key, secret)
