"""FastStream, tuned as a careful user would: per-message logging off (``logger=None``).

The subscriber is typed the FastStream way, a pydantic model as the handler's argument,
validated by FastDepends; the publisher publishes that model. The publisher and the
subscribers are two broker objects (two services). Delivery settings follow runa's
defaults (:func:`~bench.contenders.shared_settings`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import Contender, Plan, Publisher, Sink, shared_settings, stacked, url

__all__ = ["FASTSTREAM"]


def _model() -> Any:
    from pydantic import BaseModel

    class Payload(BaseModel):
        id: int
        text: str

    return Payload


_PAYLOAD: Any = None


def payload_model() -> Any:
    """The pydantic model of the benchmark message (made once, on first use)."""
    global _PAYLOAD
    if _PAYLOAD is None:
        _PAYLOAD = _model()
    return _PAYLOAD


def _handler(sink: Sink) -> Callable[..., Any]:
    hit = sink.hit
    model = payload_model()

    async def handle(body: Any) -> None:
        hit(body.id)

    # FastDepends reads the annotation: the pydantic model, made at run time.
    handle.__annotations__ = {"body": model, "return": None}
    return handle


class _FSPublisher(Publisher):
    def __init__(self, publish: Callable[..., Any], target: str, **options: Any) -> None:
        self._publish = publish
        self._target = target
        self._options = options
        self._model = payload_model()

    async def publish(self, i: int) -> None:
        await self._publish(self._model(id=i, text="hello"), self._target, **self._options)


class _FastStream(Contender):
    family = "faststream"
    module: str

    @property
    def label(self) -> str:
        return "faststream"

    def _broker(self, **options: Any) -> Any:
        raise NotImplementedError

    def _subscribe(
        self, broker: Any, pattern: str, wildcard: bool, name: str, handler: Any
    ) -> None:
        broker.subscriber(pattern)(handler)

    def _publisher(self, broker: Any, plan: Plan) -> Publisher:
        return _FSPublisher(broker.publish, plan.publish_topic)

    def _subscriber_brokers(self, plan: Plan) -> int:
        """How many broker objects carry the subscriptions (one, unless one cannot)."""
        return 1

    @contextlib.asynccontextmanager
    async def session(self, plan: Plan, sink: Sink) -> AsyncIterator[Publisher]:
        async with stacked() as stack:
            count = self._subscriber_brokers(plan)
            subscribers = [self._broker() for _ in range(count)]
            for j in range(plan.subscriptions):
                self._subscribe(
                    subscribers[j % count],
                    plan.pattern(),
                    plan.wildcard,
                    f"{plan.topic}.q{j}",
                    _handler(sink),
                )
            for j, (pattern, wildcard) in enumerate(plan.decoy_patterns()):
                self._subscribe(
                    subscribers[0], pattern, wildcard, f"{plan.topic}.decoy{j}", _handler(sink)
                )
            for broker in subscribers:
                await broker.start()
                stack.push(broker.stop)
            publisher = self._broker()
            await publisher.start()
            stack.push(publisher.stop)
            yield self._publisher(publisher, plan)


class FastStreamRedis(_FastStream):
    """FastStream ``RedisBroker`` on Redis pub/sub channels."""

    requires = ("faststream.redis",)

    def _broker(self, **options: Any) -> Any:
        from faststream.redis import RedisBroker

        return RedisBroker(url(self.broker), logger=None, **options)  # type: ignore[arg-type]

    def _subscribe(
        self, broker: Any, pattern: str, wildcard: bool, name: str, handler: Any
    ) -> None:
        from faststream.redis import PubSub

        broker.subscriber(PubSub(pattern, pattern=wildcard))(handler)


class FastStreamNats(_FastStream):
    """FastStream ``NatsBroker`` on core NATS subjects."""

    requires = ("faststream.nats",)

    def _broker(self, **options: Any) -> Any:
        from faststream.nats import NatsBroker

        return NatsBroker(url(self.broker), logger=None, **options)


class FastStreamRabbit(_FastStream):
    """FastStream ``RabbitBroker``: a topic exchange, one auto-delete queue per subscription."""

    requires = ("faststream.rabbit",)

    def __init__(self, broker: str) -> None:
        super().__init__(broker)
        self._exchange = f"bench.faststream.{uuid.uuid4().hex[:8]}"

    def settings(self) -> dict[str, Any]:
        return shared_settings(self.broker)

    def _broker(self, **options: Any) -> Any:
        from faststream.rabbit import Channel, RabbitBroker

        shared = shared_settings(self.broker)
        channel = Channel(
            prefetch_count=shared["prefetch"], publisher_confirms=shared["publisher_confirms"]
        )
        return RabbitBroker(url(self.broker), logger=None, default_channel=channel, **options)

    def _exchange_schema(self) -> Any:
        from faststream.rabbit import ExchangeType, RabbitExchange

        return RabbitExchange(self._exchange, type=ExchangeType.TOPIC, auto_delete=True)

    def _subscribe(
        self, broker: Any, pattern: str, wildcard: bool, name: str, handler: Any
    ) -> None:
        from faststream.rabbit import RabbitQueue

        queue = RabbitQueue(f"{name}.faststream", auto_delete=True, routing_key=pattern)
        broker.subscriber(queue, self._exchange_schema())(handler)

    def _publisher(self, broker: Any, plan: Plan) -> Publisher:
        shared = shared_settings(self.broker)
        return _FSPublisher(
            _rabbit_publish(broker, self._exchange_schema()),
            plan.publish_topic,
            persist=shared["persistent_messages"],
        )


def _rabbit_publish(broker: Any, exchange: Any) -> Callable[..., Any]:
    async def publish(message: Any, routing_key: str, **options: Any) -> None:
        await broker.publish(message, exchange=exchange, routing_key=routing_key, **options)

    return publish


class FastStreamMQTT(_FastStream):
    """FastStream ``MQTTBroker`` (zmqtt). One handler per topic filter per client, so
    fan-out to k subscriptions takes k subscriber brokers (k connections)."""

    requires = ("faststream.mqtt",)

    def settings(self) -> dict[str, Any]:
        return shared_settings(self.broker)

    def _qos(self) -> Any:
        from faststream.mqtt import QoS

        return QoS(shared_settings(self.broker)["qos"])

    def _broker(self, **options: Any) -> Any:
        from faststream.mqtt import MQTTBroker

        setting = str(shared_settings(self.broker)["version"])
        version: Any = "5.0" if setting.startswith("5") else setting
        return MQTTBroker(url(self.broker), logger=None, version=version, **options)

    def _subscriber_brokers(self, plan: Plan) -> int:
        return plan.subscriptions

    def _subscribe(
        self, broker: Any, pattern: str, wildcard: bool, name: str, handler: Any
    ) -> None:
        broker.subscriber(pattern, qos=self._qos())(handler)

    def _publisher(self, broker: Any, plan: Plan) -> Publisher:
        return _FSPublisher(broker.publish, plan.publish_topic, qos=self._qos())


FASTSTREAM: dict[str, type[_FastStream]] = {
    "redis": FastStreamRedis,
    "nats": FastStreamNats,
    "amqp": FastStreamRabbit,
    "mqtt": FastStreamMQTT,
}
