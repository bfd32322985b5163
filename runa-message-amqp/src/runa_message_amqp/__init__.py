"""The AMQP (RabbitMQ) driver of runa-message.

Manual setup with :func:`driver` (or :class:`AmqpDriver`), config-driven setup with
:func:`provider`; the driver name in config is ``amqp``. aio-pika is imported when the
driver class is first used, not when this package is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import AmqpSettings

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from runa_message.app import Provider

    from .driver import AmqpDriver

__all__ = ["AmqpDriver", "AmqpSettings", "driver", "provider"]


def driver(client: AbstractConnection | None = None, **settings: Any) -> AmqpDriver:
    """Create an :class:`AmqpDriver` from keyword settings, optionally on your connection.

    A connection you pass (``aio_pika.connect_robust(...)``) is never closed by the driver.
    """
    from .driver import AmqpDriver

    return AmqpDriver(AmqpSettings.from_mapping(settings, path="amqp.driver()"), client=client)


def provider(*brokers: str, **settings: Any) -> Provider:
    """Config-driven setup for :class:`runa_message.App`: the ``amqp`` driver for ``brokers``.

    Keyword settings override ``[message.amqp]``; brokers default to ``("default",)``.
    """
    import runa_message as message

    return message.provider(
        message.configure_driver("amqp", **settings),
        *(message.register_broker(name, driver="amqp") for name in brokers or ("default",)),
    )


def __getattr__(name: str) -> Any:
    if name == "AmqpDriver":
        from .driver import AmqpDriver

        return AmqpDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
