"""Entry point module of the AMQP (RabbitMQ) driver: ``driver = "amqp"``.

Listing drivers imports this module, so it imports no client library; aio-pika is imported
only when a driver is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runa_message.hookspecs import hookimpl
from runa_message.plugins import DriverDescription

from .settings import CAPABILITIES, AmqpSettings

if TYPE_CHECKING:
    from .driver import AmqpDriver

__all__ = ["NAME", "runa_message_driver", "runa_message_driver_description"]

#: The driver name users write in config.
NAME = "amqp"


@hookimpl
def runa_message_driver(name: str, settings: Mapping[str, Any]) -> AmqpDriver | None:
    """Create the AMQP driver from its settings table; None for any other name."""
    if name != NAME:
        return None
    from .driver import AmqpDriver

    return AmqpDriver(AmqpSettings.from_mapping(settings))


@hookimpl
def runa_message_driver_description(name: str) -> DriverDescription | None:
    """Describe the AMQP driver for ``runa-message drivers``; None for any other name."""
    if name != NAME:
        return None
    return DriverDescription(
        name=NAME,
        summary="RabbitMQ and other AMQP 0-9-1 brokers, on aio-pika: topic exchange, "
        "durable group queues, acknowledgements, retries and dead letters",
        capabilities=CAPABILITIES,
        settings=AmqpSettings,
    )
