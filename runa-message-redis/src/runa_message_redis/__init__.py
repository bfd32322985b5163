"""The Redis driver of runa-message: Redis pub/sub through redis-py's asyncio client.

Manual setup with :func:`driver` (optionally around your own ``redis.asyncio.Redis``), or
config-driven setup for :class:`runa_message.App` with :func:`provider`.

redis-py is imported when the first :class:`RedisDriver` is created, so that listing
drivers (which imports :mod:`runa_message_redis.plugin`, and so this package) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import runa_message as message

from .driver import RedisDriver
from .settings import RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisDriver", "RedisSettings", "driver", "provider"]


def driver(client: Redis | None = None, **settings: Any) -> RedisDriver:
    """Create a :class:`RedisDriver` from keyword settings (see :class:`RedisSettings`).

    ``client``: a ``redis.asyncio.Redis`` to take the connection settings from; the driver
    never closes it. Without it the driver connects to ``url`` and closes what it opened.
    Bad settings raise :class:`~runa_message.ConfigError`.
    """
    return RedisDriver(RedisSettings.from_mapping(settings, "redis"), client=client)


def provider(*brokers: str, **settings: Any) -> message.Provider:
    """Config-driven setup: brokers ``brokers`` (default ``"default"``) on driver ``redis``.

    ``settings`` win over ``[message.redis]`` (which wins over ``[redis]``) in the app's config.
    """
    return message.provider(
        message.configure_driver("redis", **settings),
        *(message.register_broker(name, driver="redis") for name in brokers or ("default",)),
    )
