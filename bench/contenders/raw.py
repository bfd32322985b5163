"""The broker's own client library, used directly: the floor a pub/sub layer adds cost to.

Messages are ``orjson`` bytes of a plain dict and are parsed back into a dict (untyped).
Each contender does what a careful user of that client would write:

- Redis (redis-py asyncio): ``PUBLISH`` per message; the concurrent workload sends each
  task's messages in one pipeline. One pub/sub connection; k subscriptions on the same
  channel are k in-process callbacks (Redis delivers a channel once per connection).
- NATS (nats-py): ``publish`` (buffered by the client) and k ``subscribe`` calls.
- AMQP (aio-pika): a topic exchange, a channel with the shared publisher-confirm setting,
  one exclusive queue per subscription, manual ack after the handler, the shared prefetch.
- MQTT (paho-mqtt 2.x): its own network thread (``loop_start``), the shared QoS; k
  subscriptions on one filter are k in-process callbacks (one client, one filter).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from . import (
    ENDPOINTS,
    Contender,
    Plan,
    Publisher,
    Sink,
    message_dict,
    shared_settings,
    stacked,
    url,
)

__all__ = ["RAW"]

_dumps = orjson.dumps
_loads = orjson.loads


# -- Redis ---------------------------------------------------------------------------------


class _RedisPublisher(Publisher):
    def __init__(self, client: Any, channel: str) -> None:
        self._client = client
        self._publish = client.publish
        self._channel = channel

    async def publish(self, i: int) -> None:
        await self._publish(self._channel, _dumps(message_dict(i)))

    async def publish_chunk(self, ids: Sequence[int]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.publish(self._channel, _dumps(message_dict(i)))
            await pipe.execute()


async def _redis_reader(pubsub: Any, copies: int, hit: Any) -> None:
    async for item in pubsub.listen():
        data = item["data"]
        for _ in range(copies):
            hit(_loads(data)["id"])


class RawRedis(Contender):
    """redis-py (asyncio)."""

    family = "raw"
    requires = ("redis",)

    @property
    def label(self) -> str:
        return "redis-py"

    @contextlib.asynccontextmanager
    async def session(self, plan: Plan, sink: Sink) -> AsyncIterator[Publisher]:
        import redis.asyncio as aioredis

        async with stacked() as stack:
            sub = aioredis.Redis.from_url(url(self.broker))
            stack.push(sub.aclose)
            pubsub = sub.pubsub(ignore_subscribe_messages=True)
            stack.push(pubsub.aclose)
            for pattern, wildcard in [(plan.pattern(), plan.wildcard), *plan.decoy_patterns()]:
                if wildcard:
                    await pubsub.psubscribe(pattern)
                else:
                    await pubsub.subscribe(pattern)
            task = asyncio.create_task(_redis_reader(pubsub, plan.subscriptions, sink.hit))
            stack.push(lambda: _cancel(task))
            pub = aioredis.Redis.from_url(url(self.broker))
            stack.push(pub.aclose)
            # Open the pool's connections now (the concurrent workload uses up to 100 at
            # once): connecting is setup, not publishing.
            await asyncio.gather(*(pub.ping() for _ in range(100)))
            yield _RedisPublisher(pub, plan.publish_topic)


# -- NATS ----------------------------------------------------------------------------------


class _NatsPublisher(Publisher):
    def __init__(self, client: Any, subject: str) -> None:
        self._publish = client.publish
        self._subject = subject

    async def publish(self, i: int) -> None:
        await self._publish(self._subject, _dumps(message_dict(i)))


class RawNats(Contender):
    """nats-py, core NATS."""

    family = "raw"
    requires = ("nats",)

    @property
    def label(self) -> str:
        return "nats-py"

    @contextlib.asynccontextmanager
    async def session(self, plan: Plan, sink: Sink) -> AsyncIterator[Publisher]:
        import nats

        hit = sink.hit

        async def on_message(msg: Any) -> None:
            hit(_loads(msg.data)["id"])

        async with stacked() as stack:
            sub = await nats.connect(url(self.broker))
            stack.push(sub.close)
            patterns = [plan.pattern()] * plan.subscriptions
            for pattern in [*patterns, *(p for p, _ in plan.decoy_patterns())]:
                await sub.subscribe(pattern, cb=on_message)
            await sub.flush()
            pub = await nats.connect(url(self.broker))
            stack.push(pub.close)
            yield _NatsPublisher(pub, plan.publish_topic)


# -- AMQP ----------------------------------------------------------------------------------


class _AmqpPublisher(Publisher):
    def __init__(self, exchange: Any, routing_key: str, persistent: bool) -> None:
        import aio_pika

        self._message = aio_pika.Message
        self._mode = (
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        self._publish = exchange.publish
        self._routing_key = routing_key

    async def publish(self, i: int) -> None:
        await self._publish(
            self._message(
                _dumps(message_dict(i)), content_type="application/json", delivery_mode=self._mode
            ),
            routing_key=self._routing_key,
        )


class RawAmqp(Contender):
    """aio-pika."""

    family = "raw"
    requires = ("aio_pika",)

    @property
    def label(self) -> str:
        return "aio-pika"

    def settings(self) -> dict[str, Any]:
        return shared_settings(self.broker)

    @contextlib.asynccontextmanager
    async def session(self, plan: Plan, sink: Sink) -> AsyncIterator[Publisher]:
        import aio_pika

        shared = shared_settings(self.broker)
        name = f"bench.raw.{uuid.uuid4().hex[:8]}"
        hit = sink.hit

        async def on_message(message: Any) -> None:
            hit(_loads(message.body)["id"])
            await message.ack()

        async with stacked() as stack:
            pub = await aio_pika.connect(url(self.broker))
            stack.push(pub.close)
            pub_channel = await pub.channel(publisher_confirms=shared["publisher_confirms"])
            exchange = await pub_channel.declare_exchange(
                name, aio_pika.ExchangeType.TOPIC, auto_delete=True
            )
            sub = await aio_pika.connect(url(self.broker))
            stack.push(sub.close)
            sub_channel = await sub.channel()
            await sub_channel.set_qos(prefetch_count=shared["prefetch"])
            patterns = [plan.pattern()] * plan.subscriptions
            for pattern in [*patterns, *(p for p, _ in plan.decoy_patterns())]:
                queue = await sub_channel.declare_queue(exclusive=True, auto_delete=True)
                await queue.bind(name, routing_key=pattern)
                await queue.consume(on_message)
            yield _AmqpPublisher(exchange, plan.publish_topic, shared["persistent_messages"])


# -- MQTT ----------------------------------------------------------------------------------


class _PahoPublisher(Publisher):
    def __init__(self, client: Any, topic: str, qos: int) -> None:
        self._publish = client.publish
        self._topic = topic
        self._qos = qos

    async def publish(self, i: int) -> None:
        self._publish(self._topic, _dumps(message_dict(i)), self._qos)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


async def _paho_client(stack: Any) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    loop = asyncio.get_running_loop()
    version = str(shared_settings("mqtt")["version"])
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-raw-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5 if version.startswith("5") else mqtt.MQTTv311,
    )
    connected: asyncio.Future[Any] = loop.create_future()

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        loop.call_soon_threadsafe(_resolve, connected, rc)

    client.on_connect = on_connect
    host, port = ENDPOINTS["mqtt"]
    await asyncio.to_thread(client.connect, host, port)
    client.loop_start()

    async def close() -> None:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    stack.push(close)
    code = await asyncio.wait_for(connected, 10)
    if code.is_failure:
        raise ConnectionError(f"MQTT connect refused: {code}")
    return client


class RawMqtt(Contender):
    """paho-mqtt 2.x with its network thread."""

    family = "raw"
    requires = ("paho.mqtt.client",)

    @property
    def label(self) -> str:
        return "paho-mqtt"

    def settings(self) -> dict[str, Any]:
        return shared_settings(self.broker)

    @contextlib.asynccontextmanager
    async def session(self, plan: Plan, sink: Sink) -> AsyncIterator[Publisher]:
        qos = int(shared_settings(self.broker)["qos"])
        loop = asyncio.get_running_loop()
        hit = sink.hit_from_thread
        copies = plan.subscriptions

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            data = msg.payload
            for _ in range(copies):
                hit(_loads(data)["id"])

        async with stacked() as stack:
            sub = await _paho_client(stack)
            sub.on_message = on_message
            subscribed: asyncio.Future[Any] = loop.create_future()
            sub.on_subscribe = lambda c, u, mid, codes, props: loop.call_soon_threadsafe(
                _resolve, subscribed, codes
            )
            filters = [(plan.pattern(), qos), *((p, qos) for p, _ in plan.decoy_patterns())]
            sub.subscribe(filters)  # one SUBSCRIBE packet, one SUBACK
            await asyncio.wait_for(subscribed, 10)
            pub = await _paho_client(stack)
            yield _PahoPublisher(pub, plan.publish_topic, qos)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


RAW: dict[str, type[Contender]] = {
    "redis": RawRedis,
    "nats": RawNats,
    "amqp": RawAmqp,
    "mqtt": RawMqtt,
}
