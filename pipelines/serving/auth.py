"""The server's bearer token: 256 random bits generated once into a 0600 file.

The token is never logged, never passed on a command line and never in the environment: the
launcher creates the file, each worker reads it, clients read it from the file
(`Authorization: Bearer $(cat <file>)`). Health routes are open; everything else needs it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

MIN_LENGTH = 32


def ensure_token(path: str) -> str:
    """Create the token file (mode 0600, in a 0700 folder) unless it exists; return its path.

    Creation is exclusive (O_EXCL): two launchers never write two tokens. An existing file is
    checked as `read_token` checks it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    read_token(path)
    return str(p)


def read_token(path: str) -> str:
    """The token in `path`; refuses a file that others can read or a short token."""
    p = Path(path)
    try:
        mode = p.stat().st_mode & 0o777
    except FileNotFoundError:
        raise FileNotFoundError(f"no serving token file at {path}: start the server with "
                                f"`python -m pipelines.serving`, which creates it") from None
    if mode & 0o077:
        raise PermissionError(f"the serving token file {path} is readable by others (mode "
                              f"{mode:04o}): `chmod 600 {path}`")
    token = p.read_text(encoding="utf-8").strip()
    if len(token) < MIN_LENGTH:
        raise ValueError(f"the serving token in {path} is shorter than {MIN_LENGTH} characters")
    return token


def authorized(header: str | None, token: str) -> bool:
    """True if an `Authorization` header carries the bearer token (constant-time compare)."""
    scheme, _, value = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())
