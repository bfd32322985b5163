"""Settings of the Redis driver: the ``[message.redis]`` table (over ``[redis]``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from runa_message.config import positive, structure_settings
from runa_message.driver import Capabilities
from runa_message.redact import redact_url

__all__ = ["CAPABILITIES", "DEFAULT_PREFIX", "DEFAULT_URL", "RedisSettings"]

#: The local Redis server, database 0.
DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: Channel prefix, the same as Go runa's Redis driver.
DEFAULT_PREFIX = "runa:message:"

#: Redis pub/sub: glob wildcards (filtered exactly by the registry), broadcast only,
#: at-most-once, nothing kept for absent subscribers.
CAPABILITIES = Capabilities(
    wildcards=True, groups=False, ack=False, persistent=False, max_topic_length=None
)

_SCHEMES = ("redis", "rediss")


def _check_url(_instance: Any, _attribute: Any, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"url: expected a string, got {type(value).__name__}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(
            f"url: {redact_url(value)!r} is not a valid URL; write e.g. 'redis://127.0.0.1:6379/0'"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"url: {redact_url(value)!r} must start with redis:// (plain TCP) or rediss:// "
            "(TLS), e.g. 'redis://127.0.0.1:6379/0'"
        )
    if not parts.hostname:
        raise ValueError(
            f"url: {redact_url(value)!r} names no host; write e.g. 'redis://127.0.0.1:6379/0'"
        )
    if "password" in parse_qs(parts.query):
        raise ValueError(
            "url: put the password in the user part (redis://user:PASSWORD@host/0), not in "
            "?password=, so that it is kept out of reprs, logs and errors"
        )
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(
            f"url: {redact_url(value)!r}: the path must be a database number such as /0"
        )


def _check_prefix(_instance: Any, _attribute: Any, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"prefix: expected a string, got {type(value).__name__}")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"prefix: {value!r} holds whitespace or a control character; remove it")


def _optional_str(name: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name}: expected the path of a PEM file, got {value!r}")

    return check


@attrs.frozen
class RedisSettings:
    """How the Redis driver connects and names its channels.

    ``url``: ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://`` for TLS.
    Its password never shows in ``repr``, logs or errors.
    ``prefix``: put before every topic to make the channel name (``runa:message:`` as in
    Go runa). ``publish_timeout``: how long a publish waits for the server during an
    outage before it raises :class:`~runa_message.PublishError`.
    ``health_check_interval``: seconds of silence on the subscriber connection after which
    a PING checks that it is alive (0 turns the check off).

    TLS (``rediss://`` only): ``tls_ca_file`` (PEM bundle of trusted CAs, default: the
    system's), ``tls_cert_file`` / ``tls_key_file`` (client certificate), ``tls_verify``
    (verify the server certificate), ``tls_check_hostname`` (and that it names the host).
    """

    url: str = attrs.field(default=DEFAULT_URL, validator=_check_url, repr=redact_url)
    prefix: str = attrs.field(default=DEFAULT_PREFIX, validator=_check_prefix)
    publish_timeout: float = attrs.field(default=5.0, validator=positive())
    health_check_interval: float = attrs.field(default=30.0, validator=positive(zero=True))
    tls_ca_file: str | None = attrs.field(default=None, validator=_optional_str("tls_ca_file"))
    tls_cert_file: str | None = attrs.field(default=None, validator=_optional_str("tls_cert_file"))
    tls_key_file: str | None = attrs.field(default=None, validator=_optional_str("tls_key_file"))
    tls_verify: bool = True
    tls_check_hostname: bool = True

    def __attrs_post_init__(self) -> None:
        tls_set = [
            name
            for name in ("tls_ca_file", "tls_cert_file", "tls_key_file")
            if getattr(self, name) is not None
        ] + [
            name for name in ("tls_verify", "tls_check_hostname") if getattr(self, name) is not True
        ]
        if tls_set and not self.tls:
            raise ValueError(
                f"{', '.join(tls_set)}: TLS settings need a rediss:// url, "
                f"but url is {redact_url(self.url)!r}"
            )
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file: set tls_cert_file too (the client certificate)")

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (a ``rediss://`` url)."""
        return self.url.startswith("rediss:")

    @property
    def redacted_url(self) -> str:
        """``url`` with its password replaced by ``***``."""
        return redact_url(self.url)

    def tls_options(self) -> dict[str, Any]:
        """Keyword arguments of ``redis.asyncio.Redis.from_url`` for the TLS settings."""
        if not self.tls:
            return {}
        options: dict[str, Any] = {
            "ssl_cert_reqs": "required" if self.tls_verify else "none",
            "ssl_check_hostname": self.tls_verify and self.tls_check_hostname,
        }
        if self.tls_ca_file is not None:
            options["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file is not None:
            options["ssl_certfile"] = self.tls_cert_file
        if self.tls_key_file is not None:
            options["ssl_keyfile"] = self.tls_key_file
        return options

    @classmethod
    def from_mapping(
        cls, settings: Mapping[str, Any], path: str = "message.redis"
    ) -> RedisSettings:
        """Build settings from a config table; bad keys or values raise ``ConfigError``."""
        return structure_settings(cls, settings, path)
