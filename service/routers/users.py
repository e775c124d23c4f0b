"""users: platform login accounts, their passwords and TOTP."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Response, status

from service import accounts
from service.db import SessionDep
from service.errors import problems
from service.idempotency import READ_ONLY
from service.pagination import MAX_LIMIT, ListLimitParam
from service.repositories import api_keys as api_keys_repo
from service.repositories import users as users_repo
from service.routers.base import domain_router
from service.schemas.base import Items
from service.schemas.types import path_text, query_text
from service.schemas.users import (
    PREFERENCE_KEY_PATTERN,
    PasswordChange,
    PasswordCheck,
    PreferencePut,
    PreferenceRead,
    Preferences,
    TotpCode,
    TotpSecret,
    UserCreate,
    UserRead,
    UserUpdate,
    Validity,
)
from service.security import SECRETS
from service.state import StateDep

# A username in a path: NUL-free, as long as the column allows.
Username = Annotated[str, path_text(80)]
PreferenceKey = Annotated[
    str,
    Path(
        pattern=PREFERENCE_KEY_PATTERN,
        max_length=64,
        description="1-64 characters of A-Z a-z 0-9 _ . -",
    ),
]

router = domain_router("/users", "users")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=problems(400, 409, 415),
)
async def create_user(body: UserCreate, session: SessionDep, state: StateDep) -> UserRead:
    """Create a user; its TOTP secret is generated and stored encrypted."""
    password_hash = await accounts.hash_secret(state.keyring, body.password.get_secret_value())
    user = await users_repo.create_user(session, state.keyring, body, password_hash)
    return UserRead.model_validate(user)


@router.get("", response_model=Items[UserRead])
async def list_users(
    session: SessionDep,
    is_admin: Annotated[bool | None, Query(description="Only admins, or only non-admins.")] = None,
    email: Annotated[str | None, query_text(254, description="Exact email.")] = None,
    limit: ListLimitParam = MAX_LIMIT,
) -> Items[UserRead]:
    """List users, by username (at most `limit`)."""
    users = await users_repo.list_users(session, is_admin=is_admin, email=email, limit=limit)
    return Items(items=[UserRead.model_validate(u) for u in users])


@router.get("/{username}", response_model=UserRead, responses=problems(404))
async def get_user(username: Username, session: SessionDep) -> UserRead:
    """Read one user."""
    return UserRead.model_validate(await users_repo.get_user(session, username))


@router.patch("/{username}", response_model=UserRead, responses=problems(400, 404, 409, 415))
async def update_user(username: Username, body: UserUpdate, session: SessionDep) -> UserRead:
    """Change a user's email, names, admin flag or TOTP settings (omitted fields are kept)."""
    return UserRead.model_validate(await users_repo.update_user(session, username, body))


@router.put(
    "/{username}/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(400, 404, 415),
)
async def set_password(
    username: Username, body: PasswordChange, session: SessionDep, state: StateDep
) -> None:
    """Set a user's password."""
    password_hash = await accounts.hash_secret(state.keyring, body.password.get_secret_value())
    await users_repo.set_password(session, username, password_hash)


@router.post(
    "/{username}/verify-password",
    response_model=Validity,
    responses=problems(400, 415),
    **READ_ONLY,
)
async def verify_password(username: Username, body: PasswordCheck, state: StateDep) -> Validity:
    """Check a password; an unknown user is `{"valid": false}`, in the same time class."""
    valid = await accounts.verify_password(
        state.sessionmaker, state.keyring, username, body.password.get_secret_value()
    )
    return Validity(valid=valid)


@router.get(
    "/{username}/totp",
    response_model=TotpSecret,
    responses=problems(404, 409),
    **SECRETS,  # type: ignore[arg-type]
)
async def get_totp(username: Username, session: SessionDep, state: StateDep) -> TotpSecret:
    """Read a user's TOTP secret and its provisioning URI (issuer AlgoWays)."""
    secret, uri = await users_repo.get_totp(session, state.keyring, username)
    return TotpSecret(secret=secret, provisioning_uri=uri)


@router.post(
    "/{username}/totp/verify",
    response_model=Validity,
    responses=problems(400, 404, 409, 415),
)
async def verify_totp(
    username: Username, body: TotpCode, session: SessionDep, state: StateDep
) -> Validity:
    """Check a TOTP code (±1 step); a code once accepted is never accepted again."""
    return Validity(valid=await users_repo.verify_totp(session, state.keyring, username, body.code))


@router.get("/{username}/preferences", response_model=Preferences, responses=problems(404))
async def list_preferences(username: Username, session: SessionDep) -> Preferences:
    """Every preference of the user, as `{key: value, …}`."""
    return Preferences(await users_repo.list_preferences(session, username))


@router.get("/{username}/preferences/{key}", response_model=PreferenceRead, responses=problems(404))
async def get_preference(
    username: Username, key: PreferenceKey, session: SessionDep
) -> PreferenceRead:
    """Read one preference; 404 for an unknown user or key."""
    row = await users_repo.get_preference(session, username, key)
    return PreferenceRead(key=row.key, value=row.value, updated_at=row.updated_at)


@router.put(
    "/{username}/preferences/{key}",
    response_model=PreferenceRead,
    responses={
        201: {"model": PreferenceRead, "description": "Created"},
        **problems(400, 404, 415),
    },
)
async def put_preference(
    username: Username,
    key: PreferenceKey,
    body: PreferencePut,
    session: SessionDep,
    response: Response,
) -> PreferenceRead:
    """Set one preference to a JSON value of at most 16 KiB serialised (more: 422); 201 when
    the key is new, 200 when it replaced a value."""
    row, created = await users_repo.put_preference(session, username, key, body.value)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return PreferenceRead(key=row.key, value=row.value, updated_at=row.updated_at)


@router.delete(
    "/{username}/preferences/{key}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(404),
)
async def delete_preference(username: Username, key: PreferenceKey, session: SessionDep) -> None:
    """Delete one preference; 404 for an unknown user or key."""
    await users_repo.delete_preference(session, username, key)


@router.delete("/{username}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def delete_user(username: Username, session: SessionDep) -> None:
    """Delete a user with its API key, broker token and sessions."""
    await api_keys_repo.invalidate_user(session, username)
    await users_repo.delete_user(session, username)
