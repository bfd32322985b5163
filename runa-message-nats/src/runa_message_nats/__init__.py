"""The NATS driver of runa-message: ``driver = "nats"``, core NATS through nats-py.

Manual setup with :func:`driver` (optionally on your own connected ``nats.aio.client.Client``),
or config-driven setup for :class:`runa_message.App` with :func:`provider`.

nats-py is imported when the first :class:`NatsDriver` is created, so that listing drivers
(which imports :mod:`runa_message_nats.plugin`, and so this package) stays light.

>>> from runa_message_nats import NatsSettings
>>> NatsSettings(url="nats://user:secret@127.0.0.1:4222").url
('nats://user:secret@127.0.0.1:4222',)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import runa_message as message

from .driver import NatsDriver
from .settings import NatsSettings

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["NatsDriver", "NatsSettings", "driver", "provider"]


def driver(client: Client | None = None, **settings: Any) -> NatsDriver:
    """Create a :class:`NatsDriver` from keyword settings (see :class:`NatsSettings`).

    ``client``: a connected ``nats.aio.client.Client`` to use; the driver never closes it.
    Without it the driver connects at ``start()`` and drains and closes its own connection at
    ``close()``. Bad settings raise :class:`~runa_message.ConfigError`.
    """
    return NatsDriver(NatsSettings.from_mapping(settings, "nats"), client=client)


def provider(*brokers: str, **settings: Any) -> message.Provider:
    """Config-driven setup: brokers ``brokers`` (default ``"default"``) on driver ``nats``.

    ``settings`` win over ``[message.nats]`` (which wins over ``[nats]``) in the app's config.
    """
    return message.provider(
        message.configure_driver("nats", **settings),
        *(message.register_broker(name, driver="nats") for name in brokers or ("default",)),
    )
