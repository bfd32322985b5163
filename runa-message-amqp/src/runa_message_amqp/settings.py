"""Settings of the AMQP driver: the ``[message.amqp]`` table, over the shared ``[amqp]`` table.

.. code-block:: toml

    [message.amqp]
    url = "amqp://guest:guest@127.0.0.1:5672/"
    exchange = "runa.message"
    prefetch = 100

This module imports no client library: the plugin module reads it to describe the driver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from runa_message.config import positive, structure_settings
from runa_message.driver import Capabilities
from runa_message.redact import redact_url

__all__ = ["CAPABILITIES", "DEFAULT_URL", "MAX_NAME_BYTES", "AmqpSettings"]

#: The local RabbitMQ with its default account.
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: AMQP 0-9-1 limits routing keys and exchange and queue names to 255 bytes.
MAX_NAME_BYTES = 255

#: What the driver can do (``max_topic_length`` shrinks by the length of ``prefix``).
CAPABILITIES = Capabilities(
    wildcards=True, groups=True, ack=True, persistent=True, max_topic_length=MAX_NAME_BYTES
)

_NAME = re.compile(r"[A-Za-z0-9_.:\-]+")
_BAD_PREFIX = re.compile(r"[\s\x00-\x1f\x7f*#]")


def _check_url(_instance: Any, _attribute: Any, value: str) -> None:
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError(f"url: not a URL: {redact_url(value)}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(
            f"url: {redact_url(value)} is not an AMQP URL: write "
            "amqp://user:password@host:5672/vhost (or amqps:// for TLS)"
        )
    if not parts.hostname:
        raise ValueError(f"url: {redact_url(value)} names no host: write amqp://host:5672/")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ValueError(f"url: {redact_url(value)} has an invalid port") from None


def _check_name(what: str, *, empty: bool = False) -> Any:
    def check(_instance: Any, attribute: Any, value: str) -> None:
        if not value and empty:
            return
        name = attribute.name
        if not value:
            raise ValueError(f"{name}: the {what} name is empty: use e.g. 'runa.message'")
        if len(value.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"{name}: the {what} name is over {MAX_NAME_BYTES} bytes")
        if value.startswith("amq."):
            raise ValueError(
                f"{name}: {value!r} starts with 'amq.', which is reserved by the broker"
            )
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"{name}: {value!r}: use letters, digits and '-', '_', '.', ':' in the {what} name"
            )

    return check


def _check_prefix(_instance: Any, _attribute: Any, value: str) -> None:
    if _BAD_PREFIX.search(value):
        raise ValueError(
            f"prefix: {value!r} holds whitespace, a control character or a wildcard; "
            "use e.g. 'app.'"
        )
    if len(value.encode()) >= MAX_NAME_BYTES:
        raise ValueError(f"prefix: {len(value.encode())} bytes leave no room for topics")


def _at_least(low: int, high: int | None = None) -> Any:
    def check(_instance: Any, attribute: Any, value: int) -> None:
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{attribute.name}: must be {bounds}, got {value!r}")

    return check


@attrs.frozen
class AmqpSettings:
    """Every setting of the AMQP driver, with defaults for a local RabbitMQ.

    ``url``: ``amqp://`` or ``amqps://`` (TLS) with user, password, host, port and vhost.
    ``exchange``: the durable topic exchange messages are published to.
    ``prefix``: put in front of every routing key (and binding), to share an exchange.
    ``prefetch``: unacknowledged messages one subscription holds (handlers run concurrently
    up to this many; the subscription's ``concurrency`` limits them further).
    ``publisher_confirms``: wait for the broker to confirm each publish.
    ``persistent_messages``: publish with delivery mode 2, so messages in durable (group)
    queues survive a broker restart.
    ``max_retries``: deliveries after the first for a message whose handler failed.
    ``dead_letter``: send messages that failed ``max_retries + 1`` times, and messages that
    cannot be decoded (not an envelope, or a payload that does not fit the handler's type),
    to ``dead_letter_exchange``; when false they are dropped.
    ``dead_letter_exchange``: the topic exchange the driver declares for dead letters.
    ``dead_letter_queue``: a durable queue bound to it with ``#``; empty for none.
    ``publish_timeout``: seconds a publish may take, waiting for a lost connection included.
    ``connect_timeout``: seconds the first connection may take in ``start()`` (then it raises
    :class:`~runa_message.ConnectError`).
    ``reconnect_interval``: seconds between reconnection attempts after a cut.
    ``close_timeout``: seconds ``close()`` waits for handlers in flight.
    """

    url: str = attrs.field(default=DEFAULT_URL, validator=_check_url, repr=redact_url)
    exchange: str = attrs.field(default="runa.message", validator=_check_name("exchange"))
    prefix: str = attrs.field(default="", validator=_check_prefix)
    prefetch: int = attrs.field(default=100, validator=_at_least(1, 65535))
    publisher_confirms: bool = True
    persistent_messages: bool = True
    max_retries: int = attrs.field(default=3, validator=_at_least(0))
    dead_letter: bool = True
    dead_letter_exchange: str = attrs.field(
        default=attrs.Factory(lambda self: f"{self.exchange}.dlx", takes_self=True),
        validator=_check_name("dead-letter exchange"),
    )
    dead_letter_queue: str = attrs.field(
        default=attrs.Factory(lambda self: f"{self.exchange}.dead-letter", takes_self=True),
        validator=_check_name("dead-letter queue", empty=True),
    )
    publish_timeout: float = attrs.field(default=5.0, validator=positive())
    connect_timeout: float = attrs.field(default=10.0, validator=positive())
    reconnect_interval: float = attrs.field(default=1.0, validator=positive())
    close_timeout: float = attrs.field(default=10.0, validator=positive())

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], path: str = "message.amqp") -> AmqpSettings:
        """Build settings from a config table; :class:`~runa_message.ConfigError` names bad keys."""
        return structure_settings(cls, settings, path)
