"""The Redis driver against the Driver protocol, on the real server (127.0.0.1:6379)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from runa_message import wire
from runa_message.driver import Driver, Subscription
from runa_message.errors import ClosedError, PublishError, UnsupportedFeatureError
from runa_message.message import Envelope
from runa_message.testing import TcpProxy
from runa_message_redis import RedisDriver, RedisSettings, driver

REDIS_URL = "redis://127.0.0.1:6379/0"
TIMEOUT = 5.0

pytestmark = pytest.mark.broker


def envelope(topic: str, payload: bytes = b"{}", **headers: Any) -> Envelope:
    return Envelope(uuid.uuid4().hex, topic, payload, headers)


@pytest.fixture
async def redis_driver() -> AsyncIterator[RedisDriver]:
    d = driver(url=REDIS_URL)
    await d.start()
    yield d
    await d.close()


async def test_is_a_driver(redis_driver: RedisDriver) -> None:
    assert isinstance(redis_driver, Driver)
    assert redis_driver.capabilities.groups is False
    assert redis_driver.capabilities.wildcards is True
    assert redis_driver.capabilities.ack is False
    assert redis_driver.capabilities.persistent is False


async def test_publish_reaches_a_subscription(
    redis_driver: RedisDriver, recorder: Any, topic: str
) -> None:
    handler = recorder()
    sub = await redis_driver.subscribe(f"{topic}.created", "c", None, handler)
    assert isinstance(sub, Subscription)
    sent = envelope(f"{topic}.created", b'{"n": 1}', **{"content-type": "application/json"})
    await redis_driver.publish(sent.topic, sent)
    (frame,) = await handler.wait_for(1)
    assert isinstance(frame, bytes)
    assert wire.decode(frame) == sent
    await sub.close()
    await sub.close()  # idempotent


async def test_channel_is_prefix_plus_topic(
    redis_driver: RedisDriver, raw: aioredis.Redis, topic: str
) -> None:
    pubsub = raw.pubsub()
    await pubsub.subscribe(f"runa:message:{topic}/a:b")
    await pubsub.get_message(timeout=TIMEOUT)  # subscribe confirmation
    sent = envelope(f"{topic}/a:b")
    await redis_driver.publish(sent.topic, sent)
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT)
    await pubsub.aclose()
    assert message is not None
    assert message["channel"] == f"runa:message:{topic}/a:b".encode()
    assert wire.decode(message["data"]) == sent


async def test_custom_prefix(raw: aioredis.Redis, recorder: Any, topic: str) -> None:
    d = driver(url=REDIS_URL, prefix="app[1]*:")
    await d.start()
    try:
        handler = recorder()
        await d.subscribe(f"{topic}.*", "c", None, handler)
        # A glob-looking prefix matches only itself.
        await raw.publish(f"app11x:{topic}.a", wire.encode(envelope(f"{topic}.a")))
        await raw.publish(f"app[1]*:{topic}.b", wire.encode(envelope(f"{topic}.b")))
        (frame,) = await handler.wait_for(1)
        assert wire.decode(frame).topic == f"{topic}.b"
    finally:
        await d.close()


@pytest.mark.parametrize(
    ("pattern", "selected", "not_selected"),
    [
        ("{t}.*", ["{t}.a", "{t}/b", "{t}:c"], ["{t}", "{t}.a.b"]),
        ("{t}.#", ["{t}", "{t}.a", "{t}.a.b", "{t}/a:b"], ["{t}x"]),
        ("{t}.**", ["{t}", "{t}.a.b"], []),
        ("{t}.+.end", ["{t}.a.end", "{t}/b/end"], ["{t}.a.b.end", "{t}.end"]),
        ("*.{t}.x", ["a.{t}.x"], ["{t}.x"]),
        ("{t}.a.b", ["{t}.a.b", "{t}/a:b"], ["{t}.a.bc", "{t}.a"]),
        ("{t}", ["{t}"], ["{t}.a"]),
    ],
)
async def test_the_glob_selects_a_superset_of_match_topic(
    redis_driver: RedisDriver,
    raw: aioredis.Redis,
    recorder: Any,
    topic: str,
    pattern: str,
    selected: list[str],
    not_selected: list[str],
) -> None:
    """Everything match_topic selects arrives (the registry filters the rest)."""
    from runa_message.topic import match_topic

    handler = recorder()
    pattern = pattern.format(t=topic)
    await redis_driver.subscribe(pattern, "c", None, handler)
    for name in selected:
        name = name.format(t=topic)
        assert match_topic(pattern, name)
        await raw.publish(f"runa:message:{name}", wire.encode(envelope(name)))
    for name in not_selected:
        assert not match_topic(pattern, name.format(t=topic))
    frames = await handler.wait_for(len(selected))
    assert sorted(wire.decode(f).topic for f in frames) == sorted(
        name.format(t=topic) for name in selected
    )


async def test_glob_specials_in_topics_are_literal(
    redis_driver: RedisDriver, raw: aioredis.Redis, recorder: Any, topic: str
) -> None:
    handler = recorder()
    await redis_driver.subscribe(f"{topic}.a?[b]\\c.*", "c", None, handler)
    await raw.publish(f"runa:message:{topic}.ax[b]\\c.1", wire.encode(envelope("wrong")))
    await raw.publish(f"runa:message:{topic}.a?b\\c.1", wire.encode(envelope("wrong")))
    right = envelope(f"{topic}.a?[b]\\c.1")
    await raw.publish(f"runa:message:{right.topic}", wire.encode(right))
    (frame,) = await handler.wait_for(1)
    assert wire.decode(frame) == right


async def test_subscriptions_share_channels(
    redis_driver: RedisDriver, raw: aioredis.Redis, recorder: Any, topic: str
) -> None:
    first, second, third = recorder(), recorder(), recorder()
    s1 = await redis_driver.subscribe(f"{topic}.*", "one", None, first)
    await redis_driver.subscribe(f"{topic}.+", "two", None, second)  # the same glob
    await redis_driver.subscribe(f"{topic}.x", "three", None, third)
    sent = envelope(f"{topic}.x")
    await redis_driver.publish(sent.topic, sent)
    await first.wait_for(1)
    await second.wait_for(1)
    await third.wait_for(1)
    await s1.close()
    # The glob stays subscribed for the second subscription.
    again = envelope(f"{topic}.x")
    await redis_driver.publish(again.topic, again)
    await second.wait_for(2)
    await third.wait_for(2)
    assert len(first.frames) == 1
    assert len(second.frames) == 2


async def test_closed_subscription_receives_nothing_more(
    redis_driver: RedisDriver, recorder: Any, topic: str
) -> None:
    gone, kept = recorder(), recorder()
    sub = await redis_driver.subscribe(f"{topic}.a", "gone", None, gone)
    await redis_driver.subscribe(f"{topic}.b", "kept", None, kept)
    await sub.close()
    await redis_driver.publish(f"{topic}.a", envelope(f"{topic}.a"))
    await redis_driver.publish(f"{topic}.b", envelope(f"{topic}.b"))
    await kept.wait_for(1)
    assert gone.frames == []
    # Subscribing again after the unsubscribe works.
    back = recorder()
    await redis_driver.subscribe(f"{topic}.a", "back", None, back)
    await redis_driver.publish(f"{topic}.a", envelope(f"{topic}.a"))
    await back.wait_for(1)


async def test_group_is_refused(redis_driver: RedisDriver, recorder: Any, topic: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        await redis_driver.subscribe(f"{topic}.a", "c", "workers", recorder())
    text = str(info.value)
    assert "workers" in text
    assert "NATS" in text
    assert "AMQP" in text
    assert "MQTT" in text
    assert "Streams" in text


async def test_malformed_frames_go_to_the_handler_and_the_subscription_goes_on(
    redis_driver: RedisDriver, raw: aioredis.Redis, recorder: Any, topic: str
) -> None:
    from runa_message.errors import DecodeError

    handler = recorder(fail=DecodeError("not an envelope"))
    await redis_driver.subscribe(f"{topic}.*", "c", None, handler)
    await raw.publish(f"runa:message:{topic}.a", b"\xffnot json")
    await handler.wait_for(1)
    handler.fail = RuntimeError("a handler bug")  # not raised back by a registry, but survive it
    await raw.publish(f"runa:message:{topic}.a", b"[]")
    await handler.wait_for(2)
    handler.fail = None
    good = envelope(f"{topic}.a")
    await redis_driver.publish(good.topic, good)
    frames = await handler.wait_for(3)
    assert frames[0] == b"\xffnot json"
    assert frames[1] == b"[]"
    assert wire.decode(frames[2]) == good


async def test_one_connection_for_all_subscriptions(
    raw: aioredis.Redis, recorder: Any, topic: str
) -> None:
    name = f"runa-test-{uuid.uuid4().hex[:8]}"
    d = driver(url=f"{REDIS_URL}?client_name={name}")
    await d.start()
    try:
        for index in range(20):
            await d.subscribe(f"{topic}.{index}.*", f"c{index}", None, recorder())
        await d.subscribe(f"{topic}", "plain", None, recorder())
        clients = [c for c in await raw.client_list() if c["name"] == name]
        # One publisher connection and one subscriber connection.
        assert len(clients) == 2
        subscriber = next(c for c in clients if int(c["psub"]) > 0)
        assert int(subscriber["psub"]) == 20
        assert int(subscriber["sub"]) == 1
    finally:
        await d.close()
    clients = [c for c in await raw.client_list() if c["name"] == name]
    assert clients == []


async def test_injected_client_is_not_closed(
    raw: aioredis.Redis, recorder: Any, topic: str
) -> None:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True, protocol=3)
    d = driver(client)
    assert d.client is client
    await d.start()
    handler = recorder()
    await d.subscribe(f"{topic}.*", "c", None, handler)
    sent = envelope(f"{topic}.a")
    await d.publish(sent.topic, sent)
    (frame,) = await handler.wait_for(1)
    assert wire.decode(frame) == sent  # bytes, whatever the client decodes
    await d.close()
    assert await client.set(f"{topic}:k", "v") is True  # still usable
    assert await client.get(f"{topic}:k") == "v"
    await client.delete(f"{topic}:k")
    await client.aclose()


async def test_created_client_is_closed() -> None:
    d = driver(url=REDIS_URL)
    await d.start()
    client = d.client
    assert client is not None
    await d.close()
    assert d.client is None


async def test_close_is_idempotent_and_publish_after_close_fails(topic: str) -> None:
    d = driver(url=REDIS_URL)
    await d.start()
    await d.close()
    await d.close()
    with pytest.raises(ClosedError):
        await d.publish(f"{topic}.a", envelope(f"{topic}.a"))


async def test_publish_before_start_fails(topic: str) -> None:
    d = driver(url=REDIS_URL)
    with pytest.raises(PublishError, match="start"):
        await d.publish(f"{topic}.a", envelope(f"{topic}.a"))


async def test_close_flushes_queued_publishes(
    raw: aioredis.Redis, recorder: Any, topic: str
) -> None:
    listener = driver(url=REDIS_URL)
    await listener.start()
    handler = recorder()
    await listener.subscribe(f"{topic}.*", "c", None, handler)
    d = driver(url=REDIS_URL)
    await d.start()
    tasks = [
        asyncio.create_task(d.publish(f"{topic}.a", envelope(f"{topic}.a"))) for _ in range(50)
    ]
    await asyncio.sleep(0)  # every publish is queued
    await d.close()
    await asyncio.gather(*tasks)
    await handler.wait_for(50)
    await listener.close()


async def test_concurrent_publishes_share_writes(
    redis_driver: RedisDriver, recorder: Any, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = redis_driver._pub_conn
    assert conn is not None
    writes = 0
    send = conn.send_packed_command

    async def counting(*args: Any, **kwargs: Any) -> None:
        nonlocal writes
        writes += 1
        await send(*args, **kwargs)

    monkeypatch.setattr(conn, "send_packed_command", counting)
    handler = recorder()
    await redis_driver.subscribe(f"{topic}.*", "c", None, handler)
    sent = [envelope(f"{topic}.{i}") for i in range(200)]
    await asyncio.gather(*(redis_driver.publish(e.topic, e) for e in sent))
    frames = await handler.wait_for(200)
    assert writes <= 4
    # Order of publication is kept.
    assert [wire.decode(f).id for f in frames] == [e.id for e in sent]


async def test_secrets_stay_out_of_repr_logs_and_errors(
    caplog: pytest.LogCaptureFixture, topic: str
) -> None:
    secret = "s3cr3t-pa55"
    settings = RedisSettings(url=f"redis://user:{secret}@127.0.0.1:1/0", publish_timeout=0.3)
    d = RedisDriver(settings)
    assert secret not in repr(d)
    assert secret not in repr(settings)
    caplog.set_level(logging.DEBUG, logger="runa_message")
    with pytest.raises(Exception) as info:
        await d.start()
    assert secret not in str(info.value)
    assert "***" in str(info.value)
    assert secret not in caplog.text
    await d.close()


async def test_cancelled_publish_is_not_sent(
    redis_driver: RedisDriver, recorder: Any, topic: str
) -> None:
    handler = recorder()
    await redis_driver.subscribe(f"{topic}.*", "c", None, handler)
    task = asyncio.create_task(redis_driver.publish(f"{topic}.a", envelope(f"{topic}.a")))
    await asyncio.sleep(0)
    task.cancel()
    kept = envelope(f"{topic}.b")
    await redis_driver.publish(kept.topic, kept)
    # One connection keeps publish order: a stray cancelled frame would arrive before this one.
    sentinel = envelope(f"{topic}.c")
    await redis_driver.publish(sentinel.topic, sentinel)
    frames = await handler.wait_for(2)
    assert [wire.decode(f).id for f in frames] == [kept.id, sentinel.id]


# ---------------------------------------------------------------- outages


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", 6379) as p:
        yield p


def proxied(proxy: TcpProxy, **settings: Any) -> RedisDriver:
    host, port = proxy.address
    return driver(url=f"redis://{host}:{port}/0", **settings)


async def _eventually(check: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    async def loop() -> None:
        while not await check():  # noqa: ASYNC110 - polling the server, not an event
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout)


async def test_subscriptions_come_back_after_a_cut(
    proxy: TcpProxy, raw: aioredis.Redis, recorder: Any, topic: str
) -> None:
    d = proxied(proxy)
    await d.start()
    try:
        pattern_handler, channel_handler = recorder(), recorder()
        await d.subscribe(f"{topic}.*", "p", None, pattern_handler)
        await d.subscribe(topic, "c", None, channel_handler)
        await proxy.cut()

        async def resubscribed() -> bool:
            numsub = dict(await raw.pubsub_numsub(f"runa:message:{topic}"))
            return bool(numsub.get(f"runa:message:{topic}".encode()))

        await _eventually(resubscribed)

        # The pattern is sent in the same write as the channel; publish until both arrive.
        async def both() -> bool:
            await d.publish(f"{topic}.x", envelope(f"{topic}.x"))
            await d.publish(topic, envelope(topic))
            return bool(pattern_handler.frames and channel_handler.frames)

        await _eventually(both)
    finally:
        await d.close()


async def test_publish_waits_through_a_short_outage(
    proxy: TcpProxy, recorder: Any, topic: str
) -> None:
    listener = driver(url=REDIS_URL)
    await listener.start()
    handler = recorder()
    await listener.subscribe(f"{topic}.*", "c", None, handler)
    d = proxied(proxy, publish_timeout=5.0)
    await d.start()
    try:
        await proxy.cut()
        proxy.refuse(0.3)
        sent = envelope(f"{topic}.a")
        await asyncio.wait_for(d.publish(sent.topic, sent), TIMEOUT)
        (frame,) = await handler.wait_for(1)
        assert wire.decode(frame) == sent
    finally:
        await d.close()
        await listener.close()


async def test_publish_during_a_long_outage_raises_after_publish_timeout(
    proxy: TcpProxy, topic: str
) -> None:
    d = proxied(proxy, publish_timeout=0.5)
    await d.start()
    try:
        async with proxy.down():
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(PublishError) as info:
                await asyncio.wait_for(d.publish(f"{topic}.a", envelope(f"{topic}.a")), TIMEOUT)
            took = loop.time() - started
            assert 0.4 <= took < 2.0
            assert "publish_timeout" in str(info.value)
            # Concurrent publishes during the outage fail alike.
            results = await asyncio.gather(
                *(d.publish(f"{topic}.b", envelope(f"{topic}.b")) for _ in range(5)),
                return_exceptions=True,
            )
            assert all(isinstance(r, PublishError) for r in results)
        # And publishing works again once the server is back.
        await asyncio.wait_for(d.publish(f"{topic}.c", envelope(f"{topic}.c")), TIMEOUT)
    finally:
        await d.close()


async def test_server_restart_restores_subscriptions(
    private_redis: Any, recorder: Any, topic: str
) -> None:
    d = driver(url=private_redis.url, publish_timeout=5.0)
    await d.start()
    try:
        handler = recorder()
        await d.subscribe(f"{topic}.#", "c", None, handler)
        await private_redis.stop()
        await private_redis.start()

        async def delivered() -> bool:
            await d.publish(f"{topic}.a", envelope(f"{topic}.a"))
            return bool(handler.frames)

        await _eventually(delivered, timeout=10.0)
    finally:
        await d.close()


async def test_a_silent_server_is_noticed_and_left(
    private_redis: Any, recorder: Any, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stops answering (frozen, connection open): PING, then reconnect."""
    import os
    import signal

    caplog.set_level(logging.WARNING, logger="runa_message.redis")
    d = driver(url=private_redis.url, health_check_interval=0.2)
    await d.start()
    try:
        handler = recorder()
        await d.subscribe(f"{topic}.*", "c", None, handler)
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:

            async def noticed() -> bool:
                return "no answer from Redis" in caplog.text

            await _eventually(noticed)
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)

        async def delivered() -> bool:
            await d.publish(f"{topic}.a", envelope(f"{topic}.a"))
            return bool(handler.frames)

        await _eventually(delivered, timeout=10.0)
    finally:
        await d.close()
