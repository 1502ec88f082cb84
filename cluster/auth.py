"""Ray token authentication for requests to the job server (Ray 2.52 and later, ``RAY_AUTH_MODE=token``).

A head started with ``RAY_AUTH_MODE=token`` answers every dashboard and job request without the
cluster's token with 401, and one with another token with 403. Ray's client sends the token only
when ``RAY_AUTH_MODE=token`` is set in its own environment too; this module does the same, and
finds the token where Ray's token loader does, first match wins:

1. ``RAY_AUTH_TOKEN``: the token itself (surrounding whitespace dropped);
2. ``RAY_AUTH_TOKEN_PATH``: a file whose first line is the token; a set path that cannot be read or
   is empty is an error, not a reason to look further;
3. ``~/.ray/auth_token``: the default file (``ray get-auth-token`` prints it; a local ``ray.init()``
   creates it).

The token travels as ``Authorization: Bearer <token>``, a header given to ``JobSubmissionClient``
explicitly, so Ray's own loader (which caches per process and aborts the process on a bad
``RAY_AUTH_TOKEN_PATH``) is not needed, and the messages here can say what to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from matforge.cluster.errors import ClusterError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"  # under the home directory

WHERE_TOKENS_GO = (f"set {AUTH_MODE_ENV}=token and give the cluster's token in {TOKEN_ENV}, in a file named by "
                   f"{TOKEN_PATH_ENV}, or in ~/.ray/auth_token (ray get-auth-token on the head prints it)")


@dataclass(frozen=True)
class Token:
    """A token and where it was found (for messages; the token itself is never printed)."""

    value: str
    source: str


def token_auth_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``RAY_AUTH_MODE`` is ``token`` (any case), as Ray's client decides."""
    environ = os.environ if environ is None else environ
    return environ.get(AUTH_MODE_ENV, "").strip().lower() == "token"


def find_token(environ: Mapping[str, str] | None = None, home: Path | None = None) -> Token | None:
    """The token from the first of ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token`` that has one.

    Raises :class:`ClusterError` when ``RAY_AUTH_TOKEN_PATH`` is set but cannot be read or is empty.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(TOKEN_ENV, "").strip()
    if value:
        return Token(value, TOKEN_ENV)
    path_text = environ.get(TOKEN_PATH_ENV, "")
    if path_text:
        path = Path(path_text).expanduser()
        token = _first_line(path)
        if token is None:
            raise ClusterError(f"{TOKEN_PATH_ENV}={path_text}: cannot read the token file")
        if not token:
            raise ClusterError(f"{TOKEN_PATH_ENV}={path_text}: the token file's first line is empty")
        return Token(token, f"{TOKEN_PATH_ENV} ({path})")
    home = Path(environ.get("HOME") or Path.home()) if home is None else home
    default = home / DEFAULT_TOKEN_FILE
    token = _first_line(default)
    if token:
        return Token(token, str(default))
    return None


def _first_line(path: Path) -> str | None:
    """The stripped first line of ``path``; ``None`` when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None


def auth_headers(environ: Mapping[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` when token authentication is on, else ``{}``.

    Raises :class:`ClusterError` when it is on and no token is found.
    """
    if not token_auth_enabled(environ):
        return {}
    token = find_token(environ, home)
    if token is None:
        raise ClusterError(f"{AUTH_MODE_ENV}=token but no token was found: put the cluster's token in {TOKEN_ENV}, "
                           f"in a file named by {TOKEN_PATH_ENV}, or in ~/.ray/auth_token")
    return {"Authorization": f"Bearer {token.value}"}


def auth_failure_message(status: int, url: str, environ: Mapping[str, str] | None = None,
                         home: Path | None = None) -> str:
    """One line for a 401 (no token sent) or 403 (token refused) from the job server at ``url``."""
    if status == 401 or not token_auth_enabled(environ):
        sent = ("no token was sent" if not token_auth_enabled(environ)
                else "the request carried no token")
        return f"the Ray cluster at {url} requires token authentication and {sent}: {WHERE_TOKENS_GO}"
    try:
        token = find_token(environ, home)
        source = f"the token from {token.source}" if token else "the token"
    except ClusterError:
        source = "the token"
    return (f"the Ray cluster at {url} refused {source} (token authentication): it is not the token the cluster "
            f"was started with; {WHERE_TOKENS_GO}")
