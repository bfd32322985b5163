"""Interop with Go runa services: Go's frames arrive typed; ours carry Go's fields and types."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

import runa_message as message
from runa_message_nats import driver
from runa_message_nats.driver import subject_of

pytestmark = pytest.mark.broker

_CORE_VECTORS = Path(__file__).parents[2] / "runa-message-core" / "tests" / "data"
_SHARED_VECTORS = Path(__file__).parents[3] / "shared" / "wire"


def _vectors() -> list[dict[str, Any]]:
    for folder in (_CORE_VECTORS, _SHARED_VECTORS):
        path = folder / "go-envelopes.jsonl"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
    raise AssertionError(f"go-envelopes.jsonl not found in {_CORE_VECTORS} or {_SHARED_VECTORS}")


VECTORS = _vectors()
PREFIX = "runa.message."
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")


@dataclass
class Notice:
    text: str


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[nats.aio.client.Client]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


def test_vectors_are_there() -> None:
    assert len(VECTORS) >= 6


async def test_go_frames_arrive_typed(nats_url: str, raw: nats.aio.client.Client) -> None:
    registry = message.Registry()
    registry.register_driver("nats", driver(url=nats_url))
    registry.broker("go", driver="nats")
    arrived: dict[str, asyncio.Queue[message.Message[Any]]] = {}
    for vector in VECTORS:
        expect = vector["expect"]
        content_type = (expect["headers"] or {}).get("content-type")
        if content_type == "application/json":
            payload: Any = dict
        else:
            payload = bytes
        queue: asyncio.Queue[message.Message[Any]] = asyncio.Queue()
        arrived[vector["name"]] = queue
        registry.subscribe(
            "go",
            expect["topic"],
            queue.put,
            consumer=f"go-{vector['name']}",
            payload=payload,
            codec=None if content_type else "raw",
        )
    notices: asyncio.Queue[message.Message[Notice]] = asyncio.Queue()

    async def on_notice(msg: message.Message[Notice]) -> None:
        await notices.put(msg)

    registry.subscribe("go", "notice.created", on_notice, consumer="typed-notice")
    errors: list[message.ErrorEvent] = []
    registry.on_error(message.ALL, errors.append)
    async with registry:
        for vector in VECTORS:
            subject = subject_of(PREFIX, vector["expect"]["topic"])
            await raw.publish(subject, vector["wire"].encode())
        await raw.flush()
        for vector in VECTORS:
            expect = vector["expect"]
            msg = await _next_with_id(arrived[vector["name"]], expect["id"])
            assert msg.topic == expect["topic"]
            assert dict(msg.headers) == (expect["headers"] or {})
            body = base64.b64decode(expect["payload_base64"])
            if isinstance(msg.payload, dict):
                assert msg.payload == json.loads(body)
            else:
                assert msg.payload == body
            nanos = expect["created_at_unix_nano"]
            assert int(msg.created_at.timestamp()) == nanos // 1_000_000_000
            assert msg.created_at.microsecond == (nanos // 1000) % 1_000_000
            offset = msg.created_at.utcoffset()
            assert offset == timedelta(seconds=expect["created_at_utc_offset_seconds"])
        notice = await _next_with_id(notices, "msg-1")
        assert notice.payload == Notice(text="hello")
    assert not errors, errors


async def _next_with_id(queue: asyncio.Queue[Any], id_: str) -> Any:
    # The shared broker may carry other runs' copies; wait for this run's message.
    async def find() -> Any:
        while True:
            item = await queue.get()
            if item.id == id_:
                return item

    return await asyncio.wait_for(find(), 10)


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number",
            bool: "bool", type(None): "null"}[type(value)]  # fmt: skip


async def test_what_we_publish_has_the_go_fields_and_types(
    nats_url: str, raw: nats.aio.client.Client
) -> None:
    go = {vector["name"]: json.loads(vector["wire"]) for vector in VECTORS}
    go_types = {key: _json_type(value) for frame in go.values() for key, value in frame.items()
                if value is not None}  # fmt: skip
    registry = message.Registry()
    registry.register_driver("nats", driver(url=nats_url))
    registry.broker("py", driver="nats")
    topic = "interop.py/check:frame"
    sub = await raw.subscribe(subject_of(PREFIX, topic))
    await raw.flush()
    async with registry:
        sent_json = await registry.publish("py", topic, {"text": "hello"}, headers={"attempt": 2})
        sent_raw = await registry.publish_raw("py", topic, b"")
        frames = {}
        while len(frames) < 2:
            msg = await sub.next_msg(timeout=10)
            frame = json.loads(msg.data)
            frames[frame["id"]] = frame
    with_payload, empty = frames[sent_json], frames[sent_raw]
    for frame in (with_payload, empty):
        assert set(frame) <= {"id", "topic", "payload", "headers", "created_at"}
        assert {"id", "topic", "payload", "created_at"} <= set(frame)
        for key, value in frame.items():
            if value is not None:
                assert _json_type(value) == go_types[key], key
        assert frame["topic"] == topic
        assert RFC3339.match(frame["created_at"]), frame["created_at"]
    assert base64.b64decode(with_payload["payload"]) == b'{"text":"hello"}'
    assert with_payload["headers"] == {"attempt": 2, "content-type": "application/json"}
    assert empty["payload"] is None  # Go writes nil []byte as null
    assert empty["headers"] == {"content-type": "application/octet-stream"}
