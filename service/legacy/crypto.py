"""The legacy install's encryption, to read what it stored (never to write).

Its Fernet key is PBKDF2-HMAC-SHA256 (100,000 iterations, 32 bytes) over API_KEY_PEPPER, salted
with the install's FERNET_SALT (hex, at least 32 characters) or, before an install had one, the
static salt `openalgo_static_salt`. Rows of an install that moved to its own salt on PostgreSQL
were never re-encrypted, so both salts are tried. The SMTP password has a key of its own:
the same derivation salted with SMTP_KEY_SALT (default `smtp-openalgo-salt`), read back with
an older key made of the pepper itself as a fallback.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

ITERATIONS = 100_000
STATIC_SALT = b"openalgo_static_salt"
SMTP_DEFAULT_SALT = "smtp-openalgo-salt"
# A TOTP secret stored before secrets were encrypted: base32, as pyotp.random_base32 makes them.
_PLAIN_TOTP = re.compile(r"^[A-Z2-7]{16,128}=*$")


class Undecryptable(Exception):
    """Under none of the keys tried: a rotated pepper or salt, or another install's row."""


@lru_cache(maxsize=16)
def derive(pepper: str, salt: bytes) -> Fernet:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=ITERATIONS)
    return Fernet(base64.urlsafe_b64encode(kdf.derive(pepper.encode())))


def salt_from_hex(value: str | None) -> bytes | None:
    """The install's salt as it reads it: hex of at least 32 characters, else none."""
    if not value or len(value.strip()) < 32:
        return None
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        return None


@dataclass
class LegacyKeys:
    """Every key the install may have encrypted with, in the order they are tried."""

    peppers: tuple[str, ...]
    fernet_salt: bytes | None = None
    smtp_salt: str = SMTP_DEFAULT_SALT
    # How many values each key opened, by label (the report says how many used the static salt).
    used: dict[str, int] = field(default_factory=dict)

    def _keys(self) -> list[tuple[str, Fernet]]:
        keys = []
        for index, pepper in enumerate(self.peppers):
            which = "" if index == 0 else f" (pepper {index + 1})"
            if self.fernet_salt is not None:
                keys.append((f"FERNET_SALT{which}", derive(pepper, self.fernet_salt)))
            keys.append((f"static salt{which}", derive(pepper, STATIC_SALT)))
        return keys

    def _smtp_keys(self) -> list[tuple[str, Fernet]]:
        keys = []
        for pepper in self.peppers:
            keys.append(("SMTP key", derive(pepper, self.smtp_salt.encode())))
            raw = base64.urlsafe_b64encode(pepper.ljust(32)[:32].encode())
            keys.append(("SMTP legacy key", Fernet(raw)))
        return keys

    def _open(self, ciphertext: str, keys: list[tuple[str, Fernet]]) -> str:
        token = ciphertext.strip().encode()
        for label, key in keys:
            try:
                plaintext = key.decrypt(token).decode()
            except (InvalidToken, UnicodeDecodeError):
                continue
            self.used[label] = self.used.get(label, 0) + 1
            return plaintext
        raise Undecryptable()

    def decrypt(self, ciphertext: str) -> str:
        return self._open(ciphertext, self._keys())

    def decrypt_smtp(self, ciphertext: str) -> str:
        return self._open(ciphertext, self._smtp_keys())

    def totp_secret(self, stored: str) -> tuple[str, bool]:
        """(secret, whether it was stored in plaintext): older installs kept it unencrypted."""
        try:
            return self.decrypt(stored), False
        except Undecryptable:
            if _PLAIN_TOTP.match(stored.strip()):
                return stored.strip().rstrip("="), True
            raise

    def opens(self, ciphertext: str) -> bool:
        try:
            self.decrypt(ciphertext)
        except Undecryptable:
            return False
        return True
