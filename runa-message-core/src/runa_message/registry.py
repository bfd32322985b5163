"""The registry: brokers, drivers and subscriptions, and the publish path.

Everything is registered first (``broker``, ``subscribe``, ``use``, hooks), then ``start()``
validates it all, resolves drivers, connects and subscribes; ``close()`` drains and
disconnects. ``async with registry:`` does both.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import os
import typing
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

import attrs

from . import plugins
from .codec import CODECS, JSON, RAW, Codec, decoder_for, type_name
from .config import Config, load_config
from .driver import Driver, Subscription
from .errors import (
    BrokerNotFoundError,
    ClosedError,
    ConfigError,
    DriverNotFoundError,
    MessageError,
    PublishError,
    UnsupportedFeatureError,
)
from .hooks import ErrorHook, Hooks, PublishHook
from .ids import new_id, now
from .memory import MemoryDriver
from .message import BrokerInfo, Envelope, Message, PublishEvent, SubscriptionInfo
from .subscription import Middleware, SubscriptionRuntime
from .topic import is_pattern, validate_pattern, validate_topic

__all__ = ["ALL", "Broker", "PublishMiddleware", "Registry"]

log = logging.getLogger("runa_message.registry")

#: Stands for every broker in ``use``, ``use_publish``, ``on_error`` and ``on_publish``.
ALL = "*"

PublishNext = Callable[[str, Envelope], Awaitable[None]]
_UNKNOWN: Any = object()  # a payload type the JSON codec was not asked about yet
#: Publish middleware: ``async def mw(topic, envelope, call_next) -> None``.
PublishMiddleware = Callable[[str, Envelope, PublishNext], Awaitable[None]]
Handler = Callable[[Any], Awaitable[None] | None]
H = TypeVar("H", bound=Handler)

_DEFAULT = "default"
_MEMORY = "memory"


@attrs.define
class _BrokerSpec:
    name: str
    driver: str | None = None
    codec: Codec | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)
    middlewares: list[Middleware] = attrs.field(factory=list)
    publish_middlewares: list[PublishMiddleware] = attrs.field(factory=list)
    on_error: list[ErrorHook] = attrs.field(factory=list)
    on_publish: list[PublishHook] = attrs.field(factory=list)


@attrs.frozen
class _SubscriptionSpec:
    broker: str
    pattern: str
    consumer: str
    group: str | None
    handler: Handler
    payload: Any
    wants_envelope: bool
    codec: Codec | None
    concurrency: int


@attrs.define
class _BrokerRuntime:
    name: str
    driver_name: str
    driver: Driver
    codec: Codec
    meta: dict[str, Any]
    hooks: Hooks
    send: PublishNext
    max_topic_length: int | None
    valid_topics: set[str] = attrs.field(factory=set)
    #: The memory driver, when publish may hand it a Message (nothing needs the Envelope).
    local: MemoryDriver | None = None


class Registry:
    """Brokers, their drivers and subscriptions; the entry point of runa-message.

    A new registry has the driver ``memory`` and the broker ``default`` on it. ``config``
    is a :class:`Config` (see :func:`load_config`), a path to TOML, or a parsed mapping.
    """

    #: Messages buffered per subscription before ``publish`` waits (drivers without ack).
    buffer: int = 1024
    #: Seconds ``close()`` waits for in-flight handlers before cancelling them.
    drain_timeout: float = 10.0

    def __init__(
        self, config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None
    ) -> None:
        if isinstance(config, Config):
            self._config = config
        elif config is None:
            self._config = load_config()  # the environment's RUNA_MESSAGE__* overrides
        elif isinstance(config, Mapping):
            self._config = Config.from_mapping(config)
        else:
            self._config = load_config(config)
        self._drivers: dict[str, Driver] = {}
        self._driver_settings: dict[str, dict[str, Any]] = {}
        self._brokers: dict[str, _BrokerSpec] = {_DEFAULT: _BrokerSpec(_DEFAULT)}
        self._global = _BrokerSpec(ALL)
        self._specs: list[_SubscriptionSpec] = []
        self._state: Literal["new", "starting", "running", "closing", "closed"] = "new"
        self._runtime: dict[str, _BrokerRuntime] = {}
        self._subscriptions: list[tuple[SubscriptionRuntime, Subscription]] = []
        self._started_drivers: list[Driver] = []
        self._closing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Registry {self._state} brokers={sorted(self._brokers)}>"

    # -- registration ------------------------------------------------------------------

    def register_driver(self, name: str, driver: Driver) -> None:
        """Register a driver instance under ``name``; it wins over an installed plugin."""
        self._check_open("register a driver")
        self._drivers[name] = driver

    def configure_driver(self, name: str, **settings: Any) -> None:
        """Settings for driver ``name`` when it is created by name; they win over config."""
        self._check_open("configure a driver")
        self._driver_settings.setdefault(name, {}).update(settings)

    def broker(
        self,
        name: str,
        driver: str | None = None,
        codec: Codec | str | None = None,
        meta: Mapping[str, Any] | None = None,
        middlewares: Sequence[Middleware] = (),
        publish_middlewares: Sequence[PublishMiddleware] = (),
        on_error: ErrorHook | Sequence[ErrorHook] | None = None,
        on_publish: Sequence[PublishHook] = (),
    ) -> Broker:
        """Register broker ``name`` (or update the options given, if it exists); return its handle."""
        if not name or name == ALL:
            raise MessageError(f"broker name {name!r} is not allowed: use a plain name")
        spec = self._brokers.get(name)
        if spec is None:
            self._check_open("register a broker")
            spec = self._brokers[name] = _BrokerSpec(name)
        if driver is not None:
            self._check_open("change a broker's driver")
            spec.driver = driver
        if codec is not None:
            spec.codec = _codec(codec, f"broker {name!r}: codec")
        if meta is not None:
            spec.meta.update(meta)
        if middlewares:
            spec.middlewares = list(middlewares)
        if publish_middlewares:
            spec.publish_middlewares = list(publish_middlewares)
        if on_error is not None:
            spec.on_error = [on_error] if callable(on_error) else list(on_error)
        if on_publish:
            spec.on_publish = list(on_publish)
        return Broker(self, name)

    @overload
    def subscribe(
        self,
        broker: str,
        topic: str,
        handler: None = None,
        *,
        consumer: str | None = None,
        group: str | None = None,
        codec: Codec | str | None = None,
        payload: Any = None,
        concurrency: int = 1,
    ) -> Callable[[H], H]: ...

    @overload
    def subscribe(
        self,
        broker: str,
        topic: str,
        handler: H,
        *,
        consumer: str | None = None,
        group: str | None = None,
        codec: Codec | str | None = None,
        payload: Any = None,
        concurrency: int = 1,
    ) -> H: ...

    def subscribe(
        self,
        broker: str,
        topic: str,
        handler: H | None = None,
        *,
        consumer: str | None = None,
        group: str | None = None,
        codec: Codec | str | None = None,
        payload: Any = None,
        concurrency: int = 1,
    ) -> H | Callable[[H], H]:
        """Subscribe ``handler`` to ``topic`` (a pattern) on ``broker``; a decorator without one.

        The payload type is ``payload`` or the handler's ``Message[T]`` annotation.
        ``group`` makes the subscription one of competing consumers; ``consumer`` names it
        (default: the handler's qualified name). ``concurrency`` handlers run at once.
        """
        if handler is None:

            def decorator(func: H) -> H:
                self.subscribe(
                    broker,
                    topic,
                    func,
                    consumer=consumer,
                    group=group,
                    codec=codec,
                    payload=payload,
                    concurrency=concurrency,
                )
                return func

            return decorator
        self._check_open("subscribe")
        validate_pattern(topic)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise MessageError(f"concurrency must be a positive integer, got {concurrency!r}")
        if group is not None and not group:
            raise MessageError("group must be a non-empty name, or None for broadcast")
        if not callable(handler):
            raise MessageError(f"handler must be callable, got {type(handler).__name__}")
        resolved, wants_envelope = (
            (payload, False) if payload is not None else _payload_type(handler)
        )
        self._specs.append(
            _SubscriptionSpec(
                broker,
                topic,
                consumer or _qualified_name(handler),
                group,
                handler,
                resolved,
                wants_envelope,
                _codec(codec, "subscribe: codec") if codec is not None else None,
                concurrency,
            )
        )
        return handler

    def use(self, broker: str, *middlewares: Middleware) -> None:
        """Add subscribe middleware to ``broker`` (or :data:`ALL`); registry-wide runs outermost."""
        self._check_open("add middleware")
        self._spec(broker).middlewares.extend(middlewares)

    def use_publish(self, broker: str, *middlewares: PublishMiddleware) -> None:
        """Add publish middleware to ``broker`` (or :data:`ALL`)."""
        self._check_open("add publish middleware")
        self._spec(broker).publish_middlewares.extend(middlewares)

    def on_error(self, broker: str, hook: ErrorHook) -> None:
        """Call ``hook`` with an :class:`ErrorEvent` when a message of ``broker`` fails."""
        self._check_open("add an error hook")
        self._spec(broker).on_error.append(hook)

    def on_publish(self, broker: str, hook: PublishHook) -> None:
        """Call ``hook`` with a :class:`PublishEvent` after every publish attempt on ``broker``."""
        self._check_open("add a publish hook")
        self._spec(broker).on_publish.append(hook)

    def _spec(self, broker: str) -> _BrokerSpec:
        if broker == ALL:
            return self._global
        spec = self._brokers.get(broker)
        if spec is None:
            raise BrokerNotFoundError(_unknown_broker(broker, self._brokers))
        return spec

    def _check_open(self, action: str) -> None:
        if self._state != "new":
            raise MessageError(
                f"cannot {action} after start(): register everything before "
                "`await registry.start()` (or before entering `async with registry`)"
            )

    # -- inspection --------------------------------------------------------------------

    def info(self) -> list[BrokerInfo]:
        """Every broker with its driver, codec, subscriber count and meta, sorted by name."""
        configured = self._configured_brokers()
        result = []
        for name in sorted(self._brokers):
            runtime = self._runtime.get(name)
            if runtime is not None:
                driver, codec, meta = runtime.driver_name, runtime.codec.name, runtime.meta
            else:
                driver, effective_codec, meta = self._effective(name, configured)
                codec = effective_codec.name
            count = sum(1 for spec in self._specs if spec.broker == name)
            result.append(BrokerInfo(name, driver, codec, count, dict(meta)))
        return result

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Every subscription, sorted by broker, topic and consumer."""
        infos = []
        for spec in self._specs:
            broker = self._brokers.get(spec.broker)
            codec = spec.codec or (broker.codec if broker else None)
            infos.append(
                SubscriptionInfo(
                    spec.broker,
                    spec.pattern,
                    spec.consumer,
                    spec.group,
                    "Envelope" if spec.wants_envelope else type_name(spec.payload),
                    codec.name if codec else "by content-type",
                    spec.concurrency,
                )
            )
        return sorted(infos, key=lambda i: (i.broker, i.topic, i.consumer))

    @property
    def started(self) -> bool:
        """Whether ``start()`` finished and ``close()`` has not begun."""
        return self._state == "running"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Validate everything, resolve drivers, connect, and subscribe.

        When it returns, every subscription is active on its broker. Any mistake (unknown
        broker or driver, duplicate subscription, a feature the driver lacks) raises one
        error before anything connects.
        """
        if self._state != "new":
            raise MessageError(f"registry already {self._state}: start() runs once")
        self._state = "starting"
        try:
            await self._start()
        except BaseException:
            await self._abort()
            raise
        self._state = "running"

    def validate(self) -> list[BrokerInfo]:
        """Check everything ``start()`` checks and create the drivers, connecting nothing.

        Returns what :meth:`info` will report once started. Used by ``runa-message check``.
        """
        runtimes = self._prepare()
        counts = {name: sum(1 for s in self._specs if s.broker == name) for name in runtimes}
        return [
            BrokerInfo(r.name, r.driver_name, r.codec.name, counts[r.name], dict(r.meta))
            for r in runtimes.values()
        ]

    def _prepare(self) -> dict[str, _BrokerRuntime]:
        configured = self._configured_brokers()
        self._validate_subscriptions()
        runtimes = self._resolve(configured)
        self._check_capabilities(runtimes)
        return runtimes

    async def _start(self) -> None:
        runtimes = self._prepare()
        seen: set[int] = set()
        for runtime in runtimes.values():
            if id(runtime.driver) not in seen:
                seen.add(id(runtime.driver))
                await runtime.driver.start()
                self._started_drivers.append(runtime.driver)
        self._runtime = runtimes
        pending = []
        for spec in self._specs:
            runtime = runtimes[spec.broker]
            sub = self._runtime_of(spec, runtime)
            pending.append(self._subscribe(runtime.driver, spec, sub))
        await asyncio.gather(*pending)

    async def _subscribe(
        self, driver: Driver, spec: _SubscriptionSpec, sub: SubscriptionRuntime
    ) -> None:
        handle = await driver.subscribe(spec.pattern, spec.consumer, spec.group, sub)
        self._subscriptions.append((sub, handle))

    def _runtime_of(self, spec: _SubscriptionSpec, runtime: _BrokerRuntime) -> SubscriptionRuntime:
        broker = self._brokers[spec.broker]
        codecs = {codec.name: codec for codec in (*CODECS.values(), runtime.codec)}
        return SubscriptionRuntime(
            broker=spec.broker,
            pattern=spec.pattern,
            consumer=spec.consumer,
            handler=spec.handler,
            payload=spec.payload,
            wants_envelope=spec.wants_envelope,
            codec=spec.codec,
            codecs=codecs,
            default_codec=runtime.codec,
            middlewares=[*self._global.middlewares, *broker.middlewares],
            hooks=runtime.hooks,
            concurrency=spec.concurrency,
            buffer=self.buffer,
            ack=runtime.driver.capabilities.ack,
        )

    def _validate_subscriptions(self) -> None:
        problems: list[MessageError] = []
        identities: dict[tuple[str, str, str], _SubscriptionSpec] = {}
        for spec in self._specs:
            if spec.broker not in self._brokers:
                problems.append(
                    BrokerNotFoundError(
                        f"subscription {spec.consumer!r} on {spec.pattern!r}: "
                        + _unknown_broker(spec.broker, self._brokers)
                    )
                )
            key = (spec.broker, spec.pattern, spec.consumer)
            if key in identities:
                problems.append(
                    MessageError(
                        f"two subscriptions on broker {spec.broker!r}, topic {spec.pattern!r} "
                        f"share the consumer name {spec.consumer!r}: pass a distinct consumer= to one"
                    )
                )
            identities[key] = spec
        _raise_first(problems)

    def _configured_brokers(self) -> Mapping[str, Any]:
        return self._config.brokers()

    def _effective(
        self, name: str, configured: Mapping[str, Any]
    ) -> tuple[str, Codec, dict[str, Any]]:
        spec = self._brokers[name]
        table = configured.get(name)
        driver = spec.driver or (table.driver if table else None) or _MEMORY
        codec = spec.codec
        if codec is None and table is not None and table.codec is not None:
            codec = _codec(table.codec, f"{self._config_source}: message.brokers.{name}.codec")
        meta = {**(table.meta or {} if table else {}), **spec.meta}
        return driver, codec or JSON, meta

    @property
    def _config_source(self) -> str:
        return self._config.source

    def _resolve(self, configured: Mapping[str, Any]) -> dict[str, _BrokerRuntime]:
        for name in sorted(set(configured) - set(self._brokers)):
            message = (
                f"{self._config_source}: [message.brokers.{name}] configures broker {name!r}, "
                "which no code registers; it is not used (register it with "
                f"registry.broker({name!r}) or remove the table)"
            )
            warnings.warn(message, stacklevel=3)
        created: dict[str, Driver] = {}
        runtimes = {}
        for name in sorted(self._brokers):
            driver_name, codec, meta = self._effective(name, configured)
            driver = self._drivers.get(driver_name)
            if driver is None:
                driver = self._create_driver(driver_name, name)
                created[name] = driver
            spec = self._brokers[name]
            hooks = Hooks(
                [*self._global.on_error, *spec.on_error],
                [*self._global.on_publish, *spec.on_publish],
            )
            runtime = _BrokerRuntime(
                name,
                driver_name,
                driver,
                codec,
                meta,
                hooks,
                driver.publish,
                driver.capabilities.max_topic_length,
            )
            publish_middlewares = [*self._global.publish_middlewares, *spec.publish_middlewares]
            runtime.send = _publish_chain(publish_middlewares, runtime)
            # Exactly the memory driver (a subclass may change publish): nothing between
            # publish and the driver needs an Envelope, so a Message may go in its place.
            if type(driver) is MemoryDriver and not publish_middlewares and not hooks.on_publish:
                runtime.local = driver
            runtimes[name] = runtime
        return runtimes

    def _create_driver(self, driver_name: str, broker: str) -> Driver:
        settings, _path = self._config.driver_settings(driver_name)
        settings.update(self._driver_settings.get(driver_name, {}))
        try:
            return plugins.create_driver(driver_name, settings, broker=broker)
        except ConfigError as exc:
            if str(exc).startswith(self._config.source):
                raise
            raise ConfigError(f"{self._config.source}: {exc}") from None
        except DriverNotFoundError as exc:
            if "not installed" in str(exc):
                raise DriverNotFoundError(
                    plugins.not_found_message(
                        driver_name, broker=broker, known=tuple(self._drivers)
                    )
                ) from None
            raise

    def _check_capabilities(self, runtimes: Mapping[str, _BrokerRuntime]) -> None:
        problems: list[MessageError] = []
        for spec in self._specs:
            runtime = runtimes[spec.broker]
            codec = spec.codec or runtime.codec
            try:
                decoder_for(codec, spec.payload)
            except Exception as exc:
                problems.append(
                    MessageError(
                        f"subscription {spec.consumer!r} on broker {spec.broker!r}: "
                        f"{codec.name} cannot decode into {type_name(spec.payload)} "
                        f"({type(exc).__name__}: {exc}); register a structure hook on "
                        "runa_message.codec.converter before start(), or use another payload type"
                    )
                )
            caps = runtime.driver.capabilities
            if spec.group is not None and not caps.groups:
                problems.append(
                    UnsupportedFeatureError(
                        f"subscription {spec.consumer!r} on broker {spec.broker!r} asks for "
                        f"group {spec.group!r}, but driver {runtime.driver_name!r} has no "
                        "consumer groups: drop group= for broadcast, or put the broker on a driver with groups "
                        "(nats, amqp, mqtt, memory)"
                    )
                )
            if not caps.wildcards and is_pattern(spec.pattern):
                problems.append(
                    UnsupportedFeatureError(
                        f"subscription {spec.consumer!r} on broker {spec.broker!r} uses the "
                        f"pattern {spec.pattern!r}, but driver {runtime.driver_name!r} has no wildcards: "
                        "subscribe to exact topics"
                    )
                )
        _raise_first(problems)

    async def _abort(self) -> None:
        for sub, handle in self._subscriptions:
            await _quietly(handle.close())
            await sub.stop()
        for driver in reversed(self._started_drivers):
            await _quietly(driver.close())
        self._subscriptions.clear()
        self._started_drivers.clear()
        self._runtime = {}
        self._state = "closed"

    async def join(self, timeout: float | None = None) -> None:
        """Wait until every message handed to a subscription so far has been handled."""
        await asyncio.wait_for(
            asyncio.gather(*(sub.join() for sub, _ in self._subscriptions)), timeout
        )

    async def close(self, timeout: float | None = None) -> None:
        """Stop intake, wait for handlers up to ``timeout`` (:attr:`drain_timeout`), disconnect.

        Idempotent; publishing afterwards raises :class:`ClosedError`.
        """
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        self._closing = asyncio.get_running_loop().create_future()
        self._state = "closing"
        self._runtime = {}  # publish raises ClosedError from here on
        try:
            for _sub, handle in self._subscriptions:
                await _quietly(handle.close())
            try:
                await self.join(self.drain_timeout if timeout is None else timeout)
            except asyncio.TimeoutError:
                log.warning("handlers still running after the drain timeout; cancelling them")
            for sub, _handle in self._subscriptions:
                await sub.stop()
            for driver in reversed(self._started_drivers):
                await _quietly(driver.close())
        finally:
            self._subscriptions.clear()
            self._started_drivers.clear()
            self._state = "closed"
            self._closing.set_result(None)

    async def __aenter__(self) -> Registry:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- publishing --------------------------------------------------------------------

    async def publish(
        self,
        broker: str,
        topic: str,
        payload: Any,
        headers: Mapping[str, Any] | None = None,
        codec: Codec | str | None = None,
    ) -> str:
        """Encode ``payload`` and publish it on ``topic``; return the message id."""
        runtime = self._runtime.get(broker) or self._not_running(broker)
        if topic not in runtime.valid_topics:
            self._validate_topic(runtime, topic)
        use = runtime.codec if codec is None else _codec(codec, "publish: codec")
        head = {**headers, "content-type": use.name} if headers else {"content-type": use.name}
        local = runtime.local
        if local is not None and use is JSON:
            fits = JSON.reusable_tests.get(type(payload), _UNKNOWN)
            if fits is _UNKNOWN:
                fits = JSON.reusable(type(payload))
            if fits is not None and fits(payload):
                # In process, a value that decodes back into itself travels as its Message.
                message = Message(new_id(), topic, payload, head, now())
                rest = local.deliver(topic, message)  # raises only ClosedError
                if rest is not None:
                    await rest
                return message.id
        data = use.encode(payload)
        envelope = Envelope(new_id(), topic, data, head, now())
        try:
            await runtime.send(topic, envelope)
        except Exception as exc:
            error = _publish_error(broker, topic, exc)
            if error is exc:
                raise
            raise error from exc
        return envelope.id

    async def publish_raw(
        self, broker: str, topic: str, data: bytes, headers: Mapping[str, Any] | None = None
    ) -> str:
        """Publish ``data`` as it is (``application/octet-stream``); return the message id."""
        return await self.publish(broker, topic, data, headers, RAW)

    def _validate_topic(self, runtime: _BrokerRuntime, topic: str) -> None:
        validate_topic(topic, runtime.max_topic_length)
        if len(runtime.valid_topics) >= 4096:
            runtime.valid_topics.clear()
        runtime.valid_topics.add(topic)

    def _not_running(self, broker: str) -> typing.NoReturn:
        if self._state in ("closing", "closed"):
            raise ClosedError(f"registry is closed: cannot publish to broker {broker!r}")
        if broker not in self._brokers:
            raise BrokerNotFoundError(_unknown_broker(broker, self._brokers))
        raise MessageError(
            f"registry is not started: `await registry.start()` (or `async with registry:`) "
            f"before publishing to broker {broker!r}"
        )


def _publish_chain(
    middlewares: Sequence[PublishMiddleware], runtime: _BrokerRuntime
) -> PublishNext:
    driver_publish = runtime.driver.publish
    hooks = runtime.hooks
    name = runtime.name

    async def send(topic: str, envelope: Envelope) -> None:
        try:
            await driver_publish(topic, envelope)
        except Exception as exc:
            error = _publish_error(name, topic, exc)
            await hooks.published(PublishEvent(name, topic, envelope, error))
            raise error from exc
        await hooks.published(PublishEvent(name, topic, envelope))

    # Without publish hooks the driver is called directly; Registry.publish wraps errors.
    call: PublishNext = send if hooks.on_publish else driver_publish
    for middleware in reversed(middlewares):
        call = _publish_link(middleware, call)
    return call


def _publish_error(broker: str, topic: str, exc: Exception) -> MessageError:
    if isinstance(exc, MessageError):
        return exc
    error = PublishError(f"publish to broker {broker!r}, topic {topic!r} failed: {exc}")
    error.__cause__ = exc
    return error


def _publish_link(middleware: PublishMiddleware, call_next: PublishNext) -> PublishNext:
    def step(topic: str, envelope: Envelope) -> Awaitable[None]:
        return middleware(topic, envelope, call_next)

    return step


class Broker:
    """A broker bound by name: the registry's methods without the broker argument."""

    __slots__ = ("name", "registry")

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name

    def __repr__(self) -> str:
        return f"<Broker {self.name!r}>"

    # Not `async def`: the registry's coroutine is returned as it is, one frame less.
    def publish(
        self,
        topic: str,
        payload: Any,
        headers: Mapping[str, Any] | None = None,
        codec: Codec | str | None = None,
    ) -> Coroutine[Any, Any, str]:
        """Publish on this broker (await it); see :meth:`Registry.publish`."""
        return self.registry.publish(self.name, topic, payload, headers, codec)

    def publish_raw(
        self, topic: str, data: bytes, headers: Mapping[str, Any] | None = None
    ) -> Coroutine[Any, Any, str]:
        """Publish bytes on this broker (await it); see :meth:`Registry.publish_raw`."""
        return self.registry.publish_raw(self.name, topic, data, headers)

    def subscribe(self, topic: str, handler: Any = None, **options: Any) -> Any:
        """Subscribe on this broker; see :meth:`Registry.subscribe`."""
        return self.registry.subscribe(self.name, topic, handler, **options)

    def use(self, *middlewares: Middleware) -> None:
        """Add subscribe middleware to this broker."""
        self.registry.use(self.name, *middlewares)

    def use_publish(self, *middlewares: PublishMiddleware) -> None:
        """Add publish middleware to this broker."""
        self.registry.use_publish(self.name, *middlewares)

    def on_error(self, hook: ErrorHook) -> None:
        """Add an error hook to this broker."""
        self.registry.on_error(self.name, hook)

    def on_publish(self, hook: PublishHook) -> None:
        """Add a publish hook to this broker."""
        self.registry.on_publish(self.name, hook)

    def info(self) -> BrokerInfo:
        """This broker's :class:`BrokerInfo`."""
        return next(info for info in self.registry.info() if info.name == self.name)


def _codec(codec: Codec | str, where: str) -> Codec:
    if not isinstance(codec, str):
        return codec
    found = CODECS.get(codec)
    if found is None:
        raise ConfigError(
            f"{where}: unknown codec {codec!r}; use 'json', 'raw', a content type of those, "
            "or pass a Codec object"
        )
    return found


def _payload_type(handler: Callable[..., Any]) -> tuple[Any, bool]:
    """The payload type from the handler's annotation, and whether it wants the Envelope."""
    plain = inspect.isfunction(handler) or inspect.ismethod(handler)
    target = handler if plain else type(handler).__call__
    try:
        params = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return Any, False
    if not params:
        raise MessageError(
            f"handler {_qualified_name(handler)} takes no argument: it must accept the message"
        )
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise MessageError(
            f"cannot resolve the annotations of handler {_qualified_name(handler)} ({exc}): "
            "pass payload=<type> to subscribe"
        ) from None
    annotation = hints.get(params[0].name, Any)
    if annotation is Envelope:
        return Any, True
    if annotation is Any or annotation is Message:
        return Any, False
    if typing.get_origin(annotation) is Message:
        (argument,) = typing.get_args(annotation)
        return argument, False
    raise MessageError(
        f"handler {_qualified_name(handler)} annotates its message as {annotation!r}: use "
        "Message[YourType] (or Envelope for the raw envelope), or pass payload=<type>"
    )


def _qualified_name(handler: Callable[..., Any]) -> str:
    module = getattr(handler, "__module__", None) or "?"
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}.{name}"


def _unknown_broker(name: str, brokers: Iterable[str]) -> str:
    known = sorted(brokers)
    text = f"broker {name!r} is not registered; registered brokers: {', '.join(known)}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        text += f"; did you mean {close[0]!r}"
    return text + f"? Register it with registry.broker({name!r}, driver=...)"


def _raise_first(problems: Sequence[MessageError]) -> None:
    if not problems:
        return
    first = problems[0]
    if len(problems) == 1:
        raise first
    text = "; ".join(str(problem) for problem in problems)
    raise type(first)(f"{len(problems)} problems: {text}")


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("error while closing; continuing")
