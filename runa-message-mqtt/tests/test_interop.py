"""Interop with Go runa services over MQTT.

Every Go vector, published raw with paho on ``runa/message/<topic>`` (topic mapped), arrives
typed at a registry subscriber; what the driver publishes, read raw, has the Go envelope's
fields and JSON types.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from mqtt_testkit import URL, RawClient, unique

import runa_message as message
from runa_message_mqtt import driver

pytestmark = pytest.mark.broker

_CORE_VECTORS = Path(__file__).parents[2] / "runa-message-core" / "tests" / "data"
_SHARED_VECTORS = Path(__file__).parents[3] / "shared" / "wire"
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")


def _vectors() -> list[dict[str, Any]]:
    for folder in (_CORE_VECTORS, _SHARED_VECTORS):
        path = folder / "go-envelopes.jsonl"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
    raise AssertionError(f"go-envelopes.jsonl not found in {_CORE_VECTORS} or {_SHARED_VECTORS}")


VECTORS = _vectors()


def mqtt_topic(topic: str, prefix: str = "runa/message/") -> str:
    """The MQTT topic a Go runa service publishes ``topic`` on."""
    return prefix + topic.replace(".", "/").replace(":", "/")


@dataclass
class Notice:
    text: str


def test_vectors_are_there() -> None:
    assert len(VECTORS) >= 6


async def test_go_frames_arrive_typed(raw: RawClient) -> None:
    registry = message.Registry()
    registry.register_driver("mqtt", driver(url=URL))
    registry.broker("go", driver="mqtt")
    arrived: dict[str, asyncio.Queue[message.Message[Any]]] = {}
    for vector in VECTORS:
        expect = vector["expect"]
        content_type = (expect["headers"] or {}).get("content-type")
        queue: asyncio.Queue[message.Message[Any]] = asyncio.Queue()
        arrived[vector["name"]] = queue
        registry.subscribe(
            "go",
            expect["topic"],
            queue.put,
            consumer=f"go-{vector['name']}",
            payload=dict if content_type == "application/json" else bytes,
            codec=None if content_type else "raw",
        )
    notices: asyncio.Queue[message.Message[Notice]] = asyncio.Queue()
    registry.subscribe("go", "notice.created", notices.put, consumer="typed", payload=Notice)
    async with registry:
        for vector in VECTORS:
            topic = vector["expect"]["topic"]
            await asyncio.to_thread(raw.publish, mqtt_topic(topic), vector["wire"].encode())
        for vector in VECTORS:
            expect = vector["expect"]
            got = await asyncio.wait_for(arrived[vector["name"]].get(), 10)
            assert got.id == expect["id"], vector["name"]
            assert got.topic == expect["topic"]
            assert dict(got.headers) == (expect["headers"] or {})
            body = base64.b64decode(expect["payload_base64"])
            content_type = (expect["headers"] or {}).get("content-type")
            if content_type == "application/json":
                assert got.payload == json.loads(body)
            else:
                assert got.payload == body
            nanos = expect["created_at_unix_nano"]
            offset = timedelta(seconds=expect["created_at_utc_offset_seconds"])
            assert got.created_at.utcoffset() == offset, "the Go offset is kept"
            epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
            assert got.created_at == epoch + timedelta(microseconds=nanos // 1000)
        notice = await asyncio.wait_for(notices.get(), 10)
        assert notice.payload == Notice(text="hello")


async def test_what_we_publish_reads_as_a_go_envelope(raw: RawClient) -> None:
    base = unique()
    raw.subscribe(mqtt_topic(base) + "/#")
    registry = message.Registry()
    registry.register_driver("mqtt", driver(url=URL))
    registry.broker("py", driver="mqtt")
    by_name = {vector["name"]: json.loads(vector["wire"]) for vector in VECTORS}
    async with registry:
        json_id = await registry.publish("py", f"{base}.notice.created", {"text": "hello"})
        raw_id = await registry.publish_raw("py", f"{base}.logs:raw", b"plain text")
        empty_id = await registry.publish_raw("py", f"{base}/ping", b"")
        frames = await asyncio.to_thread(raw.wait_for, 3)
    ours = {json.loads(m.payload)["id"]: (m.topic, json.loads(m.payload)) for m in frames}
    cases = [
        (json_id, f"{base}.notice.created", "json-payload"),
        (raw_id, f"{base}.logs:raw", "raw-payload"),
        (empty_id, f"{base}/ping", "empty-payload-no-headers"),
    ]
    for sent_id, topic, go_name in cases:
        mqtt_name, frame = ours[sent_id]
        go = by_name[go_name]
        assert mqtt_name == mqtt_topic(topic), "published on prefix + topic, levels mapped"
        assert frame["topic"] == topic, "the envelope carries the topic as published"
        expected_keys = set(go)
        if go_name == "empty-payload-no-headers":
            expected_keys.add("headers")  # ours says content-type; Go's vector has none
        assert set(frame) == expected_keys, f"{go_name}: fields {sorted(frame)}"
        for key in ("id", "topic", "created_at"):
            assert isinstance(frame[key], str)
        assert RFC3339.match(frame["created_at"]), frame["created_at"]
        assert isinstance(frame["headers"], dict)
        assert type(frame["payload"]) is type(go["payload"]), f"{go_name}: payload type"
    assert base64.b64decode(ours[raw_id][1]["payload"]) == b"plain text"
    assert json.loads(base64.b64decode(ours[json_id][1]["payload"])) == {"text": "hello"}
    assert ours[empty_id][1]["payload"] is None, "an empty payload is null, as Go writes it"
