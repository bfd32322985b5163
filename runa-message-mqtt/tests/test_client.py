"""The lean per-message path (FastClient) and the MQTT filter helpers, checked against paho."""

from __future__ import annotations

import asyncio
import itertools

import paho.mqtt.client as mqtt
import pytest
from mqtt_testkit import FrameHandler, RawClient, unique
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from runa_message import wire
from runa_message.message import Envelope
from runa_message_mqtt import driver
from runa_message_mqtt.client import subscription_identifiers
from runa_message_mqtt.driver import _filter_matcher, _overlap


def _properties(**values: object) -> bytes:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(properties, name, value)
    packed: bytes = properties.pack()  # type: ignore[no-untyped-call]
    return packed


def _parse(packed: bytes) -> list[int] | None:
    length, used = packed[0], 1  # short property blocks: one length byte
    assert length < 128
    return subscription_identifiers(packed, used, used + length)


def test_subscription_identifiers_among_other_properties() -> None:
    assert _parse(_properties()) is None
    assert _parse(_properties(SubscriptionIdentifier=[7])) == [7]
    assert _parse(_properties(SubscriptionIdentifier=[3, 300, 70000])) == [3, 300, 70000]
    mixed = _properties(
        PayloadFormatIndicator=1,
        MessageExpiryInterval=60,
        ContentType="application/json",
        ResponseTopic="reply/here",
        CorrelationData=b"\x00\x01",
        UserProperty=[("k", "v"), ("k2", "v2")],
        SubscriptionIdentifier=[12],
    )
    assert _parse(mixed) == [12]


def test_unknown_or_truncated_properties_are_refused() -> None:
    with pytest.raises(ValueError, match="unexpected"):
        subscription_identifiers(b"\x7f\x00", 0, 2)
    with pytest.raises(ValueError, match="truncated"):
        subscription_identifiers(b"\x02\x00\x00\x00", 0, 3)


@pytest.mark.broker
@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_messages_with_properties_arrive_whole(
    closing: list[object], raw: RawClient, version: str
) -> None:
    instance = driver(version=version)
    closing.append(instance)
    await instance.start()
    topic = f"{unique()}.props"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.UserProperty = [("trace", "abc")]
    properties.ContentType = "application/json"
    properties.MessageExpiryInterval = 30
    properties.CorrelationData = b"corr"
    frame = wire.encode(wire.decode(b'{"id":"1","topic":"t","created_at":"2026-01-01T00:00:00Z"}'))
    mqtt_topic = "runa/message/" + topic.replace(".", "/")
    for qos in (0, 1, 2):
        info = raw.client.publish(mqtt_topic, frame, qos=qos, properties=properties)
        await asyncio.to_thread(info.wait_for_publish, 10)
    frames = await handler.wait_for(3)
    assert frames == [frame, frame, frame]


@pytest.mark.broker
async def test_large_messages_cross_read_boundaries(closing: list[object]) -> None:
    instance = driver()
    closing.append(instance)
    await instance.start()
    topic = f"{unique()}.big"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    sizes = [0, 1, 65536 - 200, 65536, 300_000, 5]
    for size in sizes:
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        await instance.publish(topic, Envelope(str(size), topic, data))
    frames = await handler.wait_for(len(sizes))
    got = [wire.decode(f) for f in frames if isinstance(f, bytes)]
    assert [len(e.payload) for e in got] == sizes


LEVELS = ["a", "b", "+", "#"]


def _filters() -> list[str]:
    found = []
    for length in (1, 2, 3):
        for levels in itertools.product(LEVELS, repeat=length):
            if "#" in levels[:-1]:
                continue
            found.append("/".join(levels))
    return found


TOPICS = [
    "/".join(levels)
    for length in (1, 2, 3, 4)
    for levels in itertools.product(["a", "b", "c", ""], repeat=length)
]


@pytest.mark.parametrize("mqtt_filter", _filters())
def test_filter_matcher_agrees_with_paho(mqtt_filter: str) -> None:
    matches = _filter_matcher(mqtt_filter)
    for topic in TOPICS:
        assert matches(topic) == mqtt.topic_matches_sub(mqtt_filter, topic), (mqtt_filter, topic)


def test_overlap_agrees_with_brute_force() -> None:
    filters = _filters()
    for first, second in itertools.combinations_with_replacement(filters, 2):
        both = any(
            mqtt.topic_matches_sub(first, t) and mqtt.topic_matches_sub(second, t) for t in TOPICS
        )
        assert _overlap(first, second) == both, (first, second)
        assert _overlap(second, first) == both, (second, first)
