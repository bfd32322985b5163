"""The MQTT driver of runa-message: ``driver = "mqtt"``, MQTT 5 (or 3.1.1) through paho-mqtt 2.

Manual setup with :func:`driver` (optionally around your own ``paho.mqtt.client.Client``),
or config-driven setup for :class:`runa_message.App` with :func:`provider`.

paho-mqtt is imported when the first :class:`MqttDriver` is created, so that listing drivers
(which imports :mod:`runa_message_mqtt.plugin`, and so this package) stays light.

>>> from runa_message_mqtt import MqttSettings
>>> MqttSettings(url="mqtt://user:secret@127.0.0.1:1883").url
'mqtt://user:secret@127.0.0.1:1883'
>>> "secret" in repr(MqttSettings(url="mqtt://user:secret@127.0.0.1:1883"))
False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import runa_message as message

from .driver import MqttDriver
from .settings import MqttSettings

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["MqttDriver", "MqttSettings", "driver", "provider"]


def driver(client: mqtt.Client | None = None, **settings: Any) -> MqttDriver:
    """Create an :class:`MqttDriver` from keyword settings (see :class:`MqttSettings`).

    ``client``: a ``paho.mqtt.client.Client`` you configured; the driver uses it and never
    disconnects it. Without it the driver creates its clients from ``url`` and disconnects
    them at ``close()``. Bad settings raise :class:`~runa_message.ConfigError`.
    """
    return MqttDriver(MqttSettings.from_mapping(settings, "mqtt"), client=client)


def provider(*brokers: str, **settings: Any) -> message.Provider:
    """Config-driven setup: brokers ``brokers`` (default ``"default"``) on driver ``mqtt``.

    ``settings`` win over ``[message.mqtt]`` (which wins over ``[mqtt]``) in the app's config.
    """
    return message.provider(
        message.configure_driver("mqtt", **settings),
        *(message.register_broker(name, driver="mqtt") for name in brokers or ("default",)),
    )
