"""Interop with Go runa services: the envelopes a Go service writes, on the Redis wire.

``go-envelopes.jsonl`` holds frames exactly as a Go service publishes them. Published raw on
``runa:message:<topic>`` they must arrive typed at a registry subscriber; what this driver
publishes, read raw, must carry the same fields with the same types.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis.asyncio as aioredis

from runa_message import wire
from runa_message.message import Envelope, Message
from runa_message.registry import Registry
from runa_message_redis import RedisDriver, driver

HERE = Path(__file__).resolve().parent
VECTORS = [
    HERE.parents[1] / "runa-message-core" / "tests" / "data" / "go-envelopes.jsonl",
    Path("/work/shared/wire/go-envelopes.jsonl"),
]
REDIS_URL = "redis://127.0.0.1:6379/0"
TIMEOUT = 5.0
GO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)\Z")

pytestmark = pytest.mark.broker


def _load() -> list[dict[str, Any]]:
    for path in VECTORS:
        if path.exists():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    raise AssertionError(f"go-envelopes.jsonl not found in {[str(p) for p in VECTORS]}")


GO = _load()


@attrs.frozen
class Notice:
    text: str


@attrs.frozen
class User:
    name: str


@attrs.frozen
class Payment:
    amount: float
    currency: str


#: The payload type a subscriber of each Go vector declares.
TYPES: dict[str, Any] = {
    "notice.created": Notice,
    "user.created": User,
    "order.paid": Payment,
}


def _expected_time(expect: dict[str, Any]) -> datetime:
    nanos = expect["created_at_unix_nano"]
    tz = timezone(timedelta(seconds=expect["created_at_utc_offset_seconds"]))
    utc = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=nanos // 1000)
    return utc.astimezone(tz)


@pytest.fixture
async def redis_driver() -> AsyncIterator[RedisDriver]:
    d = driver(url=REDIS_URL)
    yield d
    await d.close()


@pytest.mark.parametrize("vector", GO, ids=[v["name"] for v in GO])
async def test_go_frames_arrive_typed(
    vector: dict[str, Any], raw: aioredis.Redis, redis_driver: RedisDriver
) -> None:
    expect = vector["expect"]
    topic = expect["topic"]
    payload_type = TYPES.get(topic, bytes)
    got: asyncio.Queue[Message[Any]] = asyncio.Queue()

    async def handler(message: Message[Any]) -> None:
        if message.id == expect["id"]:  # the shared server may carry other tests' messages
            await got.put(message)

    registry = Registry()
    registry.register_driver("redis", redis_driver)
    registry.broker("go", driver="redis")
    registry.subscribe("go", topic, handler, payload=payload_type)
    async with registry:
        await raw.publish(f"runa:message:{topic}", vector["wire"].encode())
        message = await asyncio.wait_for(got.get(), TIMEOUT)
    assert message.topic == topic
    assert dict(message.headers) == (expect["headers"] or {})
    body = b64decode(expect["payload_base64"])
    if payload_type is bytes:
        assert message.payload == body
    else:
        assert isinstance(message.payload, payload_type)
        assert attrs.asdict(message.payload) == json.loads(body)
    assert message.created_at == _expected_time(expect)
    assert message.created_at.utcoffset() == timedelta(
        seconds=expect["created_at_utc_offset_seconds"]
    )


async def test_go_frames_reach_a_wildcard_subscriber(
    raw: aioredis.Redis, redis_driver: RedisDriver
) -> None:
    """``device/1:status`` (Go's separators as published) reaches ``device.*.status``."""
    vector = next(v for v in GO if v["expect"]["topic"] == "device/1:status")
    got: asyncio.Queue[Envelope] = asyncio.Queue()

    async def handler(envelope: Envelope) -> None:
        if envelope.id == vector["expect"]["id"]:
            await got.put(envelope)

    registry = Registry()
    registry.register_driver("redis", redis_driver)
    registry.broker("go", driver="redis")
    registry.subscribe("go", "device.*.status", handler)
    async with registry:
        await raw.publish("runa:message:device/1:status", vector["wire"].encode())
        envelope = await asyncio.wait_for(got.get(), TIMEOUT)
    assert envelope.topic == "device/1:status"
    assert envelope.payload == bytes([0, 1, 2, 0xFD, 0xFE, 0xFF])


def _types(frame: dict[str, Any]) -> dict[str, str]:
    return {key: type(value).__name__ for key, value in frame.items()}


@pytest.mark.parametrize("vector", GO, ids=[v["name"] for v in GO])
async def test_what_python_publishes_has_the_go_fields_and_types(
    vector: dict[str, Any], raw: aioredis.Redis, redis_driver: RedisDriver
) -> None:
    go_frame = json.loads(vector["wire"])
    mine = wire.decode(vector["wire"].encode())  # the same envelope, published by Python
    channel = f"runa:message:{mine.topic}"
    pubsub = raw.pubsub()
    await pubsub.subscribe(channel)
    try:
        await asyncio.wait_for(pubsub.get_message(timeout=TIMEOUT), TIMEOUT)  # confirmation
        await redis_driver.start()
        await redis_driver.publish(mine.topic, mine)
        while True:
            message = await asyncio.wait_for(
                pubsub.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT), TIMEOUT
            )
            assert message is not None
            frame = json.loads(message["data"])
            if frame.get("id") == mine.id:
                break
    finally:
        await pubsub.aclose()
    assert message["channel"] == channel.encode()
    assert set(frame) == set(go_frame)
    assert _types(frame) == _types(go_frame)
    assert {k: v for k, v in frame.items() if k != "created_at"} == {
        k: v for k, v in go_frame.items() if k != "created_at"
    }
    assert GO_TIME.match(frame["created_at"]), frame["created_at"]
    assert wire.parse_time(frame["created_at"]) == wire.parse_time(go_frame["created_at"])


async def test_registry_publish_reads_like_go(
    raw: aioredis.Redis, redis_driver: RedisDriver
) -> None:
    """A typed publish through the registry: the fields and types a Go service expects."""
    topic = f"interop{uuid.uuid4().hex[:8]}.created"
    go_frame = json.loads(GO[0]["wire"])
    pubsub = raw.pubsub()
    await pubsub.subscribe(f"runa:message:{topic}")
    registry = Registry()
    registry.register_driver("redis", redis_driver)
    registry.broker("go", driver="redis")
    try:
        await asyncio.wait_for(pubsub.get_message(timeout=TIMEOUT), TIMEOUT)
        async with registry:
            sent = await registry.publish("go", topic, Notice(text="hello"), headers={"n": 1})
        message = await asyncio.wait_for(
            pubsub.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT), TIMEOUT
        )
    finally:
        await pubsub.aclose()
    assert message is not None
    frame = json.loads(message["data"])
    assert set(frame) == set(go_frame)
    assert _types(frame) == _types(go_frame)
    assert frame["id"] == sent
    assert frame["topic"] == topic
    assert json.loads(b64decode(frame["payload"])) == {"text": "hello"}
    assert frame["headers"] == {"n": 1, "content-type": "application/json"}
    assert GO_TIME.match(frame["created_at"]), frame["created_at"]
