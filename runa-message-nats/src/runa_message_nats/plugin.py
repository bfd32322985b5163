"""Entry point module of the NATS driver (``runa_message.drivers``: ``nats``).

Listing drivers imports this module, so it imports neither nats-py nor the driver module at
import time; :func:`runa_message_driver` imports them when a broker uses ``nats``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runa_message.hookspecs import hookimpl
from runa_message.plugins import DriverDescription

from .settings import CAPABILITIES, NatsSettings

if TYPE_CHECKING:
    from .driver import NatsDriver

__all__ = ["NAME", "runa_message_driver", "runa_message_driver_description"]

#: The entry point name: what users write in ``driver = "nats"``.
NAME = "nats"


@hookimpl
def runa_message_driver(name: str, settings: Mapping[str, Any]) -> NatsDriver | None:
    """Create the NATS driver from its settings table; None for any other name."""
    if name != NAME:
        return None
    from .driver import NatsDriver

    return NatsDriver(NatsSettings.from_mapping(settings))


@hookimpl
def runa_message_driver_description(name: str) -> DriverDescription | None:
    """Describe the NATS driver for ``runa-message drivers``; None for any other name."""
    if name != NAME:
        return None
    return DriverDescription(
        name=NAME,
        summary="NATS core pub/sub on nats-py: subject wildcards, queue groups, "
        "cluster URLs, TLS, reconnect with resubscribe (at-most-once)",
        capabilities=CAPABILITIES,
        settings=NatsSettings,
    )
