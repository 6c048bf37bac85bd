"""OAuth2 client credentials (RFC 6749), token revocation (RFC 7009), and the bearer check.

Client credentials come from the Basic header or the form body (RFC 6749
§2.3.1), never from the query string: query strings end up in logs and
browser histories. Secrets are checked by :class:`api.throttle.LoginGuard`.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy.orm import Session

from api.caller import in_reading, in_transaction
from api.keys import ACCOUNT_ID, BEARER_TOKEN, LOGIN_GUARD, SETTINGS
from api.openapi import DOCUMENTATION_PATHS, documented
from api.params import parse_params
from api.schemas import RevokeOut, RevokeParams, TokenOut, TokenParams
from models.accounts import ClientRecord, authenticate, client_record, issue_token, revoke_token
from models.errors import AuthenticationFailed, InvalidParameter, ServiceUnavailable

TOKEN_PATH = "/v2/oauth2/token"
REVOKE_PATH = "/v2/oauth2/revoke"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# What the service issues: anything else is refused before it reaches the database.
_API_KEY = re.compile(r"[A-Za-z0-9]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SECRET_PARAMS = frozenset({"client_id", "client_secret", "token"})

ClientParamsT = TypeVar("ClientParamsT", bound=TokenParams)
R = TypeVar("R")


class ClientAuthenticationFailed(AuthenticationFailed):
    """The client's own credentials were refused: the challenge is Basic (RFC 6749 §5.2)."""

    challenge = 'Basic realm="imagesvc"'


# Route templates (``resource.canonical``) answered without a bearer token; /metrics
# answers only the allowed addresses (api/metrics.py).
PUBLIC_PATHS = frozenset({TOKEN_PATH, REVOKE_PATH, "/healthz", "/metrics", *DOCUMENTATION_PATHS})


@documented(
    params=TokenParams,
    response=TokenOut,
    body_type="application/x-www-form-urlencoded",
    basic_auth=True,
)
async def create_token(request: web.Request) -> web.Response:
    """Exchange the client's api_key and secret for a bearer token."""
    params = await _client_params(request, TokenParams)
    if params.grant_type != "client_credentials":
        raise InvalidParameter("invalid parameter 'grant_type': must be client_credentials")
    client = await _verified_client(request, params)
    ttl = request.app[SETTINGS].token_ttl
    token = await _as_client(in_transaction(request, _issue, client, ttl))
    return web.json_response(text=token.model_dump_json(), headers=NO_STORE)


def _issue(session: Session, client: ClientRecord, ttl: int) -> TokenOut:
    issued = issue_token(session, client, ttl)
    return TokenOut(access_token=issued.access_token, expires_in=issued.expires_in)


@documented(
    params=RevokeParams,
    response=RevokeOut,
    body_type="application/x-www-form-urlencoded",
    basic_auth=True,
)
async def revoke(request: web.Request) -> web.Response:
    """RFC 7009: the client revokes one of its tokens; an unknown token is no error."""
    params = await _client_params(request, RevokeParams)
    client = await _verified_client(request, params)
    await _as_client(in_transaction(request, revoke_token, client, params.token))
    return web.json_response(text=RevokeOut().model_dump_json(), headers=NO_STORE)


async def _as_client(work: Awaitable[R]) -> R:
    """A secret rotated or an account disabled since the check: refused as client auth."""
    try:
        return await work
    except AuthenticationFailed as refused:
        raise ClientAuthenticationFailed(refused.message) from None


async def _client_params(request: web.Request, model: type[ClientParamsT]) -> ClientParamsT:
    leaked = sorted(_SECRET_PARAMS & set(request.query))
    if leaked:
        raise InvalidParameter(
            f"parameter '{leaked[0]}' must not be sent in the query string: send client "
            "credentials as HTTP Basic (or in the form body)"
        )
    return await parse_params(request, model)


