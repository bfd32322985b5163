"""runa-message through its public API, on any driver by name.

The subscriber is typed: ``Message[Payload]`` with an attrs ``Payload``, decoded by the
registry. On a network broker the publisher and the subscribers live in two registries
(two services, as in production); on the memory driver they share one.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

import attrs

import runa_message as message
from runa_message import Message

from . import Contender, Plan, Publisher, Sink, stacked

__all__ = ["DRIVER_PACKAGES", "Payload", "RunaContender", "hold_subscriptions"]

#: The distribution import name behind each driver (for the "missing" reason).
DRIVER_PACKAGES = {
    "memory": "runa_message",
    "redis": "runa_message_redis",
    "nats": "runa_message_nats",
    "amqp": "runa_message_amqp",
    "mqtt": "runa_message_mqtt",
}


@attrs.frozen
class Payload:
    """The benchmark message, typed."""

    id: int
    text: str


class _RunaPublisher(Publisher):
    def __init__(self, broker: message.Broker, topic: str) -> None:
        self._publish = broker.publish
        self._topic = topic

    async def publish(self, i: int) -> None:
        await self._publish(self._topic, Payload(i, "hello"))


def _handler(sink: Sink) -> Any:
    hit = sink.hit

    async def handle(msg: Message[Payload]) -> None:
        hit(msg.payload.id)

    return handle


class RunaContender(Contender):
    """runa-message on ``broker`` through ``registry.broker(name, driver=broker)``."""

    family = "runa"

    def __init__(self, broker: str) -> None:
        super().__init__(broker)
        self.requires = ("runa_message", DRIVER_PACKAGES[broker])  # type: ignore[misc]

    def missing(self) -> str | None:
        reason = super().missing()
        if reason is not None:
            return reason
        if self.broker == "memory":
            return None
        # The driver must resolve by name (its plugin module and driver class exist).
        try:
            from runa_message import plugins

            plugins.create_driver(self.broker, self._driver_settings(), broker="bench")
        except Exception as exc:
            return f"driver {self.broker!r} does not load: {type(exc).__name__}: {exc}"
        return None

    def _driver_settings(self) -> dict[str, Any]:
        # Defaults point at the local broker; only an overridden port needs a URL.
        from . import ENDPOINTS, url

        if self.broker in ENDPOINTS and ENDPOINTS[self.broker][1] != _STANDARD_PORTS[self.broker]:
            return {"url": url(self.broker)}
        return {}

    def settings(self) -> dict[str, Any]:
        """The driver's default settings that matter for the comparison (qos, confirms)."""
        keys = {
            "amqp": ("publisher_confirms", "persistent_messages", "prefetch"),
            "mqtt": ("qos", "version"),
        }.get(self.broker, ())
        if not keys:
            return {}
        try:
            module = importlib.import_module(DRIVER_PACKAGES[self.broker])
            cls = next(getattr(module, name) for name in dir(module) if name.endswith("Settings"))
            defaults = cls()
        except Exception:
            return {}
        return {key: getattr(defaults, key) for key in keys if hasattr(defaults, key)}

    def _registry(self) -> message.Registry:
        registry = message.Registry()
        settings = self._driver_settings()
        if settings:
            registry.configure_driver(self.broker, **settings)
        return registry

    @contextlib.asynccontextmanager
    async def session(self, plan: Plan, sink: Sink) -> AsyncIterator[Publisher]:
        async with stacked() as stack:
            handle = _handler(sink)
            # runa spells topics the same on every driver: dots, "*".
            runa_plan = Plan("memory", plan.topic, plan.subscriptions, plan.wildcard, plan.decoys)
            sub_registry = self._registry()
            sub_broker = sub_registry.broker("bench", driver=self.broker)
            for j in range(plan.subscriptions):
                sub_broker.subscribe(runa_plan.pattern(), handle, consumer=f"bench-{j}")
            for j, (pattern, _) in enumerate(runa_plan.decoy_patterns()):
                sub_broker.subscribe(pattern, handle, consumer=f"decoy-{j}")
            if self.broker == "memory":
                pub_broker = sub_broker
            else:
                pub_registry = self._registry()
                pub_broker = pub_registry.broker("bench", driver=self.broker)
            await sub_registry.start()
            stack.push(sub_registry.close)
            if pub_broker is not sub_broker:
                await pub_broker.registry.start()
                stack.push(pub_broker.registry.close)
            yield _RunaPublisher(pub_broker, runa_plan.publish_topic)


_STANDARD_PORTS = {"redis": 6379, "nats": 4222, "amqp": 5672, "mqtt": 1883}


async def hold_subscriptions(count: int) -> Any:
    """Start a memory registry with ``count`` typed subscriptions; return what keeps them alive."""
    registry = message.Registry()

    async def handle(msg: Message[Payload]) -> None:
        pass

    for i in range(count):
        registry.subscribe("default", f"bench.memory.{i}", handle)
    await registry.start()
    return registry
