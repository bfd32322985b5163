"""The AMQP driver against the Driver protocol, on the local RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from runa_message import wire
from runa_message.errors import ClosedError, ConnectError, PublishError
from runa_message.ids import new_id
from runa_message.message import Envelope
from runa_message.testing import TcpProxy
from runa_message.topic import match_topic
from runa_message_amqp import AmqpDriver, driver
from runa_message_amqp.driver import RETRY_HEADER

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def envelope(topic: str, payload: bytes = b"{}") -> Envelope:
    return Envelope(new_id(), topic, payload, {"content-type": "application/json"})


async def started(topology: Any, **options: Any) -> AmqpDriver:
    amqp = topology.driver(**options)
    await amqp.start()
    return amqp


# -- names ------------------------------------------------------------------------------


def test_routing_and_binding_keys() -> None:
    amqp = AmqpDriver(prefix="app.")
    assert amqp.routing_key("user/created:now") == "app.user.created.now"
    assert amqp.binding_key("user/*:+") == "app.user.*.*"
    assert amqp.binding_key("user.#") == "app.user.#"
    assert amqp.binding_key("**") == "app.#"
    assert amqp.capabilities.max_topic_length == 255 - 4


def test_group_queue_names_hold_the_pattern() -> None:
    amqp = AmqpDriver()
    one = amqp.group_queue("user.*", "billing")
    assert one.startswith("runa.message.group.billing.")
    assert amqp.group_queue("user/+", "billing") == one  # the same selection
    assert amqp.group_queue("user.created", "billing") != one
    assert AmqpDriver(prefix="x.").group_queue("user.*", "billing") != one


def test_repr_hides_the_password() -> None:
    amqp = driver(url="amqp://user:s3cret-pw@example.com:5672/vhost")
    assert "s3cret-pw" not in repr(amqp)
    assert "s3cret-pw" not in repr(amqp.settings)
    assert "example.com" in repr(amqp)


def test_settings_or_keywords_not_both() -> None:
    with pytest.raises(TypeError):
        AmqpDriver(AmqpDriver().settings, prefetch=3)


# -- publish and subscribe ---------------------------------------------------------------


async def test_broadcast_reaches_every_subscription(topology: Any, recorder: Any) -> None:
    amqp = await started(topology)
    first, second = recorder(), recorder()
    await amqp.subscribe("user.*", "one", None, first)
    await amqp.subscribe("user.*", "two", None, second)
    sent = envelope("user/created", b'{"name": "ada"}')
    await amqp.publish("user/created", sent)
    await first.wait_id(sent.id)
    await second.wait_id(sent.id)
    got = first.envelopes[0]
    assert (got.id, got.topic, got.payload, got.headers) == (
        sent.id,
        "user/created",
        sent.payload,
        sent.headers,
    )
    assert got.created_at == sent.created_at


PATTERNS = ["user.*", "user.#", "*.created", "#", "user/+/x", "user:**", "a.b.c", "*", "*.*.#"]
TOPICS = [
    "user",
    "user.created",
    "user/created",
    "user.created.x",
    "user.a.x",
    "order.created",
    "a.b.c",
    "a:b/c",
    "a.b.c.d",
    "x",
]


async def test_delivery_equals_match_topic(topology: Any, recorder: Any) -> None:
    amqp = await started(topology)
    recorders = {pattern: recorder() for pattern in PATTERNS}
    for pattern, rec in recorders.items():
        await amqp.subscribe(pattern, pattern, None, rec)
    for topic in TOPICS:
        await amqp.publish(topic, envelope(topic))
    # One marker per pattern, published last: once it is in, everything before it is.
    markers = {}
    for pattern in PATTERNS:
        topic = ".".join(
            "m" if seg in ("*", "+", "#", "**") else seg
            for seg in pattern.replace("/", ".").replace(":", ".").split(".")
        )
        marker = envelope(topic)
        markers[pattern] = marker.id
        await amqp.publish(topic, marker)
    marker_ids = set(markers.values())
    for pattern, rec in recorders.items():
        await rec.wait_id(markers[pattern])
        expected = sorted(t for t in TOPICS if match_topic(pattern, t))
        assert sorted(rec.topics(but=marker_ids)) == expected, pattern


async def test_group_members_compete(topology: Any, recorder: Any) -> None:
    one, two = await started(topology), await started(topology)
    first, second = recorder(), recorder()
    await one.subscribe("job.#", "worker", "workers", first)
    await two.subscribe("job.#", "worker", "workers", second)
    sent = [envelope(f"job.{i}") for i in range(20)]
    for item in sent:
        await one.publish(item.topic, item)
    await first.wait_for(lambda: len(first.envelopes) + len(second.envelopes) >= 20)
    ids = [e.id for e in first.envelopes + second.envelopes]
    assert sorted(ids) == sorted(e.id for e in sent)
    assert first.envelopes
    assert second.envelopes


async def test_group_keeps_messages_for_an_absent_member(topology: Any, recorder: Any) -> None:
    publisher = await started(topology)
    member = await started(topology)
    subscription = await member.subscribe("audit.*", "auditor", "audit", recorder())
    await subscription.close()
    sent = [envelope("audit.login") for _ in range(3)]
    for item in sent:
        await publisher.publish(item.topic, item)
    back = recorder()
    await member.subscribe("audit.*", "auditor", "audit", back)
    await back.wait_for(lambda: len(back.envelopes) == 3)
    assert [e.id for e in back.envelopes] == [e.id for e in sent]


async def test_one_group_two_patterns_two_queues(topology: Any, recorder: Any) -> None:
    amqp = await started(topology)
    wide, narrow = recorder(), recorder()
    await amqp.subscribe("a.*", "wide", "g", wide)
    await amqp.subscribe("a.b", "narrow", "g", narrow)
    assert amqp.group_queue("a.*", "g") != amqp.group_queue("a.b", "g")
    only_wide, both = envelope("a.c"), envelope("a.b")
    await amqp.publish(only_wide.topic, only_wide)
    await amqp.publish(both.topic, both)
    await wide.wait_id(both.id)
    await narrow.wait_id(both.id)
    assert [e.id for e in wide.envelopes] == [only_wide.id, both.id]
    assert [e.id for e in narrow.envelopes] == [both.id]


async def test_concurrent_calls_up_to_prefetch(topology: Any) -> None:
    amqp = await started(topology, prefetch=4)
    running = 0
    peak = 0
    release = asyncio.Event()
    reached = asyncio.Event()

    class Slow:
        async def __call__(
            self, frame: Any, /, *, retry: bool = False, dead_letter: bool = False
        ) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running >= 4:
                reached.set()
            await release.wait()
            running -= 1

        async def report(self, error: BaseException, data: bytes | None = None) -> None:
            pass

    await amqp.subscribe("slow", "slow", "slow", Slow())
    for _ in range(8):
        await amqp.publish("slow", envelope("slow"))
    await asyncio.wait_for(reached.wait(), 10)
    assert peak == 4
    release.set()


# -- acknowledgements, retries and dead letters -------------------------------------------


async def test_failing_message_is_retried_then_dead_lettered(
    topology: Any, recorder: Any, dead_letters: Any
) -> None:
    amqp = await started(topology, max_retries=2)
    dead = await dead_letters(amqp.settings.dead_letter_queue)
    failing = recorder(fail=-1)
    await amqp.subscribe("pay.*", "payer", "payers", failing)
    sent = envelope("pay.now")
    await amqp.publish(sent.topic, sent)
    message = await dead.get()
    assert wire.decode(message.body).id == sent.id
    assert message.headers[RETRY_HEADER] == 2
    assert message.headers["x-death"]
    assert message.routing_key == amqp.group_queue("pay.*", "payers")
    assert [(retry, dead_letter) for _, retry, dead_letter in failing.calls] == [
        (True, True),
        (True, True),
        (False, True),
    ]


async def test_a_message_that_succeeds_on_retry_is_acked(
    topology: Any, recorder: Any, admin: AbstractConnection
) -> None:
    amqp = await started(topology)
    flaky = recorder(fail=1)
    subscription = await amqp.subscribe("pay.*", "payer", "payers", flaky)
    sent = envelope("pay.now")
    await amqp.publish(sent.topic, sent)
    await flaky.wait_for(lambda: len(flaky.envelopes) == 2)
    await subscription.close()
    channel = await admin.channel()
    queue = await channel.declare_queue(amqp.group_queue("pay.*", "payers"), passive=True)
    assert queue.declaration_result.message_count == 0
    assert [e.id for e in flaky.envelopes] == [sent.id, sent.id]


async def test_malformed_frame_is_dead_lettered_at_once(
    topology: Any, recorder: Any, admin: AbstractConnection, dead_letters: Any
) -> None:
    amqp = await started(topology)
    dead = await dead_letters(amqp.settings.dead_letter_queue)
    rec = recorder()
    await amqp.subscribe("raw.*", "raw", None, rec)
    channel = await admin.channel()
    exchange = await channel.get_exchange(topology.exchange)
    await exchange.publish(aio_pika.Message(b"not an envelope"), routing_key="raw.bytes")
    message = await dead.get()
    assert message.body == b"not an envelope"
    assert RETRY_HEADER not in (message.headers or {})
    assert len(rec.calls) == 1
    assert rec.calls[0][2] is True  # dead_letter=True told the registry


async def test_a_payload_that_does_not_fit_is_dead_lettered_at_once(
    topology: Any, recorder: Any, dead_letters: Any
) -> None:
    amqp = await started(topology, max_retries=3)
    dead = await dead_letters(amqp.settings.dead_letter_queue)
    misfit = recorder(misfit=True)
    await amqp.subscribe("pay.*", "payer", "payers", misfit)
    sent = envelope("pay.now")
    await amqp.publish(sent.topic, sent)
    message = await dead.get()
    assert wire.decode(message.body).id == sent.id
    assert RETRY_HEADER not in (message.headers or {})  # never retried
    assert [(retry, dead_letter) for _, retry, dead_letter in misfit.calls] == [(True, True)]


async def test_without_dead_letters_a_payload_that_does_not_fit_is_dropped_at_once(
    topology: Any, recorder: Any
) -> None:
    amqp = await started(topology, max_retries=3, dead_letter=False)
    misfit = recorder(misfit=True)
    await amqp.subscribe("drop.*", "dropper", "droppers", misfit)
    await amqp.publish("drop.it", envelope("drop.it"))
    await misfit.wait_for(lambda: len(misfit.calls) == 1)
    marker = envelope("drop.marker")
    misfit.misfit = False
    await amqp.publish(marker.topic, marker)
    await misfit.wait_id(marker.id)
    assert len(misfit.calls) == 2  # the dropped one did not come back


async def test_without_dead_letters_exhausted_messages_are_dropped(
    topology: Any, recorder: Any, admin: AbstractConnection
) -> None:
    amqp = await started(topology, max_retries=1, dead_letter=False)
    failing = recorder(fail=-1)
    await amqp.subscribe("drop.*", "dropper", "droppers", failing)
    await amqp.publish("drop.it", envelope("drop.it"))
    await failing.wait_for(lambda: len(failing.calls) == 2)
    assert [(r, d) for _, r, d in failing.calls] == [(True, False), (False, False)]
    marker = envelope("drop.marker")
    failing.fail = 0
    await amqp.publish(marker.topic, marker)
    await failing.wait_id(marker.id)
    assert len(failing.calls) == 3  # the dropped one did not come back


# -- lifecycle ----------------------------------------------------------------------------


async def test_close_is_idempotent_and_publish_after_close_fails(topology: Any) -> None:
    amqp = await started(topology)
    connection = amqp._connection
    await amqp.close()
    await amqp.close()
    assert connection is not None
    assert connection.is_closed
    with pytest.raises(ClosedError):
        await amqp.publish("a.b", envelope("a.b"))


async def test_injected_connection_is_never_closed(topology: Any, recorder: Any) -> None:
    connection = await aio_pika.connect_robust(topology.settings().url)
    try:
        amqp = topology.driver(client=connection)
        await amqp.start()
        rec = recorder()
        await amqp.subscribe("a.*", "a", None, rec)
        sent = envelope("a.b")
        await amqp.publish(sent.topic, sent)
        await rec.wait_id(sent.id)
        await amqp.close()
        assert not connection.is_closed
    finally:
        await connection.close()


async def test_subscription_close_waits_for_the_handler(topology: Any) -> None:
    amqp = await started(topology)
    entered, release, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class Held:
        async def __call__(
            self, frame: Any, /, *, retry: bool = False, dead_letter: bool = False
        ) -> None:
            entered.set()
            await release.wait()
            done.set()

        async def report(self, error: BaseException, data: bytes | None = None) -> None:
            pass

    subscription = await amqp.subscribe("held", "held", "held", Held())
    await amqp.publish("held", envelope("held"))
    await asyncio.wait_for(entered.wait(), 10)
    closing = asyncio.create_task(subscription.close())
    await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    await asyncio.wait_for(closing, 10)
    assert done.is_set()


async def test_failed_login_never_shows_the_password(
    topology: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    amqp = topology.driver(url="amqp://guest:s3cret-pw@127.0.0.1:5672/", connect_timeout=5)
    with pytest.raises(ConnectError) as raised:
        await amqp.start()
    assert "s3cret-pw" not in str(raised.value)
    assert "guest:***@" in str(raised.value)
    assert "s3cret-pw" not in caplog.text
    assert "s3cret-pw" not in repr(amqp)


# -- outages ------------------------------------------------------------------------------


async def test_publish_during_an_outage_times_out(topology: Any) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        amqp = topology.driver(
            url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", publish_timeout=0.5
        )
        await amqp.start()
        async with proxy.down():
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(PublishError, match="publish_timeout"):
                await amqp.publish("a.b", envelope("a.b"))
            assert loop.time() - began < 3
        await amqp.close()


async def test_publish_waits_for_the_broker_to_come_back(topology: Any, recorder: Any) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        amqp = topology.driver(
            url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", publish_timeout=10
        )
        await amqp.start()
        listener = await started(topology)
        rec = recorder()
        await listener.subscribe("a.*", "a", None, rec)
        await proxy.cut()
        proxy.refuse(seconds=0.5)
        sent = envelope("a.b")
        await amqp.publish(sent.topic, sent)
        await rec.wait_id(sent.id)
        await amqp.close()


@pytest.mark.parametrize("group", [None, "g"])
async def test_subscriptions_come_back_after_a_cut(
    topology: Any, recorder: Any, group: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        amqp = topology.driver(url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        await amqp.start()
        publisher = await started(topology)
        rec = recorder()
        await amqp.subscribe("a.*", "a", group, rec)
        async with proxy.down():
            pass
        await deliver_eventually(publisher, rec, "a.b")
        before = proxy.accepted
        await proxy.cut()
        await deliver_eventually(publisher, rec, "a.c")
        assert proxy.accepted > before
        await amqp.close()
    assert "guest:guest@" not in caplog.text  # reconnection logs show no password


async def test_consumer_cancelled_by_the_broker_comes_back(
    topology: Any, recorder: Any, admin: AbstractConnection
) -> None:
    # The broker cancels consumers when their queue goes away (a cluster node leaving, a
    # queue deleted by an operator): the subscription must consume again by itself.
    amqp = await started(topology)
    rec = recorder()
    await amqp.subscribe("a.*", "a", "g", rec)
    channel = await admin.channel()
    await channel.queue_delete(amqp.group_queue("a.*", "g"))
    await deliver_eventually(amqp, rec, "a.b")


async def deliver_eventually(publisher: AmqpDriver, rec: Any, topic: str) -> None:
    """Publish until ``rec`` receives one (restoration takes a moment), within 15 s."""

    async def attempt() -> None:
        while True:
            sent = envelope(topic)
            try:
                await publisher.publish(topic, sent)
                await rec.wait_id(sent.id, timeout=0.3)
                return
            except (asyncio.TimeoutError, PublishError):
                continue

    await asyncio.wait_for(attempt(), 15)


class Stuck:
    """A handler that never finishes until released: its process "dies" with the message."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(
        self, frame: Any, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        self.entered.set()
        await self.release.wait()

    async def report(
        self, error: BaseException, data: bytes | None = None, *, outcome: str = "dropped"
    ) -> None:
        pass


