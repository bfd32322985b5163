"""The registry on the memory driver: the public API of DESIGN section 2."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import attrs
import pytest

import runa_message as message
from runa_message import (
    ALL,
    BrokerNotFoundError,
    ClosedError,
    DecodeError,
    DriverNotFoundError,
    Envelope,
    ErrorEvent,
    Message,
    MessageError,
    PublishError,
    PublishEvent,
    Registry,
    TopicError,
    UnsupportedFeatureError,
)

TIMEOUT = 5.0


@attrs.frozen
class Notice:
    text: str


class Inbox:
    """Collects what a handler receives and wakes waiters."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, count: int) -> list[Any]:
        async def reach() -> None:
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reach(), TIMEOUT)
        return self.items


async def test_typed_round_trip_with_decorator() -> None:
    registry = Registry()
    inbox = Inbox()

    @registry.subscribe("default", "notice.created")
    async def on_notice(msg: Message[Notice]) -> None:
        inbox.add(msg)

    async with registry:
        sent = await registry.publish("default", "notice.created", Notice("hi"), {"k": "v"})
        (got,) = await inbox.wait_for(1)
    assert got.id == sent
    assert got.topic == "notice.created"
    assert got.payload == Notice("hi")
    assert got.headers == {"k": "v", "content-type": "application/json"}
    assert got.created_at.tzinfo is not None


async def test_payload_type_from_argument_and_broker_handle() -> None:
    registry = Registry()
    audit = registry.broker("audit")
    inbox = Inbox()

    async def handler(msg: Message[Any]) -> None:
        inbox.add(msg.payload)

    audit.subscribe("a.b", handler, payload=Notice)
    async with registry:
        await audit.publish("a.b", {"text": "x"})
        assert await inbox.wait_for(1) == [Notice("x")]


async def test_envelope_annotation_gets_the_raw_envelope() -> None:
    registry = Registry()
    inbox = Inbox()

    async def handler(envelope: Envelope) -> None:
        inbox.add(envelope)

    registry.subscribe("default", "raw.*", handler)
    async with registry:
        await registry.publish_raw("default", "raw.bytes", b"\x00\x01")
        (envelope,) = await inbox.wait_for(1)
    assert envelope.payload == b"\x00\x01"
    assert envelope.headers["content-type"] == "application/octet-stream"


async def test_raw_payload_to_bytes_and_str_handlers() -> None:
    registry = Registry()
    inbox = Inbox()

    async def as_bytes(msg: Message[bytes]) -> None:
        inbox.add(msg.payload)

    async def as_text(msg: Message[str]) -> None:
        inbox.add(msg.payload)

    registry.subscribe("default", "logs.raw", as_bytes)
    registry.subscribe("default", "logs.raw", as_text)
    async with registry:
        await registry.publish_raw("default", "logs.raw", "é".encode())
        assert sorted(map(repr, await inbox.wait_for(2))) == sorted(["'é'", repr("é".encode())])


async def test_sync_handler_runs_in_a_worker_thread() -> None:
    registry = Registry()
    inbox = Inbox()
    loop_thread = threading.get_ident()
    loop = asyncio.get_running_loop()

    def handler(msg: Message[Notice]) -> None:
        loop.call_soon_threadsafe(inbox.add, (threading.get_ident(), msg.payload))

    registry.subscribe("default", "n", handler)
    async with registry:
        await registry.publish("default", "n", Notice("t"))
        ((thread, payload),) = await inbox.wait_for(1)
    assert thread != loop_thread
    assert payload == Notice("t")


async def test_info_and_subscriptions_are_sorted_and_complete() -> None:
    registry = Registry()
    registry.broker("audit", meta={"role": "audit"}, codec="raw")

    async def h(msg: Message[Notice]) -> None: ...

    registry.subscribe("default", "b.*", h, consumer="c2", group="g", concurrency=3)
    registry.subscribe("default", "a", h, consumer="c1")
    registry.subscribe("audit", "x", h, consumer="c3", codec="json")
    infos = registry.info()
    assert [i.name for i in infos] == ["audit", "default"]
    assert infos[0] == message.BrokerInfo(
        "audit", "memory", "application/octet-stream", 1, {"role": "audit"}
    )
    assert infos[1].subscribers == 2
    subs = registry.subscriptions()
    assert [(s.broker, s.topic, s.consumer) for s in subs] == [
        ("audit", "x", "c3"),
        ("default", "a", "c1"),
        ("default", "b.*", "c2"),
    ]
    assert subs[0].codec == "application/json"
    assert subs[2].group == "g"
    assert subs[2].payload == "Notice"
    assert subs[2].concurrency == 3


