"""Interoperability with Go runa services on RabbitMQ, through the default exchange ``runa.message``.

Go's AMQP driver publishes the frame JSON to the durable topic exchange ``runa.message`` with
the topic as routing key, content type ``application/json``, delivery mode 2 and the
message id. These tests put the Go vectors on the wire exactly like that and check what a
registry subscriber gets, then read what this driver publishes and compare it with them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aio_pika
import attrs
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

import runa_message as message
from runa_message import wire
from runa_message_amqp import AmqpDriver

pytestmark = pytest.mark.broker

_CORE_DATA = Path(__file__).parents[2] / "runa-message-core" / "tests" / "data"
_SHARED = Path(__file__).parents[3] / "shared" / "wire"
VECTORS_FILE = next(
    (
        folder / "go-envelopes.jsonl"
        for folder in (_CORE_DATA, _SHARED)
        if (folder / "go-envelopes.jsonl").is_file()
    ),
    _CORE_DATA / "go-envelopes.jsonl",
)
VECTORS = [json.loads(line) for line in VECTORS_FILE.read_text().splitlines() if line.strip()]
EXCHANGE = "runa.message"
URL = "amqp://guest:guest@127.0.0.1:5672/"
WAIT = 10.0


@attrs.frozen
class Notice:
    text: str


@attrs.frozen
class Person:
    name: str


@attrs.frozen
class Payment:
    amount: float
    currency: str


#: What each vector's payload becomes for a handler typed ``Message[T]``.
TYPED: dict[str, tuple[Any, Any]] = {
    "json-payload": (Notice, Notice(text="hello")),
    "raw-payload": (bytes, b"plain text"),
    "empty-payload-no-headers": (bytes, b""),
    "html-and-unicode": (Person, Person(name="<Zoë & 张>")),
    "zone-offset": (Payment, Payment(amount=12.5, currency="EUR")),
    "binary-payload": (bytes, bytes([0, 1, 2, 253, 254, 255])),
}


def _unix_nano(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


@pytest.fixture
async def default_names(admin: AbstractConnection) -> AsyncIterator[None]:
    """Delete, afterwards, the default exchange and dead-letter names if this test made them."""
    probe = await admin.channel()
    made = []
    # In the order they can be deleted: the queue is bound to the dead-letter exchange.
    for kind, name in (
        ("queue", f"{EXCHANGE}.dead-letter"),
        ("exchange", f"{EXCHANGE}.dlx"),
        ("exchange", EXCHANGE),
    ):
        try:
            if kind == "exchange":
                await probe.declare_exchange(name, passive=True)
            else:
                await probe.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            made.append((kind, name))
            probe = await admin.channel()
    await probe.close()
    try:
        yield
    finally:
        channel = await admin.channel()
        for kind, name in made:
            with contextlib.suppress(Exception):
                if kind == "exchange":
                    await channel.exchange_delete(name, if_unused=True)
                else:
                    await channel.queue_delete(name, if_empty=True)
            if channel.is_closed:
                channel = await admin.channel()
        await channel.close()


def test_the_vectors_are_there() -> None:
    assert {vector["name"] for vector in VECTORS} == set(TYPED)


async def test_go_envelopes_arrive_typed(default_names: None, admin: AbstractConnection) -> None:
    registry = message.Registry()
    registry.register_driver("amqp", AmqpDriver(url=URL))
    registry.broker("go", driver="amqp")
    received: dict[str, asyncio.Queue[message.Message[Any]]] = {}
    for vector in VECTORS:
        name = vector["name"]
        type_, _ = TYPED[name]
        inbox: asyncio.Queue[message.Message[Any]] = asyncio.Queue()
        received[name] = inbox
        registry.subscribe(
            "go", vector["expect"]["topic"], inbox.put, payload=type_, consumer=f"go-{name}"
        )
    async with registry:
        channel = await admin.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        for vector in VECTORS:
            expect = vector["expect"]
            # Exactly what Go's driver sends: the topic as written is the routing key.
            await exchange.publish(
                aio_pika.Message(
                    vector["wire"].encode(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=expect["id"],
                ),
                routing_key=expect["topic"],
            )
        for vector in VECTORS:
            name, expect = vector["name"], vector["expect"]
            got = await asyncio.wait_for(received[name].get(), WAIT)
            assert got.id == expect["id"], name
            assert got.topic == expect["topic"], name
            assert got.payload == TYPED[name][1], name
            assert dict(got.headers) == (expect["headers"] or {}), name
            assert _unix_nano(got.created_at) == expect["created_at_unix_nano"] // 1000 * 1000
            assert got.created_at.utcoffset() == timedelta(
                seconds=expect["created_at_utc_offset_seconds"]
            )
        await channel.close()


class RawReader:
    """A queue bound to the default exchange, read with aio-pika only."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def on_message(self, incoming: AbstractIncomingMessage) -> None:
        await incoming.ack()
        await self.messages.put(incoming)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
async def test_what_we_publish_looks_like_go(
    vector: dict[str, Any], default_names: None, admin: AbstractConnection
) -> None:
    go = json.loads(vector["wire"])
    expect = vector["expect"]
    channel = await admin.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    routing_key = expect["topic"].replace("/", ".").replace(":", ".")
    await queue.bind(exchange, routing_key)
    reader = RawReader()
    await queue.consume(reader.on_message)
    amqp = AmqpDriver(url=URL)
    await amqp.start()
    try:
        envelope = message.Envelope(
            expect["id"],
            expect["topic"],
            base64.b64decode(expect["payload_base64"]),
            expect["headers"] or {},
            wire.decode(vector["wire"].encode()).created_at,
        )
        await amqp.publish(expect["topic"], envelope)
        raw = await asyncio.wait_for(reader.messages.get(), WAIT)
    finally:
        await amqp.close()
        await channel.close()
    ours = json.loads(raw.body)
    assert ours.keys() == go.keys()
    for key, value in go.items():
        assert type(ours[key]) is type(value), key
    assert ours["payload"] == go["payload"]
    assert ours.get("headers") == go.get("headers")
    assert wire.parse_time(ours["created_at"]) == wire.parse_time(go["created_at"])
    # The AMQP properties Go's driver sets.
    assert raw.content_type == "application/json"
    assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert raw.message_id == expect["id"]
    assert raw.routing_key == routing_key