async def _verified_client(request: web.Request, params: TokenParams) -> ClientRecord:
    """The client whose secret checks out; throttled, and counted when it does not."""
    guard = request.app[LOGIN_GUARD]
    api_key, secret = _client_credentials(request, params)
    address = request.remote or ""
    keys = guard.keys(api_key if _API_KEY.fullmatch(api_key) else "", address)
    await guard.refuse_if_throttled(keys)
    if not _API_KEY.fullmatch(api_key):
        await guard.record_failure(keys)
        raise ClientAuthenticationFailed("invalid api_key or secret")
    client = await in_reading(request, client_record, api_key)
    if not await guard.verify(secret, client.secret_hash, address) or client.account_id is None:
        await guard.record_failure(keys)
        raise ClientAuthenticationFailed("invalid api_key or secret")
    return client


def _client_credentials(request: web.Request, params: TokenParams) -> tuple[str, str]:
    scheme, _, encoded = _authorization(request).partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = b64decode(encoded.strip().encode("ascii"), validate=True).decode()
        except (binascii.Error, UnicodeError):
            raise ClientAuthenticationFailed("malformed Basic authorization header") from None
        api_key, sep, secret = decoded.partition(":")
        if sep:
            return api_key, secret
    if params.client_id and params.client_secret:
        return params.client_id, params.client_secret
    raise ClientAuthenticationFailed("send the api_key and secret as HTTP Basic credentials")


def _authorization(request: web.Request) -> str:
    """The one Authorization header; two of them are a 400, not a choice."""
    values = request.headers.getall("Authorization", [])
    if len(values) > 1:
        raise InvalidParameter("send one Authorization header, not several")
    return values[0] if values else ""


async def authenticate_request(request: web.Request) -> None:
    """The bearer check of every request but a public route's (api/middleware.py): the
    account is the token's (ACCOUNT_ID), or, for a handler that checks the token in its
    own first statement (:func:`checks_own_token`), the token is kept for it (BEARER_TOKEN)."""
    authorization = _authorization(request)
    if _needs_no_token(request):
        return
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("missing bearer token: send 'Authorization: Bearer <token>'")
    if not _TOKEN.fullmatch(token):
        raise AuthenticationFailed("invalid access token")
    if request.match_info.handler in _CHECKING_OWN_TOKEN:
        request[BEARER_TOKEN] = token
    else:
        request[ACCOUNT_ID] = await in_reading(request, authenticate, token)


_CHECKING_OWN_TOKEN: set[Handler] = set()


def checks_own_token(handler: Handler) -> Handler:
    """Mark a handler that checks the bearer token in its own first statement
    (api.caller.read_as_bearer for listings, api.caller.as_bearer for writes),
    saving the middleware's thread hop, connection and round trip.

    The token is still read on every request, never cached. A request refused
    before that statement (a bad parameter, an unknown zone) has its token
    checked the middleware's way first (:func:`check_unchecked_token`), so a bad
    token is still a 401 before anything else, as on every other route.
    """
    _CHECKING_OWN_TOKEN.add(handler)
    return handler


async def check_unchecked_token(request: web.Request, refusal: Exception) -> None:
    """After ``refusal`` from a handler marked :func:`checks_own_token` that had not
    checked its token yet: check it now (AuthenticationFailed if it is bad)."""
    if isinstance(refusal, AuthenticationFailed | ServiceUnavailable):
        return  # the check itself refused, or could not be made
    if BEARER_TOKEN in request and ACCOUNT_ID not in request:
        request[ACCOUNT_ID] = await in_reading(request, authenticate, request[BEARER_TOKEN])


def _needs_no_token(request: web.Request) -> bool:
    """Public routes, and paths or methods the router does not know: their 404 or 405
    reveals nothing, and a client that mistyped a path learns so, not that it needs a token.
    """
    match = request.match_info
    if match.http_exception is not None:
        return True
    return match.route.resource is not None and match.route.resource.canonical in PUBLIC_PATHS
