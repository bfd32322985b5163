"""Entry point module of the Redis driver (``runa_message.drivers``: ``redis``).

Listing drivers imports this module, so it imports neither redis-py nor the driver module
at import time; :func:`runa_message_driver` imports them when a broker uses ``redis``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runa_message.hookspecs import hookimpl
from runa_message.plugins import DriverDescription

from .settings import CAPABILITIES

if TYPE_CHECKING:
    from .driver import RedisDriver

__all__ = ["CAPABILITIES", "NAME", "runa_message_driver", "runa_message_driver_description"]

#: The entry point name: what users write in ``driver = "redis"``.
NAME = "redis"


@hookimpl
def runa_message_driver(name: str, settings: Mapping[str, Any]) -> RedisDriver | None:
    """Create the Redis driver from its ``[message.redis]`` table; None for other names."""
    if name != NAME:
        return None
    from .driver import RedisDriver
    from .settings import RedisSettings

    return RedisDriver(RedisSettings.from_mapping(settings))


@hookimpl
def runa_message_driver_description(name: str) -> DriverDescription | None:
    """Describe the Redis driver for ``runa-message drivers``; None for other names."""
    if name != NAME:
        return None
    from .settings import RedisSettings

    return DriverDescription(
        name=NAME,
        summary="Redis pub/sub (redis-py): broadcast to connected subscribers, glob wildcards",
        capabilities=CAPABILITIES,
        settings=RedisSettings,
    )
