"""Salted keys that stand in for patient and image identities.

Nothing from a DICOM patient field (name, ID, birth date, dates, institution) may reach an
output. Patients and images are keyed by an HMAC-SHA256 of their identity under a secret salt:
the same patient gets the same key within a run (and across runs with the same salt), and a key
cannot be turned back into the ID without the salt. The salt itself is never written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

KEY_HEX_CHARS = 20  # 80 bits: no collisions at any dataset size, short enough to read


@dataclass(frozen=True)
class Salt:
    """The secret salt and where it came from (``env`` or ``random``), never its value."""

    value: bytes
    origin: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"Salt(origin={self.origin!r})"


def load_salt(env_var: str) -> Salt:
    """The salt from ``env_var``; a random one (stable for this run only) when it is unset."""
    raw = os.environ.get(env_var, "")
    if raw:
        return Salt(raw.encode("utf-8"), "env")
    return Salt(secrets.token_bytes(32), "random")


def salted_key(salt: Salt, *parts: str) -> str:
    """Hex key of ``parts`` (joined unambiguously) under ``salt``."""
    message = "\x1f".join(parts).encode("utf-8")
    return hmac.new(salt.value, message, hashlib.sha256).hexdigest()[:KEY_HEX_CHARS]
