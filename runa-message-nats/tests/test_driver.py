"""NatsDriver against the Driver protocol, on the shared nats-server (127.0.0.1:4222)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from nats_testkit import Recorder, envelope

from runa_message import wire
from runa_message.driver import Driver, Subscription
from runa_message.errors import ClosedError, DecodeError, MessageError, PublishError
from runa_message_nats import NatsDriver, NatsSettings, driver

pytestmark = pytest.mark.broker


@pytest.fixture
async def make(nats_url: str, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """Build started drivers on the shared broker with this test's prefix; closed afterwards."""
    made: list[NatsDriver] = []

    async def build(**settings: Any) -> NatsDriver:
        settings.setdefault("url", nats_url)
        settings.setdefault("prefix", prefix)
        instance = driver(**settings)
        made.append(instance)
        await instance.start()
        return instance

    yield build
    for instance in made:
        await instance.close()


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[nats.aio.client.Client]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


async def test_is_a_driver(make: Callable[..., Any]) -> None:
    d = await make()
    assert isinstance(d, Driver)
    sub = await d.subscribe("a.b", "c", None, Recorder())
    assert isinstance(sub, Subscription)


async def test_round_trip_hands_over_the_frame_bytes(make: Callable[..., Any]) -> None:
    d = await make()
    rec = Recorder()
    await d.subscribe("notice.created", "c", None, rec)
    sent = envelope("notice.created", b'{"text":"hi"}')
    await d.publish("notice.created", sent)
    frame = await rec.next()
    assert isinstance(frame, bytes)
    assert frame == wire.encode(sent)
    assert wire.decode(frame) == sent


async def test_subject_is_prefix_plus_topic_with_dots(
    make: Callable[..., Any], raw: nats.aio.client.Client, prefix: str
) -> None:
    d = await make()
    sub = await raw.subscribe(f"{prefix}device.1.status")
    await raw.flush()
    sent = envelope("device/1:status")
    await d.publish("device/1:status", sent)
    msg = await sub.next_msg(timeout=10)
    assert wire.decode(msg.data) == sent


async def test_delivery_equals_match_topic(make: Callable[..., Any]) -> None:
    """`user.#` also receives `user`; `*` is one segment; `#` alone is everything."""
    d = await make()
    recorders = {pattern: Recorder() for pattern in ("user.#", "user.*", "user/*/x", "#", "*")}
    for pattern, rec in recorders.items():
        await d.subscribe(pattern, "c", None, rec)
    topics = ["user", "user.a", "user/a/x", "user:a:b:c", "other.a", "x"]
    ids = {}
    for topic in topics:
        sent = envelope(topic)
        ids[topic] = sent.id
        await d.publish(topic, sent)
    from runa_message import match_topic

    for pattern, rec in recorders.items():
        expected = [topic for topic in topics if match_topic(pattern, topic)]
        got = await rec.topics_until(*(ids[topic] for topic in expected))
        assert sorted(got) == sorted(expected), pattern


async def test_nothing_outside_the_pattern_arrives(make: Callable[..., Any]) -> None:
    d = await make()
    rec = Recorder()
    await d.subscribe("user.*", "c", None, rec)
    await d.publish("user", envelope("user"))
    await d.publish("user.a.b", envelope("user.a.b"))
    await d.publish("users.a", envelope("users.a"))
    last = envelope("user.end")
    await d.publish("user.end", last)
    # Same connection, same subject order: the marker comes after anything published before.
    assert await rec.topics_until(last.id) == ["user.end"]


async def test_broadcast_every_subscription_gets_every_message(make: Callable[..., Any]) -> None:
    one, two = await make(), await make()
    a, b, c = Recorder(), Recorder(), Recorder()
    await one.subscribe("job.*", "a", None, a)
    await one.subscribe("job.*", "b", None, b)
    await two.subscribe("job.*", "c", None, c)
    sent = [envelope(f"job.{i}") for i in range(5)]
    for item in sent:
        await one.publish(item.topic, item)
    for rec in (a, b, c):
        got = await rec.topics_until(*(item.id for item in sent))
        assert sorted(got) == sorted(item.topic for item in sent)


