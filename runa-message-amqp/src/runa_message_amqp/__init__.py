"""The AMQP (RabbitMQ) driver of runa-message: AMQP 0-9-1 through aio-pika.

Manual setup with :func:`driver` (optionally on your own aio-pika connection), or
config-driven setup for :class:`runa_message.App` with :func:`provider`; the driver name in
config is ``amqp``.

aio-pika is imported when the first :class:`AmqpDriver` is created, so that listing drivers
(which imports :mod:`runa_message_amqp.plugin`, and so this package) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import runa_message as message

from .driver import AmqpDriver
from .settings import AmqpSettings

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

__all__ = ["AmqpDriver", "AmqpSettings", "driver", "provider"]


def driver(client: AbstractConnection | None = None, **settings: Any) -> AmqpDriver:
    """Create an :class:`AmqpDriver` from keyword settings (see :class:`AmqpSettings`).

    ``client``: an aio-pika connection to share (``aio_pika.connect_robust(...)`` for
    reconnection); the driver never closes it. Without it the driver connects to ``url`` and
    closes what it opened. Bad settings raise :class:`~runa_message.ConfigError`.
    """
    return AmqpDriver(AmqpSettings.from_mapping(settings, "amqp"), client=client)


def provider(*brokers: str, **settings: Any) -> message.Provider:
    """Config-driven setup: brokers ``brokers`` (default ``"default"``) on driver ``amqp``.

    ``settings`` win over ``[message.amqp]`` (which wins over ``[amqp]``) in the app's config.
    """
    return message.provider(
        message.configure_driver("amqp", **settings),
        *(message.register_broker(name, driver="amqp") for name in brokers or ("default",)),
    )
