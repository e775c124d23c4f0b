"""auth: broker tokens, API keys (and their verification), sessions, login attempts."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import Path, Query, status
from starlette.convertors import Convertor, register_url_convertor

from service import accounts
from service.db import SessionDep
from service.errors import Forbidden, problems
from service.idempotency import READ_ONLY
from service.models.auth import ApiKey, BrokerToken
from service.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    CursorPage,
    CursorParam,
    LimitParam,
    ListLimitParam,
)
from service.repositories import api_keys as api_keys_repo
from service.repositories import auth as auth_repo
from service.routers.base import domain_router
from service.runtime.api_keys import verification
from service.schemas.auth import (
    ApiKeyInfo,
    ApiKeyPut,
    ApiKeyRead,
    ApiKeyVerification,
    ApiKeyVerify,
    BrokerTokenPut,
    BrokerTokenRead,
    BrokerTokenSecret,
    BrokerTokenWritten,
    LoginAttemptCreate,
    LoginAttemptRead,
    LoginStatus,
    OrderModeUpdate,
    SessionCreate,
    SessionRead,
)
from service.schemas.base import Deleted, Items
from service.schemas.types import Timestamp, path_text, query_text
from service.security import SECRETS, PrincipalDep
from service.state import StateDep, VerifierDep

# Path segments naming a user or a session: NUL-free, as long as their columns allow.
Username = Annotated[str, path_text(80)]
SessionId = Annotated[str, path_text(128)]

router = domain_router("/auth", "auth")


def _metadata(row: BrokerToken) -> dict[str, Any]:
    return {
        "name": row.name,
        "broker": row.broker,
        "user_id": row.user_id,
        "revoked": row.revoked,
        "has_feed_token": row.feed_token_encrypted is not None,
        "has_refresh_token": row.refresh_token_encrypted is not None,
        "expires_at": row.expires_at,
        "updated_at": row.updated_at,
    }


def _key_read(row: ApiKey, plaintext: str) -> ApiKeyRead:
    info = ApiKeyInfo.model_validate(row, from_attributes=True)
    return ApiKeyRead(**info.model_dump(), api_key=plaintext)


# --- broker tokens -----------------------------------------------------------------------------


@router.put(
    "/broker-tokens/{name}",
    response_model=BrokerTokenWritten,
    responses=problems(400, 404, 415),
)
async def put_broker_token(
    name: Username, body: BrokerTokenPut, session: SessionDep, state: StateDep
) -> BrokerTokenWritten:
    """Store the broker token of user `name` (encrypted); a full replacement of the earlier one."""
    row, changed = await auth_repo.put_broker_token(session, state.keyring, name, body)
    return BrokerTokenWritten(**_metadata(row), changed=changed)


@router.get("/broker-tokens/{name}", response_model=BrokerTokenRead, responses=problems(404))
async def get_broker_token(name: Username, session: SessionDep) -> BrokerTokenRead:
    """Read the metadata of a user's broker token, never the tokens."""
    return BrokerTokenRead(**_metadata(await auth_repo.get_broker_token(session, name)))


@router.get(
    "/broker-tokens/{name}/secret",
    response_model=BrokerTokenSecret,
    responses=problems(404, 409),
    **SECRETS,  # type: ignore[arg-type]
)
async def get_broker_secret(
    name: Username, session: SessionDep, state: StateDep
) -> BrokerTokenSecret:
    """Read a user's broker tokens (auth, feed, refresh) in plaintext; 404 when missing or
    revoked. An expired token is returned too, with its `expires_at`: the refresh token is
    what renews it."""
    row, auth_token, feed_token, refresh_token = await auth_repo.get_broker_secret(
        session, state.keyring, name
    )
    return BrokerTokenSecret(
        name=row.name,
        broker=row.broker,
        user_id=row.user_id,
        auth_token=auth_token,
        feed_token=feed_token,
        refresh_token=refresh_token,
        expires_at=row.expires_at,
    )