async def test_broker_updates_only_the_options_given() -> None:
    registry = Registry()
    registry.broker("b", meta={"a": 1}, codec="raw")
    handle = registry.broker("b", meta={"b": 2})
    assert handle.name == "b"
    info = handle.info()
    assert info.codec == "application/octet-stream"
    assert info.meta == {"a": 1, "b": 2}


async def test_wildcards_and_topic_as_published() -> None:
    registry = Registry()
    inbox = Inbox()

    @registry.subscribe("default", "user.*")
    async def handler(msg: Message[int]) -> None:
        inbox.add((msg.topic, msg.payload))

    async with registry:
        await registry.publish("default", "user.created.extra", 0)
        await registry.publish("default", "user/created", 1)
        await registry.publish("default", "users.created", 0)
        await registry.publish("default", "user.deleted", 2)
        assert await inbox.wait_for(2) == [("user/created", 1), ("user.deleted", 2)]
        await registry.join(TIMEOUT)
    assert len(inbox.items) == 2


async def test_groups_get_each_message_once_spread_over_members() -> None:
    registry = Registry()
    inbox = Inbox()
    for member in range(3):

        async def handler(msg: Message[int], member: int = member) -> None:
            inbox.add((member, msg.payload))

        registry.subscribe("default", "jobs.#", handler, consumer=f"m{member}", group="workers")
    async with registry:
        for i in range(30):
            await registry.publish("default", "jobs.run", i)
        items = await inbox.wait_for(30)
        await registry.join(TIMEOUT)
    assert sorted(payload for _, payload in items) == list(range(30))
    assert {member for member, _ in items} == {0, 1, 2}


async def test_order_is_kept_with_concurrency_one() -> None:
    registry = Registry()
    inbox = Inbox()

    @registry.subscribe("default", "seq")
    async def handler(msg: Message[int]) -> None:
        if msg.payload % 7 == 0:
            await asyncio.sleep(0)  # yielding must not reorder
        inbox.add(msg.payload)

    async with registry:
        for i in range(500):
            await registry.publish("default", "seq", i)
        assert await inbox.wait_for(500) == list(range(500))