async def test_group_members_share_the_messages(make: Callable[..., Any]) -> None:
    one, two = await make(), await make()
    a, b, everyone = Recorder(), Recorder(), Recorder()
    await one.subscribe("job.#", "worker", "workers", a)
    await two.subscribe("job.#", "worker", "workers", b)
    await two.subscribe("job.#", "audit", None, everyone)
    sent = [envelope("job" if i % 5 == 0 else f"job.{i}") for i in range(40)]
    for item in sent:
        await one.publish(item.topic, item)
    await everyone.topics_until(*(item.id for item in sent))
    got: list[str] = []

    async def collect() -> None:
        while len(got) < len(sent):
            for rec in (a, b):
                while not rec.frames.empty():
                    frame = rec.frames.get_nowait()
                    assert isinstance(frame, bytes)
                    got.append(wire.decode(frame).id)
            if len(got) < len(sent):
                done, _ = await asyncio.wait(
                    [asyncio.ensure_future(r.frames.get()) for r in (a, b)],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for future in done:
                    frame = future.result()
                    assert isinstance(frame, bytes)
                    got.append(wire.decode(frame).id)

    await asyncio.wait_for(collect(), 10)
    assert sorted(got) == sorted(item.id for item in sent)  # each exactly once


async def test_malformed_frame_goes_to_the_handler_raw_and_the_subscription_goes_on(
    make: Callable[..., Any], raw: nats.aio.client.Client, prefix: str
) -> None:
    d = await make()
    rec = Recorder(decode=True)
    await d.subscribe("logs.*", "c", None, rec)
    await raw.publish(f"{prefix}logs.bad", b"\xffnot an envelope")
    await raw.flush()
    error, data = await rec.next_report()
    assert isinstance(error, DecodeError)
    assert data == b"\xffnot an envelope"
    good = envelope("logs.good")
    await d.publish("logs.good", good)
    assert wire.decode(await rec.next()) == good  # type: ignore[arg-type]


async def test_handler_failure_is_reported_not_raised(make: Callable[..., Any]) -> None:
    d = await make()

    class Failing(Recorder):
        async def __call__(self, frame: Any, /, **_: Any) -> None:
            await super().__call__(frame)
            raise RuntimeError("boom")

    rec = Failing()
    await d.subscribe("t.x", "c", None, rec)
    await d.publish("t.x", envelope("t.x"))
    await d.publish("t.x", envelope("t.x"))
    error, data = await rec.next_report()
    assert isinstance(error, RuntimeError)
    assert data is not None
    await rec.next()
    await rec.next()  # the second message still came


async def test_subscription_close_stops_delivery_and_is_idempotent(
    make: Callable[..., Any],
) -> None:
    d = await make()
    rec, other = Recorder(), Recorder()
    sub = await d.subscribe("a.#", "c", None, rec)
    await d.subscribe("a.#", "d", None, other)
    await sub.close()
    await sub.close()
    marker = envelope("a.b")
    await d.publish("a.b", marker)
    await other.topics_until(marker.id)
    assert rec.frames.empty()
    assert d._nc is not None
    assert len(d._nc._subs) == 2


async def test_close_drains_buffered_messages_to_the_handler(make: Callable[..., Any]) -> None:
    d = await make(drain_timeout=10.0)
    rec = Recorder()
    rec.gate = asyncio.Event()
    await d.subscribe("q", "c", None, rec)
    sent = [envelope("q") for _ in range(10)]
    for item in sent:
        await d.publish("q", item)
    assert d._nc is not None
    await d._nc.flush()  # our own MSGs arrive before the PONG on this connection
    closing = asyncio.ensure_future(d.close())
    rec.gate.set()
    await asyncio.wait_for(closing, 10)
    got = [wire.decode(rec.frames.get_nowait()).id for _ in range(rec.frames.qsize())]  # type: ignore[arg-type]
    assert got == [item.id for item in sent]


async def test_close_gives_up_after_drain_timeout(
    make: Callable[..., Any], driver_log: Any
) -> None:
    d = await make(drain_timeout=0.3)
    rec = Recorder()
    rec.gate = asyncio.Event()  # never opened: the handler is stuck
    await d.subscribe("q", "c", None, rec)
    for _ in range(3):
        await d.publish("q", envelope("q"))
    assert d._nc is not None
    await d._nc.flush()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(d.close(), 10)
    assert loop.time() - started < 5
    assert "after drain_timeout" in driver_log.text()
    assert d._nc.is_closed


async def test_close_is_idempotent_and_publish_after_close_raises(make: Callable[..., Any]) -> None:
    d = await make()
    await asyncio.gather(d.close(), d.close())
    await d.close()
    with pytest.raises(ClosedError):
        await d.publish("a", envelope("a"))
    with pytest.raises(ClosedError):
        await d.subscribe("a", "c", None, Recorder())
    with pytest.raises(ClosedError):
        await d.start()


async def test_close_before_start_and_use_before_start(nats_url: str) -> None:
    d = driver(url=nats_url)
    with pytest.raises(MessageError, match="not started"):
        await d.publish("a", envelope("a"))
    await d.close()
    with pytest.raises(ClosedError):
        await d.publish("a", envelope("a"))


async def test_own_connection_is_closed(make: Callable[..., Any]) -> None:
    d = await make()
    nc = d._nc
    assert nc is not None
    assert nc.is_connected
    await d.close()
    assert nc.is_closed


async def test_injected_client_is_used_and_never_closed(
    raw: nats.aio.client.Client, prefix: str
) -> None:
    before = len(raw._subs)
    d = NatsDriver(NatsSettings(prefix=prefix), client=raw)
    assert "injected client" in repr(d)
    await d.start()
    rec = Recorder()
    await d.subscribe("x.*", "c", None, rec)
    sent = envelope("x.y")
    await d.publish("x.y", sent)
    assert wire.decode(await rec.next()) == sent  # type: ignore[arg-type]
    await d.close()
    assert raw.is_connected
    assert len(raw._subs) == before
    await raw.publish("still.usable", b"")
    await raw.flush()


async def test_injected_client_must_be_connected() -> None:
    d = NatsDriver(client=nats.aio.client.Client())
    with pytest.raises(MessageError, match="not connected"):
        await d.start()


async def test_slow_consumer_drops_are_reported(make: Callable[..., Any]) -> None:
    d = await make(pending_msgs_limit=5)
    rec = Recorder()
    rec.gate = asyncio.Event()  # the handler blocks on the first message
    await d.subscribe("flood", "c", None, rec)
    for _ in range(50):
        await d.publish("flood", envelope("flood"))
    error, _data = await rec.next_report()
    assert isinstance(error, MessageError)
    assert "dropped" in str(error)
    assert "pending_msgs_limit=5" in str(error)
    rec.gate.set()


async def test_publish_of_a_frame_over_max_payload_raises(make: Callable[..., Any]) -> None:
    d = await make()
    assert d._nc is not None
    too_big = b"x" * (d._nc.max_payload + 1)
    with pytest.raises(PublishError, match="max_payload"):
        await d.publish("big", envelope("big", too_big))


async def test_many_publishes_then_all_arrive(make: Callable[..., Any]) -> None:
    d = await make()
    rec = Recorder()
    await d.subscribe("bulk", "c", None, rec)
    sent = [envelope("bulk", uuid.uuid4().bytes * 4) for _ in range(2000)]
    for item in sent:
        await d.publish("bulk", item)
    got = await rec.topics_until(*(item.id for item in sent), timeout=30)
    assert len(got) == len(sent)
