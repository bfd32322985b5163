"""In process, the memory driver hands a subscription the published value as its Message.

Only where decoding would give an equal, immutable value of the subscription's type; every
other reader (another type, middleware, an envelope handler, an error event, a hook) gets
what the network drivers give.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

import attrs
import pytest

import runa_message as message
from runa_message import Envelope, ErrorEvent, Message, Registry
from runa_message.codec import JSON, JSONCodec, converter
from runa_message.memory import MemoryDriver
from runa_message.testing.inbox import ErrorInbox, FrameInbox, Inbox

TIMEOUT = 5.0


@attrs.frozen
class Notice:
    id: int
    text: str


@attrs.define
class Draft:
    text: str


@attrs.frozen
class Count:
    n: int


async def publish_one(registry: Registry, value: Any, *inboxes: Inbox) -> str:
    async with registry:
        sent = await registry.publish("default", "notice.created", value)
        for inbox in inboxes:
            await inbox.wait_for(1, TIMEOUT)
    return sent


async def test_a_typed_subscription_gets_the_published_value_itself() -> None:
    registry = Registry(None)
    inbox = Inbox()
    registry.subscribe("default", "notice.*", inbox, payload=Notice)
    value = Notice(1, "hello")
    sent = await publish_one(registry, value, inbox)
    (got,) = inbox.items
    assert type(got) is Message
    assert got.payload is value
    assert got.id == sent
    assert got.topic == "notice.created"
    assert got.headers == {"content-type": "application/json"}
    assert got.created_at.tzinfo is timezone.utc


async def test_subscriptions_of_one_type_share_one_message() -> None:
    registry = Registry(None)
    first, second, grouped = Inbox(), Inbox(), Inbox()
    registry.subscribe("default", "notice.*", first, payload=Notice, consumer="a")
    registry.subscribe("default", "notice.created", second, payload=Notice, consumer="b")
    registry.subscribe("default", "#", grouped, payload=Notice, consumer="c", group="g")
    await publish_one(registry, Notice(1, "hello"), first, second, grouped)
    assert first.items[0] is second.items[0] is grouped.items[0]


async def test_other_readers_get_what_a_network_driver_gives() -> None:
    registry = Registry(None)
    as_dict, as_any, as_bytes = Inbox(), Inbox(), Inbox()
    envelopes: list[Envelope] = []
    frames: list[Envelope] = []
    registry.subscribe("default", "notice.*", as_dict, payload=dict, consumer="dict")
    registry.subscribe("default", "notice.*", as_any, consumer="any", payload=Any)
    registry.subscribe("default", "notice.*", as_bytes, payload=bytes, consumer="raw", codec="raw")

    async def envelope_handler(envelope: Envelope) -> None:
        envelopes.append(envelope)

    async def passing(envelope: Envelope, call_next: Any) -> None:
        frames.append(envelope)
        await call_next(envelope)

    registry.subscribe("default", "notice.*", envelope_handler, consumer="envelope")
    middle = Inbox()
    registry.broker("other", driver="memory", middlewares=[passing])
    registry.subscribe("other", "notice.*", middle, payload=Notice, consumer="middle")
    value = Notice(7, "hi")
    async with registry:
        sent = await registry.publish("default", "notice.created", value)
        await registry.publish("other", "notice.created", value)
        for inbox in (as_dict, as_any, as_bytes, middle):
            await inbox.wait_for(1, TIMEOUT)
        await registry.join(TIMEOUT)
    data = JSON.encode(value)
    assert as_dict.payloads == [{"id": 7, "text": "hi"}]
    assert as_any.payloads == [{"id": 7, "text": "hi"}]
    assert as_bytes.payloads == [data]
    (envelope,) = envelopes
    assert type(envelope) is Envelope
    assert (envelope.id, envelope.payload) == (sent, data)
    assert envelope.headers == {"content-type": "application/json"}
    # Through middleware the handler gets the decoded copy, as from any driver.
    assert [type(frame) for frame in frames] == [Envelope]
    assert middle.payloads == [value]
    assert middle.payloads[0] is not value


async def test_mutable_values_are_decoded_so_handlers_get_copies() -> None:
    registry = Registry(None)
    drafts, dicts = Inbox(), Inbox()
    registry.subscribe("default", "notice.*", drafts, payload=Draft, consumer="draft")
    registry.subscribe("default", "notice.*", dicts, payload=dict, consumer="dict")
    draft, mapping = Draft("x"), {"text": "x"}
    async with registry:
        await registry.publish("default", "notice.created", draft)
        await registry.publish("default", "notice.created", mapping)
        await drafts.wait_for(2, TIMEOUT)
        await dicts.wait_for(2, TIMEOUT)
    assert drafts.payloads[0] == draft
    assert drafts.payloads[0] is not draft
    assert dicts.payloads[1] == mapping
    assert dicts.payloads[1] is not mapping


async def test_with_a_publish_hook_the_envelope_path_gives_an_equal_value() -> None:
    registry = Registry(None)
    inbox = Inbox()
    published: list[Envelope] = []
    registry.on_publish(message.ALL, lambda event: published.append(event.envelope))
    registry.subscribe("default", "notice.*", inbox, payload=Notice)
    value = Notice(1, "hello")
    await publish_one(registry, value, inbox)
    assert inbox.payloads == [value]
    assert inbox.payloads[0] is not value
    assert published[0].payload == JSON.encode(value)


async def test_a_value_that_does_not_fit_another_type_is_a_decode_error() -> None:
    registry = Registry(None)
    errors = ErrorInbox()
    registry.on_error(message.ALL, errors)
    counts, notices = Inbox(), Inbox()
    registry.subscribe("default", "notice.*", counts, payload=Count, consumer="count")
    registry.subscribe("default", "notice.*", notices, payload=Notice, consumer="notice")
    value = Notice(1, "hello")
    sent = await publish_one(registry, value, notices)
    await errors.wait_for(1, TIMEOUT)
    (event,) = errors.items
    assert isinstance(event.error, message.DecodeError)
    assert "Count" in str(event.error)
    assert isinstance(event.envelope, Envelope)
    assert (event.envelope.id, event.envelope.payload) == (sent, JSON.encode(value))
    assert counts.items == []
    assert notices.payloads == [value]


async def test_a_handler_error_reports_the_envelope() -> None:
    registry = Registry(None)
    errors = ErrorInbox()
    registry.on_error(message.ALL, errors)

    @registry.subscribe("default", "notice.*")
    async def fail(msg: Message[Notice]) -> None:
        raise RuntimeError(f"cannot handle {msg.payload.text}")

    async with registry:
        sent = await registry.publish("default", "notice.created", Notice(1, "this"))
        await errors.wait_for(1, TIMEOUT)
    event: ErrorEvent = errors.items[0]
    assert str(event.error) == "cannot handle this"
    assert isinstance(event.envelope, Envelope)
    assert event.envelope.id == sent
    assert event.envelope.payload == b'{"id":1,"text":"this"}'


async def test_a_bool_for_an_int_subscription_is_decoded_as_json_would() -> None:
    registry = Registry(None)
    inbox = Inbox()
    registry.subscribe("default", "notice.*", inbox, payload=int)
    await publish_one(registry, True, inbox)
    assert inbox.payloads == [JSON.decode(b"true", int)]
    assert type(inbox.payloads[0]) is int


async def test_a_driver_level_handler_on_the_memory_driver_gets_envelopes() -> None:
    driver = MemoryDriver()
    registry = Registry(None)
    registry.register_driver("memory", driver)
    async with registry:
        frames = FrameInbox(TIMEOUT)
        handle = await driver.subscribe("notice.*", "direct", None, frames)
        sent = await registry.publish("default", "notice.created", Notice(1, "hello"))
        await frames.wait_for(1)
        await handle.close()
    (envelope,) = frames.items
    assert isinstance(envelope, Envelope)
    assert (envelope.id, envelope.payload) == (sent, b'{"id":1,"text":"hello"}')


async def test_a_publisher_that_never_waits_lets_handlers_run_every_burst() -> None:
    registry = Registry(None)
    seen: list[int] = []
    during: list[int] = []

    @registry.subscribe("default", "count")
    async def handle(msg: Message[int]) -> None:
        seen.append(msg.payload)

    total = 5 * MemoryDriver.burst + 7
    async with registry:
        for n in range(total):
            await registry.publish("default", "count", n)
            during.append(len(seen))
        await registry.join(TIMEOUT)
    assert seen == list(range(total))
    # Handlers ran after each burst of publishes, not only once the publisher was done:
    # they caught up five times, and never fell more than a burst behind.
    caught_up = [n for n, handled in enumerate(during) if handled == n + 1]
    assert len(caught_up) >= 5
    assert max(n + 1 - handled for n, handled in enumerate(during)) <= MemoryDriver.burst


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_order_and_count_hold_for_many_values(concurrency: int) -> None:
    registry = Registry(None)
    inbox = Inbox()
    registry.subscribe("default", "notice.*", inbox, payload=Notice, concurrency=concurrency)
    values = [Notice(n, f"n{n}") for n in range(3000)]
    async with registry:
        for value in values:
            await registry.publish("default", "notice.created", value)
        await inbox.wait_for(len(values), TIMEOUT)
    if concurrency == 1:
        assert inbox.payloads == values
    assert sorted(inbox.payloads, key=lambda v: v.id) == values
    assert all(
        got is sent
        for got, sent in zip(sorted(inbox.payloads, key=lambda v: v.id), values, strict=True)
    )


async def test_a_closed_memory_broker_refuses_the_local_path_too() -> None:
    registry = Registry(None)
    registry.subscribe("default", "notice.*", Inbox(), payload=Notice)
    await registry.start()
    await registry.close()
    with pytest.raises(message.ClosedError):
        await registry.publish("default", "notice.created", Notice(1, "late"))


async def test_the_local_path_is_not_taken_for_a_memory_driver_subclass() -> None:
    class Counting(MemoryDriver):
        def __init__(self) -> None:
            super().__init__()
            self.published: list[Any] = []

        async def publish(self, topic: str, envelope: Any) -> None:
            self.published.append(envelope)
            await super().publish(topic, envelope)

    driver = Counting()
    registry = Registry(None)
    registry.register_driver("memory", driver)
    inbox = Inbox()
    registry.subscribe("default", "notice.*", inbox, payload=Notice)
    await publish_one(registry, Notice(1, "x"), inbox)
    assert [type(e) for e in driver.published] == [Envelope]
    assert inbox.payloads == [Notice(1, "x")]


async def test_a_subscription_decoding_with_its_own_json_codec_decodes() -> None:
    """Brokers sharing a memory bus: the reader's codec, with its own hooks, does the decoding."""
    own = converter.copy()
    own.register_structure_hook(Notice, lambda data, _: Notice(data["id"], data["text"].upper()))
    registry = Registry(None)
    registry.register_driver("bus", MemoryDriver())
    orders = registry.broker("orders", driver="bus")
    registry.broker("billing", driver="bus", codec=JSONCodec(converter=own))
    plain, hooked = Inbox(), Inbox()
    orders.subscribe("notice.*", plain, payload=Notice)
    registry.subscribe("billing", "notice.*", hooked, payload=Notice)
    value = Notice(1, "hello")
    async with registry:
        await orders.publish("notice.created", value)
        await plain.wait_for(1, TIMEOUT)
        await hooked.wait_for(1, TIMEOUT)
    assert plain.payloads[0] is value
    assert hooked.payloads == [Notice(1, "HELLO")]
