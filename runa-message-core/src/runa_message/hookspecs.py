"""The hooks a runa-message plugin can implement: the one place they are declared.

A driver distribution ships a plugin module, named by an entry point in the
``runa_message.drivers`` group whose name is the driver name users write in config
(``driver = "nats"``). The module implements hooks with :data:`runa_message.hookimpl`::

    from runa_message import hookimpl

    @hookimpl
    def runa_message_driver(name, settings):
        if name != "nats":
            return None
        from .driver import NatsDriver   # import the client library only now

        return NatsDriver.from_settings(settings)

Plugin modules must import nothing heavy at import time: listing drivers loads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .driver import Driver
    from .plugins import DriverDescription

__all__ = ["hookimpl", "hookspec"]

#: Marks the hook specifications below (project name ``runa_message``).
hookspec = pluggy.HookspecMarker("runa_message")
#: Marks a plugin's hook implementations.
hookimpl = pluggy.HookimplMarker("runa_message")


@hookspec(firstresult=True)
def runa_message_driver(name: str, settings: Mapping[str, Any]) -> Driver | None:
    """Create the driver called ``name`` from its settings table.

    Called when a broker's driver is resolved by name: at ``registry.start()`` for every
    broker whose driver was not registered in code, and by ``runa-message check``.
    ``settings`` is the ``[message.<name>]`` table over the shared ``[<name>]`` table, possibly
    empty. Raise :class:`~runa_message.ConfigError` (with the key path) for bad settings.

    Return None when ``name`` is not yours; the first driver returned wins.
    """


@hookspec(firstresult=True)
def runa_message_driver_description(name: str) -> DriverDescription | None:
    """Describe the driver called ``name`` for ``runa-message drivers`` and the docs.

    Called when drivers are listed; it must not import the broker's client library.
    Return None when ``name`` is not yours.
    """
