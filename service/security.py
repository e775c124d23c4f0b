"""Secrets: service-token authentication, password/API-key hashing, encryption at rest.

Key rotation: the current pepper and salt encrypt and hash; the previous ones (optional) are
still accepted when reading, so a rotated deployment keeps every stored secret readable until
`python -m service rotate-keys` re-encrypts them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, TypeVar

from anyio import CapacityLimiter, to_thread
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from fastapi import Depends, Request
from passlib.context import CryptContext

from service.config import ServiceToken, Settings
from service.errors import AppError, DatabaseUnavailable, Forbidden, Unauthorized

PBKDF2_ITERATIONS = 600_000
T = TypeVar("T")

# Each argon2 computation takes 64 MiB and already runs four lanes: more at once than this only
# adds memory, never throughput. Off the event loop, and out of the thread pool others share.
ARGON2_CONCURRENCY = max(1, min(4, os.cpu_count() or 1))
_argon2_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


async def run_argon2(function: Callable[..., T], *args: object) -> T:
    """Run an argon2 hash or check (or a function made of them) in a worker thread.

    Callers run it before their transaction begins: on SQLite a write transaction holds the
    database's one write lock for as long as it lasts.
    """
    loop = asyncio.get_running_loop()
    limiter = _argon2_limiters.get(loop)
    if limiter is None:
        limiter = _argon2_limiters[loop] = CapacityLimiter(ARGON2_CONCURRENCY)
    return await to_thread.run_sync(function, *args, limiter=limiter)


class SecretUnreadable(AppError):
    status = 409
    title = "Stored secret cannot be decrypted"
    type_ = "secret-unreadable"
    default_detail = (
        "A stored secret was encrypted under a key this instance does not hold "
        "(was API_KEY_PEPPER or FERNET_SALT changed without setting the _PREVIOUS variables?)."
    )


@lru_cache(maxsize=8)
def _derive_fernet_key(pepper: str, salt_hex: str) -> bytes:
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=32,
        salt=bytes.fromhex(salt_hex),
        iterations=PBKDF2_ITERATIONS,
    )
    return base64.urlsafe_b64encode(kdf.derive(pepper.encode()))


class Pepper:
    """A pepper and the keyed digest (HMAC-SHA256) it indexes API keys by without storing them.

    The HMAC is keyed once and copied per message: keying it per call looks the digest up in
    OpenSSL 3's provider tables every time, which py-spy showed as an eighth of a warm order
    context's CPU.
    """

    __slots__ = ("_keyed", "value")

    def __init__(self, value: bytes) -> None:
        self.value = value
        self._keyed = hmac.new(value, digestmod=hashlib.sha256)

    def digest(self, message: str) -> str:
        mac = self._keyed.copy()
        mac.update(message.encode())
        return mac.hexdigest()


def _in_background(make: Callable[[], T]) -> Future[T]:
    """`make()` started now on a thread of its own, its result waited for where it is first used.

    For key material that is slow to make on purpose (PBKDF2, argon2) and whose C code lets go
    of the GIL: an instance makes it while it builds its symbol index rather than before, which
    took 0.3 s off its start. A failure is raised where the result is used."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(make())
        except BaseException as error:  # handed to whoever waits for the result
            future.set_exception(error)

    threading.Thread(target=run, name="key-derivation", daemon=True).start()
    return future


def _fernets(salts: list[tuple[str, str]]) -> tuple[Fernet, MultiFernet]:
    """The newest key, and all of them (newest first), from (pepper, salt) pairs."""
    fernets = [Fernet(_derive_fernet_key(secret, salt)) for secret, salt in salts]
    return fernets[0], MultiFernet(fernets)


# Sealed secrets a keyring remembers (decrypt_often): one per user's broker token in use.
_SEALED_MAX = 10_000
_NONCE_BYTES = 12


