"""Keeping secrets out of reprs, logs and error messages."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["describe_error", "redact_url", "url_secrets"]

#: Secrets shorter than this are not replaced in error texts (they would mangle the text).
MIN_SECRET_LENGTH = 4


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


def url_secrets(url: str) -> tuple[str, ...]:
    """The secrets in ``url``: its password, unquoted and as written, or a lone token.

    ``amqp://guest:p%40ss@host/`` gives ``("p@ss", "p%40ss")``; ``nats://tok@host`` gives
    ``("tok",)`` (a user name without a password is a token); no credentials give ``()``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    raw = parts.password if parts.password is not None else parts.username
    if not raw:
        return ()
    plain = unquote(raw)
    return (plain,) if plain == raw else (plain, raw)


def describe_error(exc: BaseException | None, secrets: Iterable[str] = ()) -> str:
    """``"Type: text"`` for an error (``"Type"`` when it has no text), without secrets.

    ``None`` gives ``"unknown error"``. Every one of ``secrets`` of 4 characters or more
    is replaced by ``***`` (shorter ones would garble the text and say little).
    """
    if exc is None:
        return "unknown error"
    name = type(exc).__name__
    text = str(exc)
    described = f"{name}: {text}" if text and text != name else name
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            described = described.replace(secret, "***")
    return described
