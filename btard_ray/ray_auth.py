"""Ray's cluster-level access control, decided explicitly.

Ray does not isolate the nodes of one cluster from each other; its token authentication is
the only control over who may talk to the cluster at all (see the README's threat model).
Since Ray 2.59 a local instance turns token authentication on by default, but only when
the mode is left unset, and an explicit ``RAY_AUTH_MODE=token`` with no token makes the
head fail to start. We therefore always run with ``RAY_AUTH_MODE=token`` and make sure a
token exists before Ray is imported:

* a user who set ``RAY_AUTH_MODE`` (``token`` or ``disabled``) keeps their choice;
* ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``, when set, is Ray's to read;
* otherwise the token lives in ``~/.ray/auth_token``; it is created (owner-only
  permissions, 32 random bytes in hex) when missing, exactly where Ray and other local
  processes (``btard join``, ``ray status``) look for it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def ensure_token_file(path: Path = DEFAULT_TOKEN_PATH) -> Path:
    """Create ``path`` with a fresh random token (mode 0600) unless it already holds one."""
    if path.is_file() and path.read_text().strip():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def configure_ray_auth() -> str:
    """Set ``RAY_AUTH_MODE`` (default ``token``) and make sure a token is available.

    Returns the mode in force. Also turns Ray's usage statistics off unless the user chose.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    mode = os.environ.setdefault("RAY_AUTH_MODE", "token")
    if mode == "token" and not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        ensure_token_file()
    return mode
