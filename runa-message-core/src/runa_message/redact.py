"""Keeping secrets out of reprs, logs and error messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """Return ``url`` with its password (or lone token) replaced by ``***``.

    ``redis://user:pw@host:6379/0`` becomes ``redis://user:***@host:6379/0``;
    ``nats://token@host`` becomes ``nats://***@host``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if "@" not in parts.netloc:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user, sep, _password = credentials.partition(":")
    netloc = f"{user}:***@{host}" if sep else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))
