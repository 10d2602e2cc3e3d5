"""Request dependencies shared by the job and run APIs: who is calling, and the bus.

All are `async def`, though none awaits: FastAPI runs a plain `def` dependency in a thread
pool, a hand-off per dependency per request that cost more than the request's own work.

The app keeps its keys, stream tokens, settings and bus on `app.state`; these read them
from there, so that routers in other modules authenticate exactly as the app does.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from gateway.audit import audit_facts
from gateway.auth import Principal, StreamTokens
from gateway.bus_client import GatewayBus
from gateway.keys_store import ApiKeysStore
from gateway.rate_limit import RateLimiter, retry_after_header
from gateway.settings import GatewaySettings

# The smallest stream id: a job stream's `queued` event, a run stream's first `progress`.
FIRST_EVENT_ID = 0


def unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def bearer(keys: ApiKeysStore, authorization: str | None) -> Principal:
    """The caller named by an `Authorization: Bearer <key>` header, or 401."""
    if not authorization:
        raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthorized("malformed Authorization header: use 'Bearer <key>'")
    principal = keys.authenticate(key.strip())
    if principal is None:
        raise unauthorized("invalid API key")
    return principal


def _admitted(request: Request, principal: Principal) -> Principal:
    """Record who is calling (for the audit log) and spend one request of their rate limit."""
    facts = audit_facts(request)
    facts.principal = principal
    limiter: RateLimiter = request.app.state.limiter
    wait_s = limiter.take(f"{principal.tenant}/{principal.key_id}")
    if wait_s > 0:
        facts.rate_limited = True
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of key {principal.key_id} exceeded: retry in {wait_s:.1f} s",
            headers={"Retry-After": retry_after_header(wait_s)},
        )
    return principal


def _refused(request: Request, refusal: HTTPException) -> HTTPException:
    """The 401 to answer; or, once the client's address has failed too often, a 429 that is
    not audited: every failure is an audit record, and failing needs no key."""
    limiter: RateLimiter = request.app.state.auth_failures
    address = request.client.host if request.client else "unknown"
    wait_s = limiter.take(address)
    if wait_s == 0:
        return refusal
    audit_facts(request).unaudited = True
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"too many failed authentications from {address}: retry in {wait_s:.1f} s",
        headers={"Retry-After": retry_after_header(wait_s)},
    )


def _authenticated(request: Request, authorization: str | None) -> Principal:
    keys: ApiKeysStore = request.app.state.keys
    try:
        return bearer(keys, authorization)
    except HTTPException as refusal:
        raise _refused(request, refusal) from None


async def api_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return _admitted(request, _authenticated(request, authorization))


def stream_principal(
    request: Request, scope: str, token: str | None, authorization: str | None
) -> Principal:
    """An event stream's caller: the signed token of its `events_url`, or an API key."""
    if token is not None and authorization is None:
        tokens: StreamTokens = request.app.state.tokens
        caller = tokens.verify(token, scope)
        if caller is None:
            refusal = unauthorized("invalid or expired stream token: get a fresh events_url")
            raise _refused(request, refusal)
        return _admitted(request, caller)
    return _admitted(request, _authenticated(request, authorization))


def resume_position(header: str | None, query: str | None) -> int | None:
    """The `Last-Event-ID` to resume after (header, else `?last_event_id=`), or 422."""
    value = header if header is not None else query
    if value is None:
        return None
    # ASCII only: isdigit() also takes digits such as '²' that int() refuses.
    if not (value.strip().isascii() and value.strip().isdigit()):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"Last-Event-ID must be an event id from this stream (a number >= "
            f"{FIRST_EVENT_ID}), not {value!r}",
        )
    return int(value)


async def get_bus(request: Request) -> GatewayBus:
    bus: GatewayBus = request.app.state.bus
    return bus


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_tokens(request: Request) -> StreamTokens:
    tokens: StreamTokens = request.app.state.tokens
    return tokens


Caller = Annotated[Principal, Depends(api_principal)]
BusDep = Annotated[GatewayBus, Depends(get_bus)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
TokensDep = Annotated[StreamTokens, Depends(get_tokens)]
