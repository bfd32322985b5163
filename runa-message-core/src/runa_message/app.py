"""A small application host: providers, modules, freeze, run, shutdown.

Not a dependency-injection framework: an :class:`App` holds one instance per type, runs
modules once at :meth:`App.freeze`, starts what providers registered, and stops it all in
reverse order at :meth:`App.shutdown`::

    app = App()
    app.install(message.provider(message.register_broker("default")))
    app.module(notices)            # notices(registry: message.Registry) subscribes handlers
    await app.freeze()             # registries start: subscriptions are live
    await message.default().publish("default", "notice.created", Notice("hello"))
    await app.shutdown()           # drains handlers, closes drivers
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import typing
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .config import Config, load_config
from .driver import Driver
from .errors import MessageError
from .registry import Registry

__all__ = [
    "App",
    "Module",
    "Option",
    "Provider",
    "configure_driver",
    "default",
    "provider",
    "register_broker",
    "register_driver",
]

log = logging.getLogger("runa_message.app")

T = TypeVar("T")
#: A setup step applied to a registry by :func:`provider`.
Option = Callable[[Registry], None]
Hook = Callable[[], Awaitable[None]]

_running: App | None = None


class Module:
    """Base class for application modules; override what you need.

    ``setup(app)`` runs at freeze, before anything starts (subscribe handlers here);
    ``start()`` runs after the registries started; ``stop()`` at shutdown, in reverse order.
    A plain function can be a module too: its parameters are filled by type from the app.
    """

    def setup(self, app: App) -> None:
        """Register things; ``app.invoke(Registry)`` gives the registry."""

    async def start(self) -> None:
        """Called after every provider started."""

    async def stop(self) -> None:
        """Called at shutdown, before providers stop."""


class Provider:
    """Something :meth:`App.install` accepts: it gets the app to provide instances and hooks."""

    def __init__(self, install: Callable[[App], None]) -> None:
        self._install = install

    def install(self, app: App) -> None:
        """Install into ``app``."""
        self._install(app)


class App:
    """Holds instances by type, runs modules, and starts and stops what providers installed.

    ``config`` (a :class:`Config`, a path, or None for the environment alone) is provided
    as :class:`Config` to everything installed.
    """

    def __init__(self, config: Config | str | os.PathLike[str] | None = None) -> None:
        if config is None or isinstance(config, (str, os.PathLike)):
            config = load_config(config)
        self._instances: dict[type, Any] = {Config: config, App: self}
        self._modules: list[Module | Callable[..., Any]] = []
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._frozen = False
        self._stopped = False

    @property
    def config(self) -> Config:
        """The application's configuration."""
        return typing.cast(Config, self._instances[Config])

    def provide(self, type_: type[T], instance: T) -> T:
        """Make ``instance`` the app's ``type_``; :meth:`invoke` returns it."""
        self._instances[type_] = instance
        return instance

    def invoke(self, type_: type[T]) -> T:
        """Return the app's instance of ``type_``; raise :class:`MessageError` when none."""
        try:
            return typing.cast(T, self._instances[type_])
        except KeyError:
            known = ", ".join(sorted(t.__name__ for t in self._instances))
            raise MessageError(
                f"the app provides no {type_.__name__} (it provides: {known}); install a "
                "provider for it first"
            ) from None

    def on_start(self, hook: Hook) -> None:
        """Run ``hook`` at freeze, after modules set up (providers start things here)."""
        self._on_start.append(hook)

    def on_stop(self, hook: Hook) -> None:
        """Run ``hook`` at shutdown; stop hooks run in reverse order."""
        self._on_stop.append(hook)

    def install(self, *providers: Provider) -> App:
        """Install providers (for example ``message.provider(...)``)."""
        self._check_not_frozen("install a provider")
        for item in providers:
            item.install(self)
        return self

    def module(self, *modules: Module | Callable[..., Any]) -> App:
        """Add modules: :class:`Module` objects or functions whose parameters are filled by type."""
        self._check_not_frozen("add a module")
        self._modules.extend(modules)
        return self

    def _check_not_frozen(self, action: str) -> None:
        if self._frozen:
            raise MessageError(f"cannot {action} after freeze()")

    async def freeze(self) -> None:
        """Set up modules, start providers, then start modules; the app is then running."""
        global _running
        self._check_not_frozen("freeze twice")
        self._frozen = True
        for module in self._modules:
            if isinstance(module, Module):
                module.setup(self)
            else:
                result = module(*self._arguments(module))
                if inspect.isawaitable(result):
                    await result
        previous = _running
        try:
            for hook in self._on_start:
                await hook()
            _running = self  # modules' start() may already use message.default()
            for module in self._modules:
                if isinstance(module, Module):
                    await module.start()
        except BaseException:
            _running = previous
            await self._stop()
            raise

    def _arguments(self, function: Callable[..., Any]) -> list[Any]:
        hints = typing.get_type_hints(function)
        arguments = []
        for name in inspect.signature(function).parameters:
            if name not in hints:
                raise MessageError(
                    f"module {function.__qualname__}: annotate parameter {name!r} with the type "
                    "to inject (for example registry: message.Registry)"
                )
            arguments.append(self.invoke(hints[name]))
        return arguments

    async def shutdown(self) -> None:
        """Stop modules, then providers, in reverse order; idempotent."""
        global _running
        if self._stopped:
            return
        self._stopped = True
        for module in reversed(self._modules):
            if isinstance(module, Module):
                try:
                    await module.stop()
                except Exception:
                    log.exception("module %r failed to stop; continuing", module)
        await self._stop()
        if _running is self:
            _running = None

    async def _stop(self) -> None:
        for hook in reversed(self._on_stop):
            try:
                await hook()
            except Exception:
                log.exception("stop hook %r failed; continuing", hook)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Freeze, run until SIGINT or SIGTERM (or ``stop`` is set), then shut down gracefully."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                pass
        try:
            if not self._frozen:
                await self.freeze()
            log.info("running; SIGINT or SIGTERM stops")
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.shutdown()


def default() -> Registry:
    """The registry of the running default app (the last one frozen and not shut down)."""
    if _running is None:
        raise MessageError(
            "no application is running: install message.provider(...) into an App and "
            "`await app.freeze()` first"
        )
    return _running.invoke(Registry)


def provider(*options: Option) -> Provider:
    """Wire a :class:`Registry` into an :class:`App`: apply ``options``, start and close with it.

    The first ``provider`` creates the app's registry (from the app's config); later ones
    add to it.
    """

    def install(app: App) -> None:
        registry = app._instances.get(Registry)
        if registry is None:
            registry = app.provide(Registry, Registry(app.config))
            app.on_start(registry.start)
            app.on_stop(registry.close)
        for option in options:
            option(registry)

    return Provider(install)


def register_driver(name: str, driver: Driver) -> Option:
    """An option registering ``driver`` under ``name`` (see :meth:`Registry.register_driver`)."""
    return lambda registry: registry.register_driver(name, driver)


def register_broker(name: str = "default", **options: Any) -> Option:
    """An option registering broker ``name`` with ``options`` (see :meth:`Registry.broker`)."""

    def apply(registry: Registry) -> None:
        registry.broker(name, **options)

    return apply


def configure_driver(name: str, **settings: Any) -> Option:
    """An option giving driver ``name`` settings that win over config."""
    return lambda registry: registry.configure_driver(name, **settings)
