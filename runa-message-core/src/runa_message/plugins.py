"""Finding drivers: by name, through entry points, loading only the one asked for.

Drivers are plugins in the ``runa_message.drivers`` entry-point group; the entry point's
name is the driver's name. Resolving ``"nats"`` loads that one entry point's module and calls
its :func:`~runa_message.hookspecs.runa_message_driver` hook; listing drivers reads package
metadata and imports nothing.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import logging
from collections.abc import Mapping
from types import ModuleType
from typing import Any, cast

import attrs
import pluggy

from . import hookspecs
from .driver import Capabilities, Driver
from .errors import DriverNotFoundError

__all__ = [
    "ENTRY_POINT_GROUP",
    "DriverDescription",
    "DriverEntry",
    "create_driver",
    "describe_driver",
    "installed_drivers",
    "plugin_manager",
]

ENTRY_POINT_GROUP = "runa_message.drivers"
log = logging.getLogger("runa_message.plugins")

#: Drivers this project publishes, so an error can say what to install.
KNOWN_DISTRIBUTIONS = {
    "redis": "runa-message-redis",
    "nats": "runa-message-nats",
    "amqp": "runa-message-amqp",
    "mqtt": "runa-message-mqtt",
}


@attrs.frozen
class DriverEntry:
    """An installed driver as package metadata describes it (nothing imported)."""

    name: str
    module: str
    distribution: str
    version: str


@attrs.frozen
class DriverDescription:
    """What a plugin says of its driver: a one-line summary and its capabilities."""

    name: str
    summary: str
    capabilities: Capabilities
    settings: type | None = None


_manager: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with the hookspecs added."""
    global _manager
    if _manager is None:
        manager = pluggy.PluginManager("runa_message")
        manager.add_hookspecs(hookspecs)
        _manager = manager
    return _manager


def installed_drivers() -> list[DriverEntry]:
    """Every installed driver, sorted by name, read from metadata alone."""
    seen: dict[str, DriverEntry] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        seen.setdefault(
            ep.name,
            DriverEntry(
                ep.name,
                ep.value,
                dist.metadata["Name"] if dist is not None else "?",
                dist.version if dist is not None else "?",
            ),
        )
    return sorted(seen.values(), key=lambda entry: entry.name)


def load_plugin(name: str) -> ModuleType | None:
    """Import and register the plugin module of driver ``name``; None when none is installed."""
    manager = plugin_manager()
    plugin = manager.get_plugin(f"{ENTRY_POINT_GROUP}:{name}")
    if plugin is not None:
        return cast(ModuleType, plugin)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else "its distribution"
        try:
            module = ep.load()
        except Exception as exc:
            raise DriverNotFoundError(
                f"driver {name!r} from {dist} failed to import ({type(exc).__name__}: {exc}): "
                f"reinstall it with `pip install --force-reinstall {dist}`"
            ) from exc
        if not manager.is_registered(module):  # one module may serve several names
            manager.register(module, name=f"{ENTRY_POINT_GROUP}:{name}")
        return cast(ModuleType, module)
    return None


def create_driver(name: str, settings: Mapping[str, Any], *, broker: str | None = None) -> Driver:
    """Create driver ``name`` from its settings, loading only its plugin.

    Raises :class:`DriverNotFoundError` naming ``broker``, the installed drivers, the closest
    name and the distribution to install.
    """
    load_plugin(name)
    driver = plugin_manager().hook.runa_message_driver(name=name, settings=settings)
    if driver is None:
        raise DriverNotFoundError(not_found_message(name, broker=broker))
    return cast(Driver, driver)


def describe_driver(name: str) -> DriverDescription | None:
    """The plugin's description of driver ``name`` (loads its plugin module, no client library)."""
    load_plugin(name)
    description = plugin_manager().hook.runa_message_driver_description(name=name)
    return cast("DriverDescription | None", description)


def not_found_message(name: str, *, broker: str | None = None, known: tuple[str, ...] = ()) -> str:
    """The text of a :class:`DriverNotFoundError`: what is installed and what to install."""
    installed = sorted({entry.name for entry in installed_drivers()} | set(known))
    who = f"broker {broker!r} uses driver {name!r}" if broker else f"driver {name!r}"
    text = f"{who}, which is not installed; installed drivers: {', '.join(installed) or 'none'}"
    close = difflib.get_close_matches(name, installed + list(KNOWN_DISTRIBUTIONS), n=1)
    if close and close[0] != name:
        text += f"; did you mean {close[0]!r}?"
    dist = KNOWN_DISTRIBUTIONS.get(name)
    if dist:
        text += f"; install it with `pip install {dist}` (or runa-message-core[{name}])"
    else:
        text += (
            "; install the distribution that provides it (its entry point group is "
            f"{ENTRY_POINT_GROUP!r}) or register one with registry.register_driver({name!r}, ...)"
        )
    return text
