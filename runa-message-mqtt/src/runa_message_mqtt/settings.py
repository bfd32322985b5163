"""The settings of the MQTT driver: the ``[message.mqtt]`` table (over ``[mqtt]``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

from runa_message.config import positive, structure_settings
from runa_message.driver import Capabilities
from runa_message.redact import redact_url

__all__ = ["CAPABILITIES", "VERSIONS", "Endpoint", "MqttSettings"]

#: The MQTT protocol versions the driver speaks, as the ``version`` setting spells them.
VERSIONS = ("5", "3.1.1")
_SCHEMES = {"mqtt": (1883, False), "mqtts": (8883, True)}
#: The longest MQTT topic name, in UTF-8 bytes (a two-byte length prefix on the wire).
MAX_TOPIC_BYTES = 65535

#: What the driver can do: wildcards and shared subscriptions for groups, at-most-once
#: delivery to the handler. A driver's own ``capabilities`` add ``max_topic_length``:
#: :data:`MAX_TOPIC_BYTES` minus the length of its ``prefix``.
CAPABILITIES = Capabilities(wildcards=True, groups=True, ack=False, persistent=False)


@attrs.frozen
class Endpoint:
    """Where and how to connect, read from ``url`` and the credential settings."""

    host: str
    port: int
    tls: bool
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)


def _check_url(_instance: object, _attribute: object, url: str) -> None:
    _parse_url(url)


def _parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(
            f"url {shown!r} is not a valid URL ({exc}): write mqtt://host:1883"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"url {shown!r}: the scheme must be mqtt:// (plain TCP) or mqtts:// (TLS), "
            f"not {parts.scheme + '://' if parts.scheme else 'missing'}"
        )
    if not parts.hostname:
        raise ValueError(f"url {shown!r} has no host: write e.g. mqtt://127.0.0.1:1883")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"url {shown!r}: an MQTT url is only scheme://[user[:password]@]host[:port]; "
            "set the topic prefix with the `prefix` setting"
        )
    default_port, tls = _SCHEMES[parts.scheme]
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname, port or default_port, tls, username, password


def _check_prefix(_instance: object, _attribute: object, prefix: str) -> None:
    bad = [char for char in ("+", "#", "\x00") if char in prefix]
    if bad:
        raise ValueError(
            f"prefix {prefix!r} holds {bad[0]!r}, which MQTT topic names may not contain: "
            "use a plain prefix such as 'runa/message/'"
        )
    if len(prefix.encode()) >= MAX_TOPIC_BYTES:
        raise ValueError(f"prefix is {len(prefix.encode())} bytes; MQTT topics are at most 65535")


def _check_qos(_instance: object, _attribute: object, qos: int) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(
            f"qos must be 0 (at most once), 1 (at least once) or 2 (exactly once), got {qos!r}"
        )


def _check_version(_instance: object, _attribute: object, version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f'version must be "5" (MQTT 5, the default) or "3.1.1", got {version!r}')


def _check_keepalive(_instance: object, _attribute: object, value: int) -> None:
    if not 0 < value <= 65535:
        raise ValueError(f"keepalive must be between 1 and 65535 seconds, got {value!r}")


def _check_client_id(_instance: object, _attribute: object, value: str) -> None:
    if len(value.encode()) > 65535 or "\x00" in value:
        raise ValueError("client_id must be at most 65535 bytes of UTF-8 without NUL")


def _show_url(url: str) -> str:
    return repr(redact_url(url))


def _hide(value: str | None) -> str:
    return "None" if value is None else "'***'"


@attrs.frozen
class MqttSettings:
    """Settings of :class:`~runa_message_mqtt.MqttDriver`; every one has a default.

    ``url``: ``mqtt://[user[:password]@]host[:port]`` (port 1883) or ``mqtts://`` for TLS
    (port 8883). ``client_id``: empty (the default) gives each connection a unique id.
    ``username``/``password``: win over the ones in ``url``. ``prefix``: put before every
    topic. ``qos``: 0, 1 or 2, for publishing and subscribing. ``retained``: publish with
    the retain flag. ``timeout``: seconds to connect and to have a (un)subscribe confirmed.
    ``publish_timeout``: seconds a publish waits for the broker (through an outage, too)
    before :class:`~runa_message.PublishError`. ``publisher_confirms`` (QoS 1/2): a publish
    returns once the broker acknowledged it; false: once it is on its way (the driver sends it
    again until acknowledged, also after a reconnect). ``version``: ``"5"`` or ``"3.1.1"``.
    ``keepalive``: seconds between keepalive pings. ``ca_file``, ``cert_file``,
    ``key_file``: PEM files for TLS (a private CA; a client certificate).
    ``tls_insecure``: do not check that the certificate names the host.
    """

    url: str = attrs.field(default="mqtt://127.0.0.1:1883", validator=_check_url, repr=_show_url)
    client_id: str = attrs.field(default="", validator=_check_client_id)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=_hide)
    prefix: str = attrs.field(default="runa/message/", validator=_check_prefix)
    qos: int = attrs.field(default=1, validator=_check_qos)
    retained: bool = False
    timeout: float = attrs.field(default=10.0, validator=positive())
    publish_timeout: float = attrs.field(default=5.0, validator=positive())
    publisher_confirms: bool = True
    version: str = attrs.field(default="5", validator=_check_version)
    keepalive: int = attrs.field(default=60, validator=_check_keepalive)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], path: str = "message.mqtt") -> MqttSettings:
        """Build settings from a config table; raise :class:`~runa_message.ConfigError` naming
        the key path (``path``) of an unknown key, a wrong type or a bad value."""
        return structure_settings(cls, settings, path)

    def endpoint(self) -> Endpoint:
        """Host, port, TLS and credentials (``username``/``password`` win over the url's)."""
        host, port, tls, username, password = _parse_url(self.url)
        if self.username is not None:
            username = self.username
        if self.password is not None:
            password = self.password
        return Endpoint(host, port, tls, username, password)

    @property
    def where(self) -> str:
        """``scheme://host:port`` without credentials, for messages and logs."""
        endpoint = self.endpoint()
        scheme = "mqtts" if endpoint.tls else "mqtt"
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        return f"{scheme}://{host}:{endpoint.port}"