@router.post(
    "/broker-tokens/{name}/revoke", response_model=BrokerTokenRead, responses=problems(404)
)
async def revoke_broker_token(name: Username, session: SessionDep) -> BrokerTokenRead:
    """Revoke a user's broker token; the tokens themselves are erased."""
    return BrokerTokenRead(**_metadata(await auth_repo.revoke_broker_token(session, name)))


# --- API keys ----------------------------------------------------------------------------------


class ApiKeyOwner(Convertor[str]):
    """A `{user_id}` of the API-key routes: any path segment but `verify`, which is the route that
    verifies a key. So /api-keys/verify is that route alone, and its 405 names only POST."""

    regex = "(?!verify(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("api_key_owner", ApiKeyOwner())
# The same rule in the OpenAPI document, so a client (or a fuzzer) knows `verify` is no user_id:
# the convertor enforces it (and the middleware the NUL), pydantic's regex has no look-ahead.
ApiKeyUserId = Annotated[
    str, Path(max_length=80, json_schema_extra={"pattern": r"^(?!verify$)[^\x00]*$"})
]


@router.post(
    "/api-keys/verify",
    response_model=ApiKeyVerification,
    response_model_exclude_unset=True,
    responses=problems(400, 404, 409, 410, 415),
    **READ_ONLY,
)
async def verify_api_key(
    body: ApiKeyVerify, verifier: VerifierDep, state: StateDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Verify an API key: its user, order mode and broker; optionally the broker tokens.

    Unknown key: 401 `api-key-unknown`. `include_auth` / `include_feed_token` need the `secrets`
    scope (403 before the key is looked at) and an active broker token: 404
    `broker-token-missing` when the user has none, 410 `broker-token-revoked` when it was revoked,
    410 `broker-token-expired` past its `expires_at` (`broker_token` is then `expired`).
    `auth_token` / `feed_token` appear only when asked for.
    """
    if (body.include_auth or body.include_feed_token) and not principal.has("secrets"):
        raise Forbidden("include_auth and include_feed_token need the 'secrets' scope.")
    owner = await verifier.verify(body.api_key.get_secret_value())
    return verification(state.keyring, owner, auth=body.include_auth, feed=body.include_feed_token)


@router.put(
    "/api-keys/{user_id:api_key_owner}",
    response_model=ApiKeyRead,
    responses=problems(400, 404, 409, 415),
    **SECRETS,  # type: ignore[arg-type]
)
async def put_api_key(
    user_id: ApiKeyUserId, body: ApiKeyPut, session: SessionDep, state: StateDep
) -> ApiKeyRead:
    """Set a user's API key (generated when omitted); the earlier key stops verifying at once.

    Needs the `secrets` scope, since the answer carries the key.
    """
    supplied = body.api_key.get_secret_value() if body.api_key is not None else None
    plaintext = supplied or api_keys_repo.generate_key()
    # Hashed before the request's first statement, so no transaction waits for argon2.
    key_hash = await accounts.hash_secret(state.keyring, plaintext)
    row = await api_keys_repo.put_api_key(session, state.keyring, user_id, plaintext, key_hash)
    return _key_read(row, plaintext)


@router.get(
    "/api-keys/{user_id:api_key_owner}",
    response_model=ApiKeyRead,
    responses=problems(404, 409),
    **SECRETS,  # type: ignore[arg-type]
)
async def get_api_key(user_id: ApiKeyUserId, session: SessionDep, state: StateDep) -> ApiKeyRead:
    """Read a user's API key in plaintext."""
    row, plaintext = await api_keys_repo.get_api_key(session, state.keyring, user_id)
    return _key_read(row, plaintext)


@router.delete(
    "/api-keys/{user_id:api_key_owner}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(404),
)
async def delete_api_key(user_id: ApiKeyUserId, session: SessionDep) -> None:
    """Delete a user's API key; it stops verifying at once."""
    await api_keys_repo.delete_api_key(session, user_id)


@router.put(
    "/api-keys/{user_id:api_key_owner}/order-mode",
    response_model=ApiKeyInfo,
    responses=problems(400, 404, 415),
)
async def set_order_mode(
    user_id: ApiKeyUserId, body: OrderModeUpdate, session: SessionDep
) -> ApiKeyInfo:
    """Set the order mode of a user's API key."""
    row = await api_keys_repo.set_order_mode(session, user_id, body.order_mode)
    return ApiKeyInfo.model_validate(row, from_attributes=True)


# --- sessions ----------------------------------------------------------------------------------


@router.post(
    "/sessions",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionRead,
    responses=problems(400, 404, 409, 415),
)
async def create_session(body: SessionCreate, session: SessionDep, state: StateDep) -> SessionRead:
    """Register a login; it replaces the user's session from the same IP, at most 5 per user
    (expired ones count for nothing and go). It lasts until `expires_at`, by default
    `SESSION_LIFETIME_HOURS` from now; `data` is a JSON document of at most 16 KiB."""
    lifetime = timedelta(hours=state.settings.SESSION_LIFETIME_HOURS)
    return SessionRead.model_validate(
        await auth_repo.create_session(session, body, lifetime=lifetime)
    )


@router.get("/sessions", response_model=Items[SessionRead])
async def list_sessions(
    session: SessionDep,
    username: Annotated[str | None, query_text(80, description="Only this user's.")] = None,
    limit: ListLimitParam = MAX_LIMIT,
) -> Items[SessionRead]:
    """List live sessions, most recently seen first (at most `limit`); expired ones are not."""
    rows = await auth_repo.list_sessions(session, username, limit=limit)
    return Items(items=[SessionRead.model_validate(r) for r in rows])


@router.post(
    "/sessions/{session_id}/touch",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(404),
)
async def touch_session(session_id: SessionId, session: SessionDep) -> None:
    """Mark a session as seen now; 404 for an unknown or expired one."""
    await auth_repo.touch_session(session, session_id)


@router.delete(
    "/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404)
)
async def delete_session(session_id: SessionId, session: SessionDep) -> None:
    """End one session."""
    await auth_repo.delete_session(session, session_id)


@router.delete("/sessions", response_model=Deleted)
async def delete_user_sessions(
    session: SessionDep,
    username: Annotated[str, query_text(80, description="Whose sessions to end.")],
) -> Deleted:
    """End every session of a user."""
    return Deleted(deleted=await auth_repo.delete_user_sessions(session, username))


@router.delete("/expired-sessions", response_model=Deleted)
async def purge_expired_sessions(state: StateDep) -> Deleted:
    """Retention: delete every session past its `expires_at`, in short transactions."""
    return Deleted(deleted=await auth_repo.purge_expired_sessions(state.sessionmaker))


# --- login attempts ----------------------------------------------------------------------------


@router.post(
    "/login-attempts",
    status_code=status.HTTP_201_CREATED,
    response_model=LoginAttemptRead,
    responses=problems(400, 415),
)
async def create_login_attempt(body: LoginAttemptCreate, session: SessionDep) -> LoginAttemptRead:
    """Record a login attempt."""
    return LoginAttemptRead.model_validate(await auth_repo.create_login_attempt(session, body))


@router.get("/login-attempts", response_model=CursorPage[LoginAttemptRead])
async def list_login_attempts(
    session: SessionDep,
    status_: Annotated[
        LoginStatus | None, Query(alias="status", description="Only attempts with this outcome.")
    ] = None,
    username: Annotated[str | None, query_text(255)] = None,
    limit: LimitParam = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> CursorPage[LoginAttemptRead]:
    """List login attempts, newest first (keyset pagination)."""
    rows, next_cursor = await auth_repo.list_login_attempts(
        session, status=status_, username=username, limit=limit, cursor=cursor
    )
    return CursorPage(
        items=[LoginAttemptRead.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.delete("/login-attempts", response_model=Deleted)
async def delete_login_attempts(
    session: SessionDep,
    before: Annotated[
        Timestamp | None, Query(description="Only attempts older than this; all when omitted.")
    ] = None,
) -> Deleted:
    """Delete login attempts."""
    return Deleted(deleted=await auth_repo.delete_login_attempts(session, before))