async def test_concurrency_n_runs_up_to_n_at_once() -> None:
    registry = Registry()
    running = 0
    peak = 0
    release = asyncio.Event()
    reached = asyncio.Event()

    @registry.subscribe("default", "work", concurrency=4)
    async def handler(msg: Message[int]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 4:
            reached.set()
        await release.wait()
        running -= 1

    async with registry:
        for i in range(10):
            await registry.publish("default", "work", i)
        await asyncio.wait_for(reached.wait(), TIMEOUT)
        release.set()
        await registry.join(TIMEOUT)
    assert peak == 4


async def test_backpressure_publish_waits_for_a_full_subscriber() -> None:
    registry = Registry()
    registry.buffer = 8
    gate = asyncio.Event()

    @registry.subscribe("default", "slow")
    async def handler(msg: Message[int]) -> None:
        await gate.wait()

    async with registry:
        # One message in the handler, eight in the buffer: the tenth publish must wait.
        for i in range(9):
            await asyncio.wait_for(registry.publish("default", "slow", i), TIMEOUT)
        blocked = asyncio.ensure_future(registry.publish("default", "slow", 9))
        done, _ = await asyncio.wait({blocked}, timeout=0.2)
        assert not done, "publish should wait while the subscriber's buffer is full"
        gate.set()
        await asyncio.wait_for(blocked, TIMEOUT)


async def test_slow_subscriber_and_100k_publishes_keep_memory_bounded() -> None:
    import tracemalloc

    registry = Registry()
    registry.buffer = 256
    handled = 0
    peak_queue = 0

    @registry.subscribe("default", "flood")
    async def handler(msg: Message[int]) -> None:
        nonlocal handled
        handled += 1
        if handled % 100 == 0:
            await asyncio.sleep(0.0005)  # a slow consumer

    async with registry:
        ((sub, _),) = registry._subscriptions
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(100_000):
                await registry.publish("default", "flood", i)
                if i % 1000 == 0:
                    peak_queue = max(peak_queue, len(sub._queue))
            await registry.join(60)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert handled == 100_000
    assert peak_queue <= 256
    # 256 buffered envelopes are well under 1 MB; an unbounded queue would hold ~100k (>30 MB).
    assert peak < 5_000_000, peak


async def test_handler_error_goes_to_on_error_and_subscription_continues() -> None:
    registry = Registry()
    errors: list[ErrorEvent] = []
    inbox = Inbox()

    @registry.subscribe("default", "jobs", consumer="worker")
    async def handler(msg: Message[int]) -> None:
        if msg.payload == 1:
            raise RuntimeError("boom")
        inbox.add(msg.payload)

    registry.on_error(ALL, errors.append)
    async with registry:
        for i in range(3):
            await registry.publish("default", "jobs", i)
        assert await inbox.wait_for(2) == [0, 2]
    (event,) = errors
    assert event.broker == "default"
    assert event.topic == "jobs"
    assert event.consumer == "worker"
    assert isinstance(event.error, RuntimeError)
    assert event.envelope is not None
    assert event.outcome == "dropped"


async def test_wrong_payload_type_is_a_decode_error_naming_the_field() -> None:
    registry = Registry()
    errors: list[ErrorEvent] = []
    inbox = Inbox()

    @registry.subscribe("default", "n")
    async def handler(msg: Message[Notice]) -> None:
        inbox.add(msg.payload)

    async def async_hook(event: ErrorEvent) -> None:
        errors.append(event)

    registry.broker("default", on_error=async_hook)
    async with registry:
        await registry.publish("default", "n", {"txt": "typo"})
        await registry.publish("default", "n", Notice("ok"))
        await inbox.wait_for(1)
    assert isinstance(errors[0].error, DecodeError)
    assert "Notice.text" in str(errors[0].error)


async def test_malformed_frame_reaches_on_error_with_the_data() -> None:
    registry = Registry()
    driver = message.MemoryDriver()
    registry.register_driver("mem", driver)
    registry.broker("default", driver="mem")
    errors: list[ErrorEvent] = []
    inbox = Inbox()
    registry.on_error("default", errors.append)

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        inbox.add(msg.payload)

    async with registry:
        await driver.publish_frame("t", b"garbage")
        await registry.publish("default", "t", 5)
        assert await inbox.wait_for(1) == [5]
    (event,) = errors
    assert event.envelope is None
    assert event.data == b"garbage"
    assert isinstance(event.error, DecodeError)


async def test_without_error_hooks_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        raise ValueError("bad thing")

    async with registry:
        await registry.publish("default", "t", 1)
        await registry.join(TIMEOUT)
    assert "bad thing" in caplog.text


async def test_a_raising_hook_does_not_break_delivery() -> None:
    registry = Registry()
    inbox = Inbox()

    def broken(event: Any) -> None:
        raise RuntimeError("hook bug")

    registry.on_error(ALL, broken)
    registry.on_publish(ALL, broken)

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        inbox.add(msg.payload)
        raise ValueError

    async with registry:
        await registry.publish("default", "t", 1)
        await registry.publish("default", "t", 2)
        assert await inbox.wait_for(2) == [1, 2]


async def test_middleware_order_registry_then_broker_then_handler() -> None:
    registry = Registry()
    calls: list[str] = []
    inbox = Inbox()

    def tracer(name: str) -> Any:
        async def middleware(envelope: Envelope, call_next: Any) -> None:
            calls.append(f"{name}>")
            await call_next(envelope)
            calls.append(f"<{name}")

        return middleware

    registry.use("default", tracer("broker1"), tracer("broker2"))
    registry.use(ALL, tracer("global"))

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        calls.append("handler")
        inbox.add(msg)

    async with registry:
        await registry.publish("default", "t", 1)
        await inbox.wait_for(1)
        await registry.join(TIMEOUT)
    assert calls == [
        "global>",
        "broker1>",
        "broker2>",
        "handler",
        "<broker2",
        "<broker1",
        "<global",
    ]


async def test_subscribe_middleware_can_change_or_drop_the_envelope() -> None:
    registry = Registry()
    inbox = Inbox()

    async def rewrite(envelope: Envelope, call_next: Any) -> None:
        if envelope.headers.get("skip"):
            return
        await call_next(attrs.evolve(envelope, payload=b'{"text": "changed"}'))

    registry.use("default", rewrite)

    @registry.subscribe("default", "t")
    async def handler(msg: Message[Notice]) -> None:
        inbox.add(msg.payload)

    async with registry:
        await registry.publish("default", "t", Notice("x"), {"skip": True})
        await registry.publish("default", "t", Notice("original"))
        assert await inbox.wait_for(1) == [Notice("changed")]


async def test_publish_middleware_and_on_publish_hooks() -> None:
    registry = Registry()
    events: list[PublishEvent] = []
    order: list[str] = []
    inbox = Inbox()

    async def stamp(topic: str, envelope: Envelope, call_next: Any) -> None:
        order.append("global")
        headers = {**envelope.headers, "stamped": "yes"}
        await call_next(topic, attrs.evolve(envelope, headers=headers))

    async def broker_mw(topic: str, envelope: Envelope, call_next: Any) -> None:
        order.append("broker")
        await call_next(topic, envelope)

    registry.use_publish(ALL, stamp)
    registry.broker("default", publish_middlewares=[broker_mw], on_publish=[events.append])

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        inbox.add(msg.headers)

    async with registry:
        await registry.publish("default", "t", 1)
        (headers,) = await inbox.wait_for(1)
    assert order == ["global", "broker"]
    assert headers["stamped"] == "yes"
    (event,) = events
    assert event.error is None
    assert event.envelope.headers["stamped"] == "yes"


async def test_on_publish_sees_failures_and_publish_error_is_raised() -> None:
    class FailingDriver(message.MemoryDriver):
        async def publish(self, topic: str, envelope: Envelope) -> None:
            raise ConnectionError("broker gone")

    registry = Registry()
    registry.register_driver("failing", FailingDriver())
    registry.broker("default", driver="failing")
    events: list[PublishEvent] = []
    registry.on_publish("default", events.append)
    async with registry:
        with pytest.raises(PublishError, match="broker gone"):
            await registry.publish("default", "t", 1)
    assert isinstance(events[0].error, PublishError)


async def test_topic_validation_happens_before_anything_is_sent() -> None:
    registry = Registry()
    sent: list[str] = []
    registry.on_publish(ALL, lambda event: sent.append(event.topic))
    async with registry:
        for topic in ["", "a..b", "a b", "a.*", "a.#"]:
            with pytest.raises(TopicError):
                await registry.publish("default", topic, 1)
    assert sent == []


async def test_bad_pattern_is_rejected_at_subscribe() -> None:
    registry = Registry()
    with pytest.raises(TopicError, match="only be the last"):
        registry.subscribe("default", "a.#.b", lambda msg: None)


async def test_start_reports_unknown_broker_with_suggestion() -> None:
    registry = Registry()
    registry.broker("audit")
    registry.subscribe("audti", "t", lambda msg: None, payload=int)
    with pytest.raises(BrokerNotFoundError) as info:
        await registry.start()
    text = str(info.value)
    assert "'audti'" in text
    assert "did you mean 'audit'" in text
    assert "registry.broker('audti'" in text


async def test_start_reports_unknown_driver_naming_broker_and_install_hint() -> None:
    registry = Registry()
    registry.broker("events", driver="natss")
    with pytest.raises(DriverNotFoundError) as info:
        await registry.start()
    text = str(info.value)
    assert "broker 'events'" in text
    assert "'natss'" in text
    assert "memory" in text  # installed drivers are listed
    assert "did you mean 'nats'" in text


async def test_unknown_well_known_driver_says_which_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runa_message import plugins

    monkeypatch.setattr(plugins, "load_plugin", lambda name: None)
    registry = Registry()
    registry.broker("default", driver="mqtt")
    with pytest.raises(DriverNotFoundError, match="pip install runa-message-mqtt"):
        await registry.start()


async def test_duplicate_subscription_identity_fails_start() -> None:
    registry = Registry()

    async def h(msg: Message[int]) -> None: ...

    registry.subscribe("default", "t", h)
    registry.subscribe("default", "t", h)
    with pytest.raises(MessageError, match="distinct consumer="):
        await registry.start()


async def test_several_problems_are_reported_together() -> None:
    registry = Registry()
    registry.subscribe("nope1", "t", lambda m: None, payload=int)
    registry.subscribe("nope2", "t", lambda m: None, payload=int)
    with pytest.raises(BrokerNotFoundError, match="2 problems"):
        await registry.start()


async def test_group_on_a_driver_without_groups_fails_before_connecting() -> None:
    started = False

    class NoGroups(message.MemoryDriver):
        capabilities = message.Capabilities(wildcards=True, groups=False)

        async def start(self) -> None:
            nonlocal started
            started = True

    registry = Registry()
    registry.register_driver("ng", NoGroups())
    registry.broker("default", driver="ng")
    registry.subscribe("default", "t", lambda m: None, payload=int, group="g")
    with pytest.raises(UnsupportedFeatureError, match="no consumer groups"):
        await registry.start()
    assert not started


async def test_publish_before_start_and_after_close() -> None:
    registry = Registry()
    with pytest.raises(MessageError, match="not started"):
        await registry.publish("default", "t", 1)
    async with registry:
        with pytest.raises(BrokerNotFoundError):
            await registry.publish("nope", "t", 1)
    with pytest.raises(ClosedError):
        await registry.publish("default", "t", 1)
    await registry.close()  # idempotent
    await registry.close()


async def test_registration_after_start_is_refused() -> None:
    registry = Registry()
    async with registry:
        with pytest.raises(MessageError, match="before"):
            registry.subscribe("default", "t", lambda m: None, payload=int)
        with pytest.raises(MessageError, match="before"):
            registry.use(ALL)


async def test_close_drains_in_flight_handlers() -> None:
    registry = Registry()
    started = asyncio.Event()
    finished: list[int] = []

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        started.set()
        await asyncio.sleep(0.05)
        finished.append(msg.payload)

    await registry.start()
    for i in range(3):
        await registry.publish("default", "t", i)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    await registry.close()
    assert finished == [0, 1, 2]


async def test_close_cancels_handlers_after_the_timeout() -> None:
    registry = Registry()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await registry.start()
    await registry.publish("default", "t", 1)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    await asyncio.wait_for(registry.close(timeout=0.05), TIMEOUT)
    assert cancelled.is_set()


async def test_concurrent_close_calls_wait_for_the_same_close() -> None:
    registry = Registry()
    await registry.start()
    await asyncio.gather(registry.close(), registry.close(), registry.close())
    with pytest.raises(ClosedError):
        await registry.publish("default", "t", 1)


async def test_brokers_on_memory_are_isolated() -> None:
    registry = Registry()
    registry.broker("other")
    inbox = Inbox()

    @registry.subscribe("other", "t")
    async def handler(msg: Message[int]) -> None:
        inbox.add(msg.payload)

    async with registry:
        await registry.publish("default", "t", 1)
        await registry.publish("other", "t", 2)
        assert await inbox.wait_for(1) == [2]
        await registry.join(TIMEOUT)
    assert inbox.items == [2]


async def test_handler_annotation_must_be_a_message() -> None:
    registry = Registry()

    async def bad(msg: int) -> None: ...

    with pytest.raises(MessageError, match=r"Message\[YourType\]"):
        registry.subscribe("default", "t", bad)

    async def none() -> None: ...

    with pytest.raises(MessageError, match="takes no argument"):
        registry.subscribe("default", "t", none)
