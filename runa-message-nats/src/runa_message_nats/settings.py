"""Settings of the NATS driver: the ``[message.nats]`` table, or keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from runa_message.config import positive, structure_settings
from runa_message.driver import Capabilities
from runa_message.errors import ConfigError
from runa_message.redact import redact_url, url_secrets

__all__ = ["CAPABILITIES", "NatsSettings"]

#: URL schemes the driver connects with: plain TCP and TLS.
SCHEMES = ("nats", "tls")

#: The longest subject (prefix included) the driver publishes: NATS reads a message's
#: control line (``MSG <subject> <sid> <size>``) in at most 4096 bytes.
MAX_SUBJECT_BYTES = 4000
#: The subject prefix by default.
DEFAULT_PREFIX = "runa.message."

#: What the driver does with the default settings: core NATS pub/sub with queue groups.
#: Wildcards and groups, at-most-once (no acknowledgements, nothing kept for a group member
#: that is away); topics up to the subject limit minus the prefix
#: (:attr:`NatsSettings.capabilities` has the limit for the prefix set).
CAPABILITIES = Capabilities(
    wildcards=True,
    groups=True,
    ack=False,
    persistent=False,
    max_topic_length=MAX_SUBJECT_BYTES - len(DEFAULT_PREFIX.encode()),
)


def _urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """One URL or a list of cluster URLs, always held as a tuple."""
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_urls(_instance: Any, _attribute: Any, urls: tuple[str, ...]) -> None:
    if not urls:
        raise ValueError(
            "url: give at least one server URL, e.g. 'nats://127.0.0.1:4222' or a list of "
            "cluster servers"
        )
    for url in urls:
        if not isinstance(url, str):
            raise ValueError(f"url: expected URL strings, got {type(url).__name__}")
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(
                f"url: {shown!r} is not a valid URL; write e.g. 'nats://127.0.0.1:4222'"
            ) from None
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"url: {shown!r} must start with nats:// (plain) or tls:// (TLS), "
                "e.g. 'nats://127.0.0.1:4222'"
            )
        if not parts.hostname:
            raise ValueError(f"url: {shown!r} has no host; write e.g. 'nats://127.0.0.1:4222'")
        if port == 0:
            raise ValueError(f"url: {shown!r} has port 0; NATS listens on 4222 by default")


def _check_prefix(_instance: Any, _attribute: Any, prefix: str) -> None:
    if not prefix:
        return
    if not prefix.endswith("."):
        raise ValueError(
            f"prefix: {prefix!r} must end with '.' (or be empty), e.g. 'runa.message.'"
        )
    tokens = prefix[:-1].split(".")
    if any(not token for token in tokens):
        raise ValueError(f"prefix: {prefix!r} has an empty token ('..' or a leading '.')")
    for token in tokens:
        if token in ("*", ">") or any(ch.isspace() or ord(ch) < 32 for ch in token):
            raise ValueError(
                f"prefix: {prefix!r} may hold neither wildcards ('*', '>') nor whitespace"
            )


def _reconnect_attempts(_instance: Any, _attribute: Any, value: int) -> None:
    if value < -1:
        raise ValueError(
            f"max_reconnect_attempts: -1 (never give up) or a count of 0 or more, got {value!r}"
        )


def _secret_repr(value: str | None) -> str:
    return "None" if value is None else "'***'"


def _urls_repr(urls: tuple[str, ...]) -> str:
    shown = [redact_url(url) for url in urls]
    return repr(shown[0]) if len(shown) == 1 else repr(shown)


def _check_credentials(settings: NatsSettings) -> None:
    if settings.password is not None and settings.user is None:
        raise ValueError("password: set user as well (user and password go together)")
    if settings.user is not None and settings.password is None:
        raise ValueError("user: set password as well (user and password go together)")
    given = [
        name
        for name, value in (
            ("user/password", settings.user),
            ("token", settings.token),
            ("creds_file", settings.creds_file),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)}: choose one way to authenticate, not {len(given)}")
    if settings.tls_key_file is not None and settings.tls_cert_file is None:
        raise ValueError("tls_key_file: set tls_cert_file as well (the client certificate)")


@attrs.frozen
class NatsSettings:
    """Settings of :class:`~runa_message_nats.NatsDriver`; every one has a default.

    ``url`` is one server URL or a list of cluster servers (``nats://`` or ``tls://``;
    credentials may sit in the URL, they never show in ``repr``). ``prefix`` goes in front
    of every subject. Credentials: ``user`` with ``password``, or ``token``, or
    ``creds_file`` (a NATS ``.creds`` file). ``tls_ca_file``/``tls_cert_file``/
    ``tls_key_file``/``tls_hostname`` set up TLS. ``connect_timeout`` bounds ``start()``;
    ``publish_timeout`` bounds a publish during an outage; ``drain_timeout`` bounds
    ``close()``. ``pending_msgs_limit``/``pending_bytes_limit`` bound the client-side buffer
    of each subscription (beyond them NATS drops messages and the driver reports it).
    """

    url: tuple[str, ...] = attrs.field(
        default=("nats://127.0.0.1:4222",),
        converter=_urls,
        validator=_check_urls,
        repr=_urls_repr,
    )
    prefix: str = attrs.field(default=DEFAULT_PREFIX, validator=_check_prefix)
    name: str | None = None
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=_secret_repr)
    token: str | None = attrs.field(default=None, repr=_secret_repr)
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    connect_timeout: float = attrs.field(default=5.0, validator=positive())
    publish_timeout: float = attrs.field(default=5.0, validator=positive())
    drain_timeout: float = attrs.field(default=10.0, validator=positive())
    reconnect_time_wait: float = attrs.field(default=2.0, validator=positive())
    max_reconnect_attempts: int = attrs.field(default=-1, validator=_reconnect_attempts)
    ping_interval: float = attrs.field(default=30.0, validator=positive())
    pending_msgs_limit: int = attrs.field(default=65536, validator=positive("a count"))
    pending_bytes_limit: int = attrs.field(
        default=64 * 1024 * 1024, validator=positive("a number of bytes")
    )

    def __attrs_post_init__(self) -> None:
        _check_credentials(self)

    @property
    def capabilities(self) -> Capabilities:
        """What the driver does with these settings: core NATS pub/sub with queue groups.

        Wildcards and groups, at-most-once (no acknowledgements, nothing kept for a group
        member that is away); topics up to the subject limit minus the prefix.
        """
        return attrs.evolve(
            CAPABILITIES, max_topic_length=MAX_SUBJECT_BYTES - len(self.prefix.encode())
        )

    @property
    def tls(self) -> bool:
        """Whether the driver sets up TLS (a ``tls://`` URL or a TLS file is given)."""
        return any(url.startswith("tls://") for url in self.url) or any(
            value is not None for value in (self.tls_ca_file, self.tls_cert_file, self.tls_hostname)
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret these settings hold (passwords, tokens, URL credentials)."""
        found = [value for value in (self.password, self.token) if value]
        for url in self.url:
            found.extend(url_secrets(url))  # the password, or a lone token
        return tuple(found)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], path: str = "message.nats") -> NatsSettings:
        """Build the settings from a ``[message.nats]`` table; errors name the key path.

        ``url`` may be one string or a list of strings. Raises
        :class:`~runa_message.ConfigError`.
        """
        data = dict(settings)
        if isinstance(data.get("url"), str):
            data["url"] = [data["url"]]
        try:
            return structure_settings(cls, data, path)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}.{exc}") from None
