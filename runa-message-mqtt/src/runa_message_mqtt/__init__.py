"""The MQTT driver of runa-message: ``driver = "mqtt"``, MQTT 5 (or 3.1.1) through paho-mqtt 2.

>>> from runa_message_mqtt import MqttSettings
>>> MqttSettings(url="mqtt://user:secret@127.0.0.1:1883").url
'mqtt://user:secret@127.0.0.1:1883'
>>> "secret" in repr(MqttSettings(url="mqtt://user:secret@127.0.0.1:1883"))
False

``MqttDriver`` and :func:`driver` import paho-mqtt on first use, so importing this package
(as listing drivers does) stays light.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

import runa_message as message

from .settings import MqttSettings

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from .driver import MqttDriver, MqttSubscription

__all__ = ["MqttDriver", "MqttSettings", "MqttSubscription", "driver", "provider"]


class _Package(types.ModuleType):
    """This package, keeping the name ``driver`` for the function below.

    Importing the submodule ``runa_message_mqtt.driver`` (lazily, on first use) would
    otherwise rebind the package attribute ``driver`` to that module.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "driver" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in ("MqttDriver", "MqttSubscription"):
        # The submodule, not the function ``driver`` (``from . import driver`` gives that).
        return getattr(importlib.import_module(f"{__name__}.driver"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def driver(client: mqtt.Client | None = None, **settings: Any) -> MqttDriver:
    """Build an :class:`MqttDriver` by hand: ``registry.register_driver("mqtt", driver(...))``.

    ``settings`` are the keys of ``[message.mqtt]`` (see :class:`MqttSettings`). With
    ``client`` (a ``paho.mqtt.client.Client`` you configured) the driver uses it and never
    disconnects it; without, it creates its clients and disconnects them at ``close()``.
    Raises :class:`~runa_message.ConfigError` for a bad setting.
    """
    from .driver import MqttDriver

    return MqttDriver(
        MqttSettings.from_mapping(settings, path="runa_message_mqtt.driver()"), client=client
    )


def provider(*brokers: str, **settings: Any) -> message.Provider:
    """Config-driven setup for :class:`runa_message.App`: brokers on the ``mqtt`` driver.

    ``brokers`` default to ``("default",)``; ``settings`` win over ``[message.mqtt]``.
    """
    return message.provider(
        message.configure_driver("mqtt", **settings),
        *(message.register_broker(name, driver="mqtt") for name in brokers or ("default",)),
    )
