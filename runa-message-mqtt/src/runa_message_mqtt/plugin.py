"""Entry point module of the MQTT driver (``driver = "mqtt"``).

It imports neither paho-mqtt nor the driver module until a driver is created, so listing
drivers stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runa_message.hookspecs import hookimpl
from runa_message.plugins import DriverDescription

if TYPE_CHECKING:
    from .driver import MqttDriver

__all__ = ["NAME", "runa_message_driver", "runa_message_driver_description"]

#: The driver name users write in config: ``driver = "mqtt"``.
NAME = "mqtt"


@hookimpl
def runa_message_driver(name: str, settings: Mapping[str, Any]) -> MqttDriver | None:
    """Create the MQTT driver from its ``[message.mqtt]`` table; None for other names."""
    if name != NAME:
        return None
    from .driver import MqttDriver
    from .settings import MqttSettings

    return MqttDriver(MqttSettings.from_mapping(settings))


@hookimpl
def runa_message_driver_description(name: str) -> DriverDescription | None:
    """Describe the MQTT driver for ``runa-message drivers``; None for other names."""
    if name != NAME:
        return None
    from .settings import CAPABILITIES, MqttSettings

    return DriverDescription(
        name=NAME,
        summary="MQTT 5 / 3.1.1 (Mosquitto and others) on paho-mqtt 2: wildcards, shared "
        "subscriptions for groups",
        capabilities=CAPABILITIES,
        settings=MqttSettings,
    )
