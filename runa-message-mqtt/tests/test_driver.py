"""The MQTT driver against the Driver protocol directly, with a tiny Handler object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from mqtt_testkit import (
    HOST,
    PORT,
    TIMEOUT,
    URL,
    FrameHandler,
    Mosquitto,
    RawClient,
    envelope,
    unique,
    wait_total,
)
from paho.mqtt.enums import CallbackAPIVersion

from runa_message import wire
from runa_message.driver import Capabilities, Driver, Subscription
from runa_message.errors import (
    ClosedError,
    ConnectError,
    MessageError,
    PublishError,
    UnsupportedFeatureError,
)
from runa_message.message import Envelope
from runa_message_mqtt import MqttDriver, MqttSettings, driver

pytestmark = pytest.mark.broker

VERSIONS = ["5", "3.1.1"]


def decoded(frames: Sequence[object]) -> list[bytes]:
    """The payloads of the frames (raw bytes, as the driver hands them over)."""
    out = []
    for frame in frames:
        if isinstance(frame, Envelope):  # decoded once for several subscriptions on a filter
            out.append(frame.payload)
        else:
            assert isinstance(frame, bytes), f"the driver hands over frames, got {frame!r}"
            out.append(wire.decode(frame).payload)
    return out


async def started(closing: list[object], **settings: Any) -> MqttDriver:
    instance = driver(**settings)
    closing.append(instance)
    await instance.start()
    return instance


async def test_protocol_and_capabilities() -> None:
    instance = MqttDriver()
    assert isinstance(instance, Driver)
    assert instance.capabilities == Capabilities(
        wildcards=True,
        groups=True,
        ack=False,
        persistent=False,
        max_topic_length=65535 - len("runa/message/"),
    )
    assert driver(prefix="").capabilities.max_topic_length == 65535


@pytest.mark.parametrize("version", VERSIONS)
async def test_round_trip(closing: list[object], version: str) -> None:
    instance = await started(closing, version=version)
    topic = f"{unique()}.notice.created"
    handler = FrameHandler()
    subscription = await instance.subscribe(topic, "c", None, handler)
    assert isinstance(subscription, Subscription)
    sent = envelope(topic, b'{"text":"hi"}', **{"content-type": "application/json"})
    await instance.publish(topic, sent)
    frames = await handler.wait_for(1)
    assert isinstance(frames[0], bytes)
    assert wire.decode(frames[0]) == sent


async def test_topics_are_mapped_to_mqtt_levels(closing: list[object], raw: RawClient) -> None:
    instance = await started(closing)
    base = unique()
    raw.subscribe(f"runa/message/{base}/#")
    topic = f"{base}.a:b/c"
    await instance.publish(topic, envelope(topic))
    (message,) = await asyncio.to_thread(raw.wait_for, 1)
    assert message.topic == f"runa/message/{base}/a/b/c"
    assert wire.decode(message.payload).topic == topic, "the envelope keeps the topic as published"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("a.b", "a/b"),
        ("a:*:c", "a/+/c"),
        ("a/+/c", "a/+/c"),
        ("a.#", "a/#"),
        ("a.**", "a/#"),
        ("#", "#"),
    ],
)
async def test_patterns_become_mqtt_filters(
    closing: list[object], pattern: str, expected: str
) -> None:
    instance = await started(closing, prefix="p/")
    subscription = await instance.subscribe(pattern, "c", None, FrameHandler())
    assert subscription.filter == "p/" + expected
    group = await instance.subscribe(pattern, "c", "workers", FrameHandler())
    assert group.filter == "$share/workers/p/" + expected


@pytest.mark.parametrize("version", VERSIONS)
async def test_overlapping_shared_and_plain_subscriptions_route_exactly(
    closing: list[object], version: str
) -> None:
    """One driver holding overlapping plain and shared subscriptions delivers each exactly.

    MQTT 5 routes by subscription identifier on one connection; 3.1.1 puts overlapping
    filters on connections of their own.
    """
    instance = await started(closing, version=version)
    base = unique()
    handlers = {
        name: FrameHandler()
        for name in ("all", "exact", "group-exact", "group-one", "other-group", "elsewhere")
    }
    await instance.subscribe(f"{base}.#", "all", None, handlers["all"])
    await instance.subscribe(f"{base}.a", "exact", None, handlers["exact"])
    await instance.subscribe(f"{base}.a", "group-exact", "g1", handlers["group-exact"])
    await instance.subscribe(f"{base}.*", "group-one", "g2", handlers["group-one"])
    await instance.subscribe(f"{base}.*", "other-group", "g3", handlers["other-group"])
    await instance.subscribe(f"{unique()}.#", "elsewhere", None, handlers["elsewhere"])
    for topic in (f"{base}.a", f"{base}.b.c", f"{base}.b"):
        await instance.publish(topic, envelope(topic, topic.encode()))
    sentinel = f"{base}.a"
    await instance.publish(sentinel, envelope(sentinel, b"sentinel"))
    expected = {
        "all": [f"{base}.a", f"{base}.b.c", f"{base}.b", "sentinel"],
        "exact": [f"{base}.a", "sentinel"],
        "group-exact": [f"{base}.a", "sentinel"],
        "group-one": [f"{base}.a", f"{base}.b", "sentinel"],
        "other-group": [f"{base}.a", f"{base}.b", "sentinel"],
    }
    for name, payloads in expected.items():
        frames = await handlers[name].wait_for(len(payloads))
        assert [p.decode() for p in decoded(frames)] == payloads, name
    if version == "3.1.1":
        assert len(instance._connections) == 5, "overlapping filters on their own connections"
    else:
        assert len(instance._connections) == 1
    assert handlers["elsewhere"].frames == []


async def test_group_members_in_one_driver_share_messages(closing: list[object]) -> None:
    instance = await started(closing)
    topic = f"{unique()}.jobs"
    members = [FrameHandler(), FrameHandler()]
    subscriptions = [
        await instance.subscribe(topic, f"m{i}", "g", m) for i, m in enumerate(members)
    ]
    assert subscriptions[0].filter == subscriptions[1].filter
    for n in range(10):
        await instance.publish(topic, envelope(topic, str(n).encode()))
    await wait_total(members, 10)
    got = Counter(p for m in members for p in decoded(m.frames))
    assert got == Counter(str(n).encode() for n in range(10))
    assert all(m.frames for m in members), "both members get a share"


async def test_group_in_two_drivers_gets_each_message_once(closing: list[object]) -> None:
    first, second = await started(closing), await started(closing)
    topic = f"{unique()}.jobs"
    members = [FrameHandler(), FrameHandler()]
    await first.subscribe(topic, "a", "workers", members[0])
    await second.subscribe(topic, "b", "workers", members[1])
    for n in range(20):
        await first.publish(topic, envelope(topic, str(n).encode()))
    await wait_total(members, 20)
    got = [p for m in members for p in decoded(m.frames)]
    assert sorted(got) == sorted(str(n).encode() for n in range(20))
    assert all(m.frames for m in members)


@pytest.mark.parametrize("group", ["a/b", "a+", "#", ""])
async def test_group_names_mqtt_cannot_carry_are_refused(closing: list[object], group: str) -> None:
    instance = await started(closing)
    with pytest.raises(UnsupportedFeatureError, match="shared subscription name"):
        await instance.subscribe("a.b", "c", group, FrameHandler())


async def test_subscriptions_share_a_filter_until_the_last_closes(
    closing: list[object], raw: RawClient
) -> None:
    instance = await started(closing)
    topic = f"{unique()}.shared"
    first, second = FrameHandler(), FrameHandler()
    sub_first = await instance.subscribe(topic, "one", None, first)
    sub_second = await instance.subscribe(topic, "two", None, second)
    await instance.publish(topic, envelope(topic, b"1"))
    await first.wait_for(1)
    await second.wait_for(1)
    await sub_first.close()
    await sub_first.close()
    await instance.publish(topic, envelope(topic, b"2"))
    await second.wait_for(2)
    assert decoded(first.frames) == [b"1"]
    await sub_second.close()
    assert instance._entries == {}
    await instance.publish(topic, envelope(topic, b"3"))
    later = FrameHandler()
    await instance.subscribe(topic, "later", None, later)
    await instance.publish(topic, envelope(topic, b"4"))
    await later.wait_for(1)
    assert decoded(later.frames) == [b"4"]
    assert decoded(second.frames) == [b"1", b"2"]


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_every_qos(closing: list[object], qos: int) -> None:
    instance = await started(closing, qos=qos)
    topic = f"{unique()}.qos"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    for n in range(50):
        await instance.publish(topic, envelope(topic, str(n).encode()))
    await handler.wait_for(50)
    assert decoded(handler.frames) == [str(n).encode() for n in range(50)]


async def test_malformed_payloads_reach_the_handler_as_raw_bytes(
    closing: list[object], raw: RawClient
) -> None:
    instance = await started(closing)
    topic = f"{unique()}.frames"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    mqtt_topic = "runa/message/" + topic.replace(".", "/")
    garbage = [b"not json", b"", b"\xff\xfe\x00", b'{"id": 1}']
    for data in garbage:
        await asyncio.to_thread(raw.publish, mqtt_topic, data)
    await instance.publish(topic, envelope(topic, b"after"))
    frames = await handler.wait_for(len(garbage) + 1)
    assert frames[: len(garbage)] == garbage
    assert wire.decode(frames[-1]).payload == b"after"  # type: ignore[arg-type]


async def test_a_raising_handler_does_not_stop_the_subscription(closing: list[object]) -> None:
    instance = await started(closing)
    topic = f"{unique()}.raising"
    seen: list[bytes] = []
    done = asyncio.Event()

    class Raising(FrameHandler):
        async def __call__(self, frame: object, /, **_: object) -> None:
            assert isinstance(frame, bytes)
            seen.append(frame)
            if len(seen) == 2:
                done.set()
            raise MessageError("not an envelope (reported by the registry)")

    await instance.subscribe(topic, "c", None, Raising())
    await instance.publish(topic, envelope(topic))
    await instance.publish(topic, envelope(topic))
    await asyncio.wait_for(done.wait(), TIMEOUT)


async def test_retained_messages(closing: list[object], raw: RawClient) -> None:
    topic = f"{unique()}.last"
    publisher = await started(closing, retained=True)
    await publisher.publish(topic, envelope(topic, b"kept"))
    late = await started(closing)
    handler = FrameHandler()
    await late.subscribe(topic, "late", None, handler)
    await handler.wait_for(1)
    assert decoded(handler.frames) == [b"kept"]
    # Clear the retained message on the shared broker.
    await asyncio.to_thread(raw.publish, "runa/message/" + topic.replace(".", "/"), b"")


@pytest.mark.parametrize("qos", [0, 1])
async def test_slow_handler_bounds_the_buffer_and_loses_nothing(
    closing: list[object], qos: int
) -> None:
    """A handler that does not take frames: what waits for it stays bounded, nothing is lost.

    QoS 1: frames are acknowledged once handed over, so the broker stops at the Receive
    Maximum (1024). QoS 0 has no flow control: the connection stops reading its socket.
    """
    instance = await started(closing, qos=qos)
    sender = await started(closing, qos=qos)
    topic = f"{unique()}.slow"
    release, all_received = asyncio.Event(), asyncio.Event()
    received: list[bytes] = []
    count = 1500

    class Slow(FrameHandler):
        async def __call__(self, frame: object, /, **_: object) -> None:
            await release.wait()
            assert isinstance(frame, bytes)
            received.append(wire.decode(frame).payload)
            if len(received) == count:
                all_received.set()

    await instance.subscribe(topic, "slow", None, Slow())
    await asyncio.gather(
        *(sender.publish(topic, envelope(topic, str(n).encode())) for n in range(count))
    )
    connection = instance._connections[0]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    # The buffer level has no event to wait on: look at it until it is full.
    while len(connection._inbox) < 1023 and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert 1023 <= len(connection._inbox) <= 1024, "frames waiting for the handler stay bounded"
    assert connection._paused == (qos == 0), "without flow control the connection stops reading"
    release.set()
    await asyncio.wait_for(all_received.wait(), TIMEOUT)
    assert received == [str(n).encode() for n in range(count)]


async def test_publish_and_subscribe_need_start_and_fail_after_close() -> None:
    instance = MqttDriver()
    topic = unique()
    with pytest.raises(MessageError, match="start"):
        await instance.publish(topic, envelope(topic))
    await instance.start()
    await instance.start()  # idempotent
    await instance.close()
    await instance.close()
    with pytest.raises(ClosedError):
        await instance.publish(topic, envelope(topic))
    with pytest.raises(ClosedError):
        await instance.subscribe(topic, "c", None, FrameHandler())
    with pytest.raises(ClosedError):
        await instance.start()


async def test_owned_clients_are_disconnected(closing: list[object]) -> None:
    instance = await started(closing, version="3.1.1")
    base = unique()
    await instance.subscribe(f"{base}.#", "a", None, FrameHandler())
    await instance.subscribe(f"{base}.x", "b", None, FrameHandler())
    clients = [connection._client for connection in instance._connections]
    assert len(clients) == 2
    assert all(c.is_connected() for c in clients)
    await instance.close()
    assert not any(c.is_connected() for c in clients)
    assert all(c.socket() is None for c in clients)


@pytest.mark.parametrize("connect_first", [False, True])
async def test_injected_client_is_used_and_never_disconnected(
    closing: list[object], connect_first: bool
) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    users_callback = object()
    client.on_message = users_callback  # type: ignore[assignment]
    if connect_first:
        client.connect(HOST, PORT)
    instance = MqttDriver(client=client)
    closing.append(instance)
    assert "injected" in repr(instance)
    await instance.start()
    topic = f"{unique()}.injected"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    await instance.publish(topic, envelope(topic, b"via your client"))
    await handler.wait_for(1)
    await instance.close()
    assert client.is_connected(), "an injected client stays connected"
    assert client.on_message is users_callback, "its callbacks are given back"
    # The client is the user's again: it works with paho's own loop.
    got = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        loop.call_soon_threadsafe(got.set_result, m.payload)

    subscribed: asyncio.Future[None] = loop.create_future()

    def on_subscribe(c: mqtt.Client, u: Any, *rest: Any) -> None:
        loop.call_soon_threadsafe(subscribed.set_result, None)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.loop_start()
    try:
        client.subscribe("runa/message/" + topic.replace(".", "/") + "/back", qos=1)
        await asyncio.wait_for(subscribed, TIMEOUT)
        client.publish("runa/message/" + topic.replace(".", "/") + "/back", b"mine", qos=1)
        assert await asyncio.wait_for(got, TIMEOUT) == b"mine"
    finally:
        client.disconnect()
        client.loop_stop()


async def test_injected_client_checks() -> None:
    with pytest.warns(DeprecationWarning, match="Callback API version 1"):
        old = mqtt.Client(CallbackAPIVersion.VERSION1)
    with pytest.raises(MessageError, match="VERSION2"):
        MqttDriver(client=old)


async def test_injected_311_client_refuses_what_needs_another_connection(
    closing: list[object],
) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    instance = MqttDriver(client=client)
    closing.append(instance)
    await instance.start()
    base = unique()
    await instance.subscribe(f"{base}.#", "a", None, FrameHandler())
    with pytest.raises(UnsupportedFeatureError, match="MQTTv5"):
        await instance.subscribe(f"{base}.a", "b", None, FrameHandler())
    await instance.close()
    assert client.is_connected()
    client.disconnect()


async def test_a_non_mqtt_listener_times_out(closing: list[object]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        instance = driver(url=f"mqtt://{HOST}:{port}", timeout=0.5)
        with pytest.raises(ConnectError, match="did not answer CONNECT"):
            await asyncio.wait_for(instance.start(), TIMEOUT)
    finally:
        server.close()


async def test_secrets_stay_out_of_repr_and_logs(
    closing: list[object], caplog: pytest.LogCaptureFixture, mosquitto: Mosquitto
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = MqttSettings(url=f"mqtt://alice:s3cr3t@{HOST}:{mosquitto.port}", password="p4ss")
    instance = MqttDriver(settings)
    closing.append(instance)
    for text in (repr(settings), repr(instance), repr(settings.endpoint())):
        assert "s3cr3t" not in text, text
        assert "p4ss" not in text, text
    await instance.start()
    mosquitto.stop()
    await asyncio.sleep(0.3)
    mosquitto.start()
    topic = unique()
    await instance.publish(topic, envelope(topic))
    assert caplog.records, "the outage was logged"
    for record in caplog.records:
        assert "s3cr3t" not in record.getMessage()
        assert "p4ss" not in record.getMessage()


@pytest.mark.parametrize("version", VERSIONS)
async def test_reconnects_and_resubscribes_after_the_broker_restarts(
    closing: list[object], mosquitto: Mosquitto, version: str
) -> None:
    url = f"mqtt://{HOST}:{mosquitto.port}"
    instance = await started(closing, url=url, version=version)
    publisher = await started(closing, url=url, version=version)
    base = unique()
    plain, member, other = FrameHandler(), FrameHandler(), FrameHandler()
    await instance.subscribe(f"{base}.#", "plain", None, plain)
    await instance.subscribe(f"{base}.a", "member", "g", member)
    await instance.subscribe(f"{base}.*", "other", None, other)
    await publisher.publish(f"{base}.a", envelope(f"{base}.a", b"before"))
    for handler in (plain, member, other):
        await handler.wait_for(1)
    mosquitto.stop()
    mosquitto.start()
    # Both drivers reconnect; a publish waits for its connection (and its subscriptions).
    # The publisher may be back before the subscriber: publish until every handler got one.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not all(b"after" in decoded(h.frames) for h in (plain, member, other)):
        assert loop.time() < deadline, "the subscriptions did not come back"
        await publisher.publish(f"{base}.a", envelope(f"{base}.a", b"after"))
        with contextlib.suppress(AssertionError):
            await wait_total(
                [plain, member, other], sum(len(h.frames) for h in (plain, member, other)) + 1, 0.2
            )
    for handler in (plain, member, other):
        assert set(decoded(handler.frames)) == {b"before", b"after"}


async def test_publish_during_an_outage_raises_after_publish_timeout(
    closing: list[object], mosquitto: Mosquitto
) -> None:
    instance = await started(closing, url=f"mqtt://{HOST}:{mosquitto.port}", publish_timeout=0.5)
    topic = unique()
    mosquitto.stop()
    loop = asyncio.get_running_loop()
    begun = loop.time()
    with pytest.raises(PublishError, match=r"not confirmed within 0\.5s"):
        await asyncio.wait_for(instance.publish(topic, envelope(topic)), TIMEOUT)
    assert loop.time() - begun < 2.0
    mosquitto.start()
    handler = FrameHandler()
    await instance.subscribe(topic, "back", None, handler)
    await instance.publish(topic, envelope(topic, b"back"))
    await handler.wait_for(1)


async def test_many_concurrent_publishers_keep_each_order(closing: list[object]) -> None:
    instance = await started(closing)
    topic = f"{unique()}.load"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)

    async def publish(p: int) -> None:
        for i in range(40):
            await instance.publish(topic, envelope(topic, f"{p}:{i}".encode()))

    await asyncio.gather(*(publish(p) for p in range(25)))
    await handler.wait_for(1000)
    payloads = [p.decode() for p in decoded(handler.frames)]
    assert len(set(payloads)) == 1000
    for p in range(25):
        mine = [int(x.split(":")[1]) for x in payloads if x.startswith(f"{p}:")]
        assert mine == sorted(mine)


def test_default_url_is_the_local_broker() -> None:
    assert MqttSettings().url == URL


async def test_without_publisher_confirms_publishes_are_pipelined(closing: list[object]) -> None:
    """publisher_confirms = false: publish returns before the PUBACK; close() waits for it."""
    instance = await started(closing, publisher_confirms=False)
    receiver = await started(closing)
    topic = f"{unique()}.pipelined"
    handler = FrameHandler()
    await receiver.subscribe(topic, "c", None, handler)
    connection = instance._connections[0]
    window = connection._client.max_inflight_messages
    await instance.publish(topic, envelope(topic, b"0"))
    assert len(connection._acks) == 1, "returned before the broker acknowledged"
    for n in range(1, 200):
        await instance.publish(topic, envelope(topic, str(n).encode()))
        assert len(connection._acks) <= window, "at most the broker's window is unacknowledged"
    await instance.close()
    assert connection._acks == {}, "close() waited for the acknowledgements"
    await handler.wait_for(200)
    assert decoded(handler.frames) == [str(n).encode() for n in range(200)]


async def test_without_publisher_confirms_a_known_outage_still_raises(
    closing: list[object], mosquitto: Mosquitto
) -> None:
    url = f"mqtt://{HOST}:{mosquitto.port}"
    instance = await started(closing, url=url, publisher_confirms=False, publish_timeout=0.5)
    connection = instance._connections[0]
    mosquitto.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while connection._ready and loop.time() < deadline:  # noqa: ASYNC110 - no event for it
        await asyncio.sleep(0.01)
    topic = unique()
    with pytest.raises(PublishError):
        await asyncio.wait_for(instance.publish(topic, envelope(topic)), TIMEOUT)
    mosquitto.start()


async def test_keepalive_keeps_an_idle_connection(
    closing: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runa_message.mqtt")
    instance = await started(closing, keepalive=1)
    topic = f"{unique()}.idle"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    client = instance._connections[0]._client
    await asyncio.sleep(2.5)  # idle for more than twice the keepalive: pings keep it open
    assert client.is_connected()
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    await instance.publish(topic, envelope(topic, b"still"))
    await handler.wait_for(1)
