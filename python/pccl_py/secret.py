"""The job secret and encryption setting: where they come from (argument, ``PCCL_SECRET`` /
``PCCL_ENCRYPTION``, a file) and what they may look like.

Why this exists: the master, every Communicator and every tool must resolve the secret the same way,
or one of them silently runs without it. The trap: an empty value is "no secret" (so ``PCCL_SECRET=``
does not lock anyone out by accident), while a secret given as text and as bytes must be the same
bytes (text is UTF-8 encoded). The secret never appears in a log, an error message or a repr.
Encryption ("tls") is keyed by the secret, so asking for it without one is refused here, before any
connection, rather than silently running in clear.
"""

from __future__ import annotations

import os
import secrets
from typing import Optional, Union

from .errors import InvalidArgumentError

ENV_SECRET = "PCCL_SECRET"
ENV_ENCRYPTION = "PCCL_ENCRYPTION"
ENCRYPTIONS = ("none", "tls")
MAX_SECRET_BYTES = 4096

SecretLike = Union[str, bytes, bytearray, None]


def resolve_secret(secret: SecretLike) -> bytes:
    """The secret as bytes: the argument if given, else ``PCCL_SECRET``, else b"" (no secret)."""
    if secret is None:
        secret = os.environ.get(ENV_SECRET, "")
    if isinstance(secret, str):
        value = secret.encode("utf-8")
    elif isinstance(secret, (bytes, bytearray)):
        value = bytes(secret)
    else:
        raise InvalidArgumentError(f"secret must be str or bytes, not {type(secret).__name__}")
    if len(value) > MAX_SECRET_BYTES:
        raise InvalidArgumentError(f"secret is {len(value)} bytes; at most {MAX_SECRET_BYTES} are allowed")
    return value


def read_secret_file(path: str) -> bytes:
    """The secret stored in a file, without a trailing newline; refuses an empty file."""
    try:
        with open(path, "rb") as f:
            value = f.read(MAX_SECRET_BYTES + 2)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the secret file {path!r}: {exc.strerror}") from exc
    value = value.rstrip(b"\r\n")
    if not value:
        raise InvalidArgumentError(f"the secret file {path!r} is empty")
    if len(value) > MAX_SECRET_BYTES:
        raise InvalidArgumentError(f"the secret file {path!r} holds more than {MAX_SECRET_BYTES} bytes")
    return value


def resolve_encryption(encryption: Optional[str], secret: bytes) -> bool:
    """Whether to encrypt: the argument if given, else ``PCCL_ENCRYPTION``, else "none".

    "tls" needs the (resolved) secret: it authenticates the TLS handshakes (docs/security.md).
    """
    source = "encryption"
    if encryption is None:
        encryption, source = os.environ.get(ENV_ENCRYPTION, ""), ENV_ENCRYPTION
    if not isinstance(encryption, str):
        raise InvalidArgumentError(f"encryption must be 'tls' or 'none', not {type(encryption).__name__}")
    value = encryption.strip().lower() or "none"
    if value not in ENCRYPTIONS:
        raise InvalidArgumentError(f"{source} must be 'tls' or 'none', not {encryption!r}")
    if value == "tls" and not secret:
        raise InvalidArgumentError(
            f"{source}='tls' needs the job secret: pass secret= (or set {ENV_SECRET}, or pccl-master --secret-file); "
            "the TLS handshakes are authenticated with a key derived from it")
    return value == "tls"


def generate_secret() -> str:
    """A fresh random secret (256 bits, hex), e.g. for ``pccl-master --secret-file``."""
    return secrets.token_hex(32)