class Keyring:
    """Every key this instance holds, newest first."""

    def __init__(self, settings: Settings) -> None:
        pepper = settings.API_KEY_PEPPER.get_secret_value()
        self.peppers: tuple[Pepper, ...] = (Pepper(pepper.encode()),)
        salts = [(pepper, settings.FERNET_SALT)]
        if settings.API_KEY_PEPPER_PREVIOUS is not None:
            previous = settings.API_KEY_PEPPER_PREVIOUS.get_secret_value()
            self.peppers += (Pepper(previous.encode()),)
            salts.append((previous, settings.FERNET_SALT_PREVIOUS or settings.FERNET_SALT))
        self._fernets = _in_background(lambda: _fernets(salts))
        self.passwords = PasswordHasher(self.peppers)
        self._seal = AESGCM(AESGCM.generate_key(bit_length=128))
        self._sealed: dict[str, bytes] = {}  # ciphertext -> nonce + sealed plaintext

    async def ready(self) -> None:
        """Wait until the key material is made; raise what making it raised (the app's start
        fails on it, as it did when the keys were made before serving)."""
        await asyncio.wrap_future(self._fernets)
        await self.passwords.ready()

    def wait(self) -> None:
        """`ready()` for a process without a loop: a supervisor that makes the key material once
        (it is cached per process) before it forks the workers that will use it."""
        self._fernets.result()
        self.passwords.wait()

    @property
    def _current(self) -> Fernet:
        return self._fernets.result()[0]

    @property
    def _fernet(self) -> MultiFernet:
        return self._fernets.result()[1]

    @property
    def pepper(self) -> Pepper:
        return self.peppers[0]

    def encrypt(self, plaintext: str) -> str:
        return self._current.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable() from None

    def decrypt_often(self, ciphertext: str) -> str:
        """`decrypt`, for a secret read on every order (a broker token).

        Fernet costs ~35 µs a decryption, most of it in Python: an order context's largest
        single cost. The first decryption of a ciphertext is remembered sealed (AES-GCM under a
        key this process made; one C call to open, ~2 µs), never as plaintext. Keyed by the
        ciphertext itself: a changed secret is a new ciphertext, so nothing needs invalidating.
        """
        sealed = self._sealed.get(ciphertext)
        if sealed is not None:
            return self._seal.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None).decode()
        plaintext = self.decrypt(ciphertext)
        if len(self._sealed) >= _SEALED_MAX:
            del self._sealed[next(iter(self._sealed))]  # the oldest
        nonce = os.urandom(_NONCE_BYTES)
        self._sealed[ciphertext] = nonce + self._seal.encrypt(nonce, plaintext.encode(), None)
        return plaintext

    def needs_reencrypt(self, ciphertext: str) -> bool:
        try:
            self._current.decrypt(ciphertext.encode())
        except InvalidToken:
            return True
        return False

    def reencrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable() from None


_argon2 = CryptContext(schemes=["argon2"], deprecated="auto")


@lru_cache(maxsize=8)
def _dummy_hash(context: CryptContext, pepper: str) -> str:
    """A hash verified when the user is unknown, so both paths cost one argon2 check; made once
    per process and pepper (an app instance is not the unit: tests build hundreds)."""
    return str(context.hash("dummy-password" + pepper))


class PasswordHasher:
    """argon2 over secret + pepper; hashes made under a previous pepper still verify."""

    def __init__(self, peppers: tuple[Pepper, ...]) -> None:
        self._peppers = tuple(p.value.decode() for p in peppers)
        first = self._peppers[0]
        self._dummy_hash = _in_background(lambda: _dummy_hash(_argon2, first))

    async def ready(self) -> None:
        await asyncio.wrap_future(self._dummy_hash)

    def wait(self) -> None:
        self._dummy_hash.result()

    @property
    def _dummy(self) -> str:
        return self._dummy_hash.result()

    def hash(self, secret: str) -> str:
        return str(_argon2.hash(secret + self._peppers[0]))

    def verify(self, secret: str, stored: str | None) -> tuple[bool, str | None]:
        """Return (valid, new_hash); new_hash is set when the stored hash should be replaced."""
        if stored is None:
            # As many checks as a wrong password costs (one per pepper held), so timing does
            # not tell whether the user exists, not even during a key rotation.
            for pepper in self._peppers:
                _argon2.verify(secret + pepper, self._dummy)
            return False, None
        for index, pepper in enumerate(self._peppers):
            try:
                valid = _argon2.verify(secret + pepper, stored)
            except (ValueError, TypeError):
                return False, None
            if valid:
                stale = index > 0 or _argon2.needs_update(stored)
                return True, self.hash(secret) if stale else None
        return False, None


# --- service tokens ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes


# The principal of the request being served, bound by the middleware for as long as it runs: what
# records who made a change (the audit trail) reads it without every call passing it along.
principal_var: ContextVar[Principal | None] = ContextVar("principal", default=None)


class TokenAuthenticator:
    def __init__(self, tokens: tuple[ServiceToken, ...]) -> None:
        self._tokens = tuple((t.token.encode(), Principal(t.name, t.scopes)) for t in tokens)

    def authenticate(self, authorization: bytes | None) -> Principal | None:
        if not authorization or authorization[:7].lower() != b"bearer ":
            return None
        presented = authorization[7:].strip()
        found = None
        # Compare against every token, in constant time each, so timing says nothing.
        for token, principal in self._tokens:
            if hmac.compare_digest(token, presented):
                found = principal
        return found


_METHOD_SCOPE = {"GET": "read", "HEAD": "read", "OPTIONS": "read"}


async def current_principal(request: Request) -> Principal:
    """The service token's principal, checked for the scope the HTTP method needs.

    The middleware has already answered 401 to requests without a known token.
    """
    principal: Principal | None = request.scope.get("principal")
    if principal is None:
        raise Unauthorized()
    needed = _METHOD_SCOPE.get(request.method, "write")
    if not principal.has(needed):
        raise Forbidden(f"This token lacks the '{needed}' scope.")
    state = request.app.state.store
    if not state.ready:
        raise DatabaseUnavailable(f"The service is not ready: {state.not_ready_reason}.")
    return principal


async def require_secrets(request: Request) -> Principal:
    principal = await current_principal(request)
    if not principal.has("secrets"):
        raise Forbidden("This endpoint returns secrets and needs the 'secrets' scope.")
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]

# Spread into a route decorator: `@router.get(..., **SECRETS)`.
SECRETS: dict[str, object] = {
    "dependencies": [Depends(require_secrets)],
    "openapi_extra": {"x-required-scope": "secrets"},
}