@contextlib.asynccontextmanager
async def lose_a_message_mid_handling(
    topology: Any, max_retries: int, rec: Any
) -> AsyncIterator[Envelope]:
    """A member takes a message and loses its connection before acking; another gets it."""
    survivor = await started(topology, max_retries=max_retries)
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        dying = topology.driver(url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        await dying.start()
        stuck = Stuck()
        await dying.subscribe("job.*", "dying", "jobs", stuck)
        sent = envelope("job.crash")
        await survivor.publish(sent.topic, sent)
        await asyncio.wait_for(stuck.entered.wait(), 10)
        await survivor.subscribe("job.*", "survivor", "jobs", rec)
        proxy.refuse()
        await proxy.cut()  # the broker takes the unacknowledged message back
        stuck.release.set()
        yield sent


async def test_a_redelivery_counts_as_an_attempt(topology: Any, recorder: Any) -> None:
    rec = recorder()
    async with lose_a_message_mid_handling(topology, 1, rec) as sent:
        await rec.wait_id(sent.id)
    assert [(retry, dead) for _, retry, dead in rec.calls] == [(False, True)]


async def test_a_message_redelivered_too_often_is_dead_lettered(
    topology: Any, recorder: Any, dead_letters: Any
) -> None:
    rec = recorder()
    async with lose_a_message_mid_handling(topology, 0, rec) as sent:
        dead = await dead_letters(topology.settings().dead_letter_queue)
        message = await dead.get()
        await rec.wait_for(lambda: bool(rec.reports))
    assert wire.decode(message.body).id == sent.id
    assert rec.calls == []
    assert "delivered once without an acknowledgement" in str(rec.reports[0])
    assert rec.outcomes == ["dead-lettered"]


class CountRecords(logging.Handler):
    """Sets ``reached`` once ``count`` records with ``text`` were logged."""

    def __init__(self, text: str, count: int) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.count = text, count
        self.loop = asyncio.get_running_loop()
        self.reached = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count -= 1
            if self.count <= 0:
                self.loop.call_soon_threadsafe(self.reached.set)


async def test_consumer_comes_back_after_its_queue_could_not_be_declared_for_a_while(
    topology: Any, recorder: Any, admin: AbstractConnection
) -> None:
    # As when the cluster node holding a queue is down: the broker cancels the consumer and
    # declaring the queue fails for a while (here a queue of the same name with other
    # arguments is in the way), then works again.
    amqp = await started(topology)
    rec = recorder()
    await amqp.subscribe("a.*", "a", "g", rec)
    name = amqp.group_queue("a.*", "g")

    async def replace_queue() -> None:
        connection = await aio_pika.connect(topology.settings().url)
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.declare_queue(name, durable=True)  # without the dead-letter arguments
        await connection.close()

    failures = CountRecords("again failed", 3)
    logger = logging.getLogger("runa_message.amqp")
    logger.addHandler(failures)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        # In another thread, while this loop is blocked: the driver sees the cancel only
        # once the queue is already in its way.
        thread = threading.Thread(target=asyncio.run, args=(replace_queue(),))
        thread.start()
        thread.join(30)
        await asyncio.wait_for(failures.reached.wait(), 15)
    finally:
        logger.removeHandler(failures)
        logger.setLevel(previous)
    channel = await admin.channel()
    await channel.queue_delete(name)
    await deliver_eventually(amqp, rec, "a.c")


async def test_a_consumer_lost_without_notice_comes_back(topology: Any, recorder: Any) -> None:
    # Whatever made it go (here a cancel behind the driver's back), the watchdog notices.
    amqp = await started(topology)
    rec = recorder()
    subscription = await amqp.subscribe("a.*", "a", "g", rec)
    underlay = await subscription._channel.get_underlay_channel()
    await underlay.basic_cancel(subscription.tag)
    await deliver_eventually(amqp, rec, "a.b")
