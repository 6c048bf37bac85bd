"""OAuth2 client credentials, and the bearer token check on every other route."""

from __future__ import annotations

import asyncio
import binascii
from base64 import b64decode

from aiohttp import web
from aiohttp.typedefs import Handler

from api.keys import ACCOUNT_ID, DATABASE, SETTINGS
from api.openapi import DOCUMENTATION_PATHS, documented
from api.params import parse_params
from api.schemas import TokenOut, TokenParams
from models.accounts import authenticate, issue_token
from models.errors import AuthenticationFailed, InvalidParameter

TOKEN_PATH = "/v2/oauth2/token"


class ClientAuthenticationFailed(AuthenticationFailed):
    """The client's own credentials were refused: the challenge is Basic (RFC 6749 §5.2)."""

    challenge = 'Basic realm="imagesvc"'


# Route templates (``resource.canonical``) answered without a bearer token; /metrics
# answers only the allowed addresses (api/metrics.py).
PUBLIC_PATHS = frozenset({TOKEN_PATH, "/healthz", "/metrics", *DOCUMENTATION_PATHS})


@documented(
    params=TokenParams,
    response=TokenOut,
    body_type="application/x-www-form-urlencoded",
    basic_auth=True,
)
async def create_token(request: web.Request) -> web.Response:
    """A bearer token for HTTP Basic ``api_key:secret`` and ``grant_type=client_credentials``."""
    params = await parse_params(request, TokenParams)
    if params.grant_type != "client_credentials":
        raise InvalidParameter("invalid parameter 'grant_type': must be client_credentials")
    database = request.app[DATABASE]
    ttl = request.app[SETTINGS].token_ttl

    def issue(api_key: str, secret: str) -> TokenOut:
        with database.transaction() as session:
            token = issue_token(session, api_key, secret, ttl)
        return TokenOut(access_token=token.access_token, expires_in=token.expires_in)

    try:
        token = await asyncio.to_thread(issue, *_client_credentials(request, params))
    except AuthenticationFailed as refused:
        raise ClientAuthenticationFailed(refused.message) from None
    return web.json_response(
        text=token.model_dump_json(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )


def _client_credentials(request: web.Request, params: TokenParams) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            api_key, sep, secret = b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationFailed("malformed Basic authorization header") from None
        if sep:
            return api_key, secret
    if params.client_id and params.client_secret:
        return params.client_id, params.client_secret
    raise AuthenticationFailed("send the api_key and secret as HTTP Basic credentials")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _needs_no_token(request):
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing bearer token: send 'Authorization: Bearer <token>'")
    database = request.app[DATABASE]

    def check() -> str:
        with database.reading() as session:
            return authenticate(session, token.strip())

    request[ACCOUNT_ID] = await asyncio.to_thread(check)
    return await handler(request)


def _needs_no_token(request: web.Request) -> bool:
    """Public routes, and paths or methods the router does not know: their 404 or 405
    reveals nothing, and a client that mistyped a path learns so, not that it needs a token.
    """
    match = request.match_info
    if match.http_exception is not None:
        return True
    return match.route.resource is not None and match.route.resource.canonical in PUBLIC_PATHS
