"""The conformance suite: what "a correct driver" means, as tests every driver runs.

A driver's tests subclass :class:`DriverConformance` and provide the fixtures that build
the driver (the pattern of SQLAlchemy's compliance suite and Watermill's universal tests)::

    class TestRedisConformance(DriverConformance):
        capabilities = Capabilities(wildcards=True)   # what the driver declares
        network = True                                # run the connection cut / outage cases
        max_deliveries = None                         # ack drivers: handler calls before dead-letter

        @pytest.fixture
        def driver_factory(self):
            def make(*, address=None, publish_timeout=None):
                ...                                   # a new driver (one "process")
            return make

        @pytest.fixture
        def broker_address(self):
            return ("127.0.0.1", 6379)                # where a TcpProxy forwards to

        @pytest.fixture
        def send_frame(self):
            async def send(topic: str, data: bytes) -> None:
                ...                                   # raw bytes where a subscription to topic gets them
            return send

Fixtures
    ``driver_factory`` returns ``make(*, address=None, publish_timeout=None) -> Driver``. Each call
    models one process: a new, not yet started driver connected to the shared broker.
    ``address=(host, port)`` connects through that address instead (a :class:`TcpProxy` in front
    of ``broker_address``); ``publish_timeout`` overrides the driver's. An in-process driver, for
    which one instance is one broker, returns the same instance from every call.
    ``broker_address`` is needed when ``network`` is true. ``send_frame(topic, data)`` puts raw
    bytes on the wire exactly where a subscription to ``topic`` receives them.

Class attributes
    ``capabilities`` (required; the suite also checks ``driver.capabilities`` equals it) selects
    the cases: a case that needs a capability the driver lacks is not collected at all (no skips),
    and the cases that expect :class:`UnsupportedFeatureError` run instead. ``network`` enables the
    cases that cut connections. ``max_deliveries`` (ack drivers) is the number of handler calls
    a failing message gets before it is dead-lettered or dropped; None checks only that it ends.
    ``timeout`` bounds every wait (seconds); ``outage`` is how long a simulated outage lasts;
    ``publish_timeout`` is given to drivers in the outage case.

How the cases wait
    No case sleeps to synchronise: each awaits what it expects, with ``timeout``. A case that
    checks that *nothing more* arrived (wildcard exactness, topic isolation) publishes the
    negative cases first, then a *sentinel* on a topic the subscription does match, waits for
    the sentinel, and only then looks at what arrived. Messages from one publisher reach a
    subscription in the order they were published, so once the sentinel is there, anything
    that would wrongly have been delivered is there too.

Each case builds its own registries (two registries on two drivers model two processes), uses
topics and group names with a random part, so a broker shared by several runs does not leak
messages between them, and closes everything it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Protocol

import pytest
import pytest_asyncio

from runa_message.driver import Capabilities, Driver, Subscription
from runa_message.errors import (
    ClosedError,
    ConnectError,
    DecodeError,
    MessageError,
    PublishError,
    UnsupportedFeatureError,
)
from runa_message.ids import new_id, now
from runa_message.message import Envelope, ErrorEvent, Message
from runa_message.registry import ALL, Registry
from runa_message.topic import match_topic

from .inbox import ErrorInbox, FrameInbox, Inbox
from .ports import closed_port
from .proxy import TcpProxy

__all__ = [
    "WILDCARD_TABLE",
    "Conformance",
    "DriverConformance",
    "DriverFactory",
    "SendFrame",
]

BROKER = "b"
DRIVER = "conformance"


class DriverFactory(Protocol):
    """``make(*, address=None, publish_timeout=None) -> Driver``: one new driver per call."""

    def __call__(
        self, *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
    ) -> Driver:
        """Return a new driver, not started."""
        ...


#: ``async send(topic, data)``: raw frame bytes where a subscription to ``topic`` gets them.
SendFrame = Callable[[str, bytes], Awaitable[None]]

#: The wildcard rules as patterns, each with the topics published against it. What a
#: subscription must receive is exactly what :func:`match_topic` selects: every pattern and
#: topic is prefixed with a per-test segment, so a shared broker cannot leak other messages in.
WILDCARD_TABLE: tuple[tuple[str, ...], ...] = (
    ("user.*", "user.created", "user/deleted", "user:x", "user", "user.created.x", "users.created"),
    ("user.+", "user.created", "user.created.x", "user"),
    ("user.#", "user", "user.created", "user/created/x", "users", "userx.created"),
    ("user.**", "user", "user:created:x", "users.created"),
    ("*.created", "order.created", "order/created", "user:created", "created", "a.b.created"),
    ("*.*", "a.b", "a", "a.b.c"),
    ("a.*.c.#", "a.b.c", "a.b.c.d.e", "a/x/c", "a.c", "a.b.d", "b.b.c"),
    ("order/*:#", "order.paid", "order/paid/eu", "order"),
)


def _case(
    *,
    wildcards: bool | None = None,
    groups: bool | None = None,
    ack: bool | None = None,
    persistent: bool | None = None,
    network: bool | None = None,
    limit: bool | None = None,
    retries: bool | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a conformance case with what it needs (None: either way)."""
    needs = {
        key: value
        for key, value in {
            "wildcards": wildcards,
            "groups": groups,
            "ack": ack,
            "persistent": persistent,
            "network": network,
            "limit": limit,
            "retries": retries,
        }.items()
        if value is not None
    }

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__conformance_needs__ = needs  # type: ignore[attr-defined]
        # Marked, so the suite runs in pytest-asyncio's strict mode as well as in auto mode.
        return pytest.mark.asyncio(func)  # type: ignore[no-any-return]

    return mark


def _applies(cls: type[DriverConformance], needs: dict[str, bool]) -> bool:
    caps = cls.capabilities
    if caps is None:
        return False
    have = {
        "wildcards": caps.wildcards,
        "groups": caps.groups,
        "ack": caps.ack,
        "persistent": caps.persistent,
        "network": cls.network,
        "limit": caps.max_topic_length is not None,
        "retries": cls.max_deliveries is None or cls.max_deliveries > 1,
    }
    return all(have[key] == wanted for key, wanted in needs.items())


class Conformance:
    """What a case works with: the suite's settings, unique names, drivers and registries.

    Everything made here is closed when the case ends, whatever happened.
    """

    def __init__(
        self,
        suite: DriverConformance,
        factory: DriverFactory,
        send_frame: SendFrame | None = None,
        broker_address: tuple[str, int] | None = None,
    ) -> None:
        self.suite = suite
        self.factory = factory
        self._send_frame = send_frame
        self.broker_address = broker_address
        self.timeout = suite.timeout
        #: A segment no other test shares: every topic of the case starts with it.
        self.prefix = f"conf{uuid.uuid4().hex[:12]}"
        self._registries: list[Registry] = []
        self._drivers: list[Driver] = []
        self._proxies: list[TcpProxy] = []

    def topic(self, *parts: str) -> str:
        """A topic under this case's prefix: ``topic("a", "b")`` is ``<prefix>.a.b``."""
        return ".".join((self.prefix, *parts))

    def group(self, label: str = "g") -> str:
        """A group name no other test uses."""
        return f"{label}-{uuid.uuid4().hex[:12]}"

    def inbox(self) -> Inbox:
        """A handler recording the messages it receives."""
        return Inbox(self.timeout)

    def errors(self) -> ErrorInbox:
        """An ``on_error`` hook recording the events it gets."""
        return ErrorInbox(self.timeout)

    def driver(
        self, *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
    ) -> Driver:
        """A new driver from the factory (one "process"), closed at the end of the case."""
        driver = self.factory(address=address, publish_timeout=publish_timeout)
        if driver not in self._drivers:
            self._drivers.append(driver)
        return driver

    def registry(self, driver: Driver | None = None) -> Registry:
        """A registry with broker ``"b"`` on ``driver`` (a new one by default)."""
        registry = Registry()
        registry.register_driver(DRIVER, driver if driver is not None else self.driver())
        registry.broker(BROKER, driver=DRIVER)
        self._registries.append(registry)
        return registry

    async def proxy(self) -> TcpProxy:
        """A started :class:`TcpProxy` in front of ``broker_address``."""
        if self.broker_address is None:
            raise AssertionError(
                f"{type(self.suite).__name__}: network = True needs a `broker_address` fixture "
                "returning the broker's (host, port), for the TcpProxy of this case"
            )
        host, port = self.broker_address
        proxy = TcpProxy(host, port)
        await proxy.start()
        self._proxies.append(proxy)
        return proxy

    async def send_frame(self, topic: str, data: bytes) -> None:
        """Put raw bytes on the wire for subscriptions to ``topic``."""
        if self._send_frame is None:
            raise AssertionError(
                f"{type(self.suite).__name__}: define a `send_frame` fixture returning "
                "async (topic, data: bytes) -> None that puts raw bytes where a subscription "
                "to topic receives them"
            )
        await self._send_frame(topic, data)

    def envelope(self, topic: str, payload: bytes) -> Envelope:
        """An envelope for publishing through a driver directly."""
        return Envelope(
            new_id(), topic, payload, {"content-type": "application/octet-stream"}, now()
        )

    async def publish_until_received(
        self,
        publish: Callable[[str], Awaitable[Any]],
        inbox: Inbox,
        what: str,
        interval: float = 0.2,
    ) -> None:
        """Publish probes ``publish(marker)`` until one arrives in ``inbox``.

        For the moments when a subscription is being restored and messages published
        meanwhile may be lost: each probe has a fresh marker; a publish that fails is retried.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last_error: BaseException | None = None
        while True:
            marker = f"probe-{uuid.uuid4().hex[:8]}"
            try:
                await asyncio.wait_for(publish(marker), max(0.01, deadline - loop.time()))
            except (MessageError, OSError, asyncio.TimeoutError) as exc:
                last_error = exc

            def arrived(items: list[Message[Any]], marker: str = marker) -> bool:
                return any(item.payload == marker for item in items)

            try:
                await inbox.wait_until(
                    arrived,
                    what,
                    timeout=min(interval, max(0.0, deadline - loop.time())),
                )
                return
            except AssertionError:
                if loop.time() >= deadline:
                    raise AssertionError(
                        f"timed out after {self.timeout:g}s waiting for {what}"
                        + (f"; last publish error: {last_error!r}" if last_error else "")
                    ) from None

    async def aclose(self) -> None:
        """Close every registry, driver and proxy of the case, each within ``timeout``."""
        for registry in reversed(self._registries):
            await _bounded(registry.close(timeout=self.timeout / 2), self.timeout)
        for driver in reversed(self._drivers):
            await _bounded(driver.close(), self.timeout)
        for proxy in self._proxies:
            await _bounded(proxy.close(), self.timeout)


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(awaitable, timeout)


async def _gather_within(timeout: float, *awaitables: Awaitable[Any]) -> None:
    try:
        await asyncio.wait_for(asyncio.gather(*awaitables), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"not done within {timeout:g}s") from None


def _no_duplicates(what: str, values: list[Any]) -> None:
    extra = {value: n for value, n in Counter(map(repr, values)).items() if n > 1}
    assert not extra, f"{what}: delivered more than once: {extra}"


class DriverConformance:
    """The conformance suite; subclass it in a driver's tests (see the module docs).

    Not collected by itself (its name does not start with ``Test``); subclasses named
    ``Test...`` are, with only the cases that apply to their ``capabilities``.
    """

    #: What the driver declares; selects the cases. Required.
    capabilities: ClassVar[Capabilities | None] = None
    #: Whether the driver talks to a broker over TCP: enables the cut / outage cases.
    network: ClassVar[bool] = False
    #: Ack drivers: handler calls a failing message gets before dead-letter (None: any bound).
    max_deliveries: ClassVar[int | None] = None
    #: Seconds any single wait of a case may take.
    timeout: ClassVar[float] = float(os.environ.get("RUNA_MESSAGE_CONFORMANCE_TIMEOUT", "10"))
    #: How long a simulated outage lasts, in seconds.
    outage: ClassVar[float] = 0.5
    #: ``publish_timeout`` given to drivers in the outage case.
    publish_timeout: ClassVar[float] = 1.0
    #: Concurrent publishers and messages each, in the load case.
    publishers: ClassVar[int] = 50
    messages_per_publisher: ClassVar[int] = 100

    _cases: ClassVar[dict[str, tuple[Callable[..., Any], dict[str, bool]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__.startswith("Test") and cls.capabilities is None:
            raise TypeError(
                f"{cls.__name__}: set `capabilities = Capabilities(...)` to what the driver "
                "declares; the suite picks its cases from it"
            )
        for name, (func, needs) in DriverConformance._cases.items():
            current = getattr(cls, name, None)
            if not _applies(cls, needs):
                setattr(cls, name, None)
            elif current is None and name not in cls.__dict__:
                # An intermediate class switched it off; this class's capabilities want it.
                setattr(cls, name, func)

    # -- fixtures a driver's test class overrides -----------------------------------------

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        """Override: return ``make(*, address=None, publish_timeout=None) -> Driver``."""
        raise NotImplementedError(
            f"{type(self).__name__}: define a `driver_factory` fixture that returns "
            "make(*, address=None, publish_timeout=None) -> Driver"
        )

    @pytest.fixture
    def broker_address(self) -> tuple[str, int] | None:
        """Override when ``network`` is true: the broker's ``(host, port)``."""
        return None

    @pytest.fixture
    def send_frame(self) -> SendFrame | None:
        """Override: return ``async send(topic, data)`` that puts raw bytes on the wire."""
        return None

    @pytest_asyncio.fixture
    async def conformance(
        self,
        driver_factory: DriverFactory,
        send_frame: SendFrame | None,
        broker_address: tuple[str, int] | None,
    ) -> AsyncIterator[Conformance]:
        """The case's :class:`Conformance`; closes what the case opened."""
        harness = Conformance(self, driver_factory, send_frame, broker_address)
        try:
            yield harness
        finally:
            await harness.aclose()

    # -- the cases --------------------------------------------------------------------------

    @_case()
    async def test_capabilities_declared(self, conformance: Conformance) -> None:
        """The driver implements the protocol and declares the capabilities the suite tests."""
        driver = conformance.driver()
        assert isinstance(driver, Driver), f"{driver!r} does not implement the Driver protocol"
        assert driver.capabilities == self.capabilities, (
            f"driver declares {driver.capabilities}, the test class {self.capabilities}"
        )

    @_case()
    async def test_round_trip(self, conformance: Conformance) -> None:
        """A message published right after start() arrives whole: id, topic, payload, headers."""
        topic = conformance.topic("notice", "created")
        inbox = conformance.inbox()
        registry = conformance.registry()
        registry.subscribe(BROKER, topic, inbox, consumer="round-trip")
        await registry.start()
        payload = {"text": "hello", "n": 1, "tags": ["a", "b"]}
        sent = await registry.publish(BROKER, topic, payload, headers={"x-trace": "t-1"})
        await inbox.wait_for(1)
        message = inbox.items[0]
        assert message.id == sent, f"id {message.id!r}, publish returned {sent!r}"
        assert message.topic == topic, f"topic {message.topic!r}, published {topic!r}"
        assert message.payload == payload, f"payload {message.payload!r}, published {payload!r}"
        assert message.headers == {"x-trace": "t-1", "content-type": "application/json"}
        assert message.created_at.tzinfo is not None, "created_at keeps its offset"
        await registry.publish(BROKER, topic, "sentinel")
        await inbox.wait_payloads(["sentinel"])
        assert inbox.payloads == [payload, "sentinel"], "each message is delivered once"

    @_case()
    async def test_broadcast_every_subscription_gets_everything(
        self, conformance: Conformance
    ) -> None:
        """Broadcast: every subscription, in every process, gets every message."""
        topic = conformance.topic("broadcast")
        first, second = conformance.registry(), conformance.registry()
        inboxes = [conformance.inbox(), conformance.inbox(), conformance.inbox()]
        first.subscribe(BROKER, topic, inboxes[0], consumer="first")
        first.subscribe(BROKER, topic, inboxes[1], consumer="first-again")
        second.subscribe(BROKER, topic, inboxes[2], consumer="second")
        await first.start()
        await second.start()
        sent = list(range(20))
        for n in sent:
            await second.publish(BROKER, topic, n)
        for inbox in inboxes:
            await inbox.wait_payloads(sent)
        await _gather_within(self.timeout, first.join(), second.join())
        for inbox in inboxes:
            assert sorted(inbox.payloads) == sent, f"each message once: {inbox.describe(40)}"

    @_case()
    async def test_topic_isolation(self, conformance: Conformance) -> None:
        """A subscription to a topic gets that topic only: not its parent, child, or neighbour."""
        topic = conformance.topic("orders", "new")
        neighbours = [
            conformance.topic("orders"),
            conformance.topic("orders", "new", "eu"),
            conformance.topic("orders", "newer"),
            conformance.topic("orders", "ne"),
            conformance.topic("Orders", "New"),
            conformance.topic("orders", "old"),
            conformance.topic("new"),
        ]
        inbox, near = conformance.inbox(), conformance.inbox()
        registry = conformance.registry()
        registry.subscribe(BROKER, topic, inbox, consumer="isolated")
        registry.subscribe(BROKER, neighbours[0], near, consumer="neighbour")
        await registry.start()
        await registry.publish(BROKER, topic, "mine")
        for other in neighbours:
            await registry.publish(BROKER, other, f"not for me: {other}")
        await registry.publish(BROKER, topic, "sentinel")
        await inbox.wait_payloads(["sentinel"])
        await near.wait_payloads([f"not for me: {neighbours[0]}"])
        await _gather_within(self.timeout, registry.join())
        assert inbox.payloads == ["mine", "sentinel"], f"received {inbox.describe()}"
        assert near.topics == [neighbours[0]], f"received {near.describe()}"

    @_case()
    async def test_separators_are_equivalent(self, conformance: Conformance) -> None:
        """``.``, ``/`` and ``:`` separate segments alike; ``Message.topic`` is as published."""
        dotted = conformance.topic("orders", "new")
        spellings = [
            dotted,
            dotted.replace(".", "/"),
            dotted.replace(".", ":"),
            f"{conformance.prefix}/orders:new",
        ]
        inbox, slashed = conformance.inbox(), conformance.inbox()
        registry = conformance.registry()
        registry.subscribe(BROKER, dotted, inbox, consumer="dotted")
        registry.subscribe(BROKER, spellings[1], slashed, consumer="slashed")
        await registry.start()
        for topic in spellings:
            await registry.publish(BROKER, topic, topic)
        for box in (inbox, slashed):
            await box.wait_payloads(spellings)
        await _gather_within(self.timeout, registry.join())
        for box in (inbox, slashed):
            assert sorted(box.topics) == sorted(spellings), (
                f"every spelling once, as published: {box.describe()}"
            )
            assert all(m.topic == m.payload for m in box.items), (
                f"Message.topic must be the topic as published: {box.describe()}"
            )

    @_case()
    async def test_unusual_topics(self, conformance: Conformance) -> None:
        """Topics with non-ASCII letters and punctuation are carried exactly."""
        names = [
            "user-created_v2",
            "ünïcödé",
            "日本語",
            "a$b@c!d",
            "x~y(z)[1]{2}",
            "q=1&r=2%",
            "emoji🎉",
            "quote'\"",
            "semi;colon,comma",
        ]
        topics = [conformance.topic("odd", name) for name in names]
        inboxes = [conformance.inbox() for _ in topics]
        registry = conformance.registry()
        for i, (topic, inbox) in enumerate(zip(topics, inboxes, strict=True)):
            registry.subscribe(BROKER, topic, inbox, consumer=f"odd-{i}")
        await registry.start()
        for topic in topics:
            await registry.publish(BROKER, topic, topic)
        for topic, inbox in zip(topics, inboxes, strict=True):
            await inbox.wait_payloads([topic])
            assert inbox.topics == [topic], f"{topic!r}: received {inbox.describe()}"

    @_case(wildcards=True)
    async def test_wildcards_match_exactly(self, conformance: Conformance) -> None:
        """Each pattern of the table gets exactly what ``match_topic`` selects, once each."""
        registry = conformance.registry()
        rows = []
        for i, (pattern, *topics) in enumerate(WILDCARD_TABLE):
            full = f"{conformance.prefix}.{pattern}"
            inbox = conformance.inbox()
            registry.subscribe(BROKER, full, inbox, consumer=f"wildcard-{i}")
            rows.append((full, [f"{conformance.prefix}.{t}" for t in topics], inbox))
        await registry.start()
        published = [topic for _, topics, _ in rows for topic in topics]
        for topic in published:
            await registry.publish(BROKER, topic, topic)
        # The sentinel of each pattern: the first topic the table says it matches.
        for pattern, topics, _ in rows:
            sentinel = next(t for t in topics if match_topic(pattern, t))
            await registry.publish(BROKER, sentinel, f"sentinel {pattern}")
        for pattern, _, inbox in rows:
            await inbox.wait_payloads([f"sentinel {pattern}"])
        await _gather_within(self.timeout, registry.join())
        for pattern, _, inbox in rows:
            expected = Counter(t for t in published if match_topic(pattern, t))
            got = Counter(m.payload for m in inbox.items if not m.payload.startswith("sentinel "))
            missing, extra = expected - got, got - expected
            assert not missing, f"pattern {pattern!r}: missing {sorted(missing.elements())}"
            assert not extra, (
                f"pattern {pattern!r}: unexpected or repeated {sorted(extra.elements())}"
            )
            changed = [
                m
                for m in inbox.items
                if not m.payload.startswith("sentinel ") and m.topic != m.payload
            ]
            assert not changed, f"Message.topic must be the topic as published: {changed}"

    @_case(wildcards=False)
    async def test_wildcards_unsupported(self, conformance: Conformance) -> None:
        """A driver without wildcards refuses a pattern at start() with UnsupportedFeatureError."""
        registry = conformance.registry()
        registry.subscribe(BROKER, conformance.topic("user", "*"), conformance.inbox())
        with pytest.raises(UnsupportedFeatureError):
            await registry.start()

    @_case(groups=True)
    async def test_group_each_message_to_one_member(self, conformance: Conformance) -> None:
        """A group in two processes: each message to exactly one member, both members used."""
        topic, group = conformance.topic("jobs"), conformance.group()
        registries = [conformance.registry(), conformance.registry()]
        members = [conformance.inbox(), conformance.inbox()]
        for i, (registry, member) in enumerate(zip(registries, members, strict=True)):
            registry.subscribe(BROKER, topic, member, group=group, consumer=f"worker-{i}")
            await registry.start()
        sent = list(range(60))
        for n in sent:
            await registries[0].publish(BROKER, topic, n)
        await self._wait_group(members, sent)
        await _gather_within(self.timeout, *(r.join() for r in registries))
        self._check_group(members, sent)

    @_case(groups=True)
    async def test_group_members_in_one_process(self, conformance: Conformance) -> None:
        """Two members of one group in the same process share the messages too."""
        topic, group = conformance.topic("jobs"), conformance.group()
        registry = conformance.registry()
        members = [conformance.inbox(), conformance.inbox()]
        for i, member in enumerate(members):
            registry.subscribe(BROKER, topic, member, group=group, consumer=f"worker-{i}")
        await registry.start()
        sent = list(range(60))
        for n in sent:
            await registry.publish(BROKER, topic, n)
        await self._wait_group(members, sent)
        await _gather_within(self.timeout, registry.join())
        self._check_group(members, sent)

    @_case(groups=True)
    async def test_groups_and_broadcast_side_by_side(self, conformance: Conformance) -> None:
        """Each group gets every message once; a broadcast subscription beside them gets all."""
        topic = conformance.topic("events")
        one, two = conformance.group("one"), conformance.group("two")
        first, second = conformance.registry(), conformance.registry()
        one_members = [conformance.inbox(), conformance.inbox()]
        two_member, listener = conformance.inbox(), conformance.inbox()
        first.subscribe(BROKER, topic, one_members[0], group=one, consumer="one-a")
        second.subscribe(BROKER, topic, one_members[1], group=one, consumer="one-b")
        second.subscribe(BROKER, topic, two_member, group=two, consumer="two-a")
        first.subscribe(BROKER, topic, listener, consumer="listener")
        await first.start()
        await second.start()
        sent = list(range(30))
        for n in sent:
            await first.publish(BROKER, topic, n)
        await self._wait_group(one_members, sent, spread=False)
        await two_member.wait_payloads(sent)
        await listener.wait_payloads(sent)
        await _gather_within(self.timeout, first.join(), second.join())
        self._check_group(one_members, sent, spread=False)
        assert sorted(two_member.payloads) == sent, "a second group gets every message once"
        assert sorted(listener.payloads) == sent, "a broadcast subscription gets every message"

    async def _wait_group(
        self, members: list[Inbox], sent: list[int], *, spread: bool = True
    ) -> None:
        def done(_: object) -> bool:
            have = {p for member in members for p in member.payloads}
            return have >= set(sent) and (not spread or all(member.items for member in members))

        # Any member's arrivals wake the wait: poll the others through the first one's event.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not done(None):
            if loop.time() >= deadline:
                counts = [len(member) for member in members]
                raise AssertionError(
                    f"group: timed out after {self.timeout:g}s; members received {counts} "
                    f"of {len(sent)} messages"
                    + ("; every member must get a share" if spread and any(counts) else "")
                )
            waits = [
                asyncio.ensure_future(member.wait_for(len(member) + 1, timeout=0.2))
                for member in members
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _check_group(self, members: list[Inbox], sent: list[int], *, spread: bool = True) -> None:
        received = [p for member in members for p in member.payloads]
        _no_duplicates("group", received)
        assert sorted(received) == sent, f"group received {sorted(received)}"
        if spread:
            counts = [len(member) for member in members]
            assert all(counts), f"every member of a group gets a share, got {counts}"

    @_case(groups=False)
    async def test_groups_unsupported(self, conformance: Conformance) -> None:
        """A driver without groups refuses a group at start() with UnsupportedFeatureError."""
        registry = conformance.registry()
        registry.subscribe(BROKER, conformance.topic("jobs"), conformance.inbox(), group="g")
        with pytest.raises(UnsupportedFeatureError):
            await registry.start()

    @_case()
    async def test_order_kept_with_concurrency_one(self, conformance: Conformance) -> None:
        """With ``concurrency=1`` a subscription handles messages in the order published."""
        topic = conformance.topic("ordered")
        inbox = conformance.inbox()
        publisher, subscriber = conformance.registry(), conformance.registry()
        subscriber.subscribe(BROKER, topic, inbox, consumer="ordered", concurrency=1)
        await subscriber.start()
        await publisher.start()
        sent = list(range(200))
        for n in sent:
            await publisher.publish(BROKER, topic, n)
        await inbox.wait_for(len(sent))
        assert inbox.payloads[: len(sent)] == sent, f"out of order: {inbox.describe(30)}"

    @_case()
    async def test_concurrent_publishers(self, conformance: Conformance) -> None:
        """Many publishers at once: every message arrives once, each publisher's in order."""
        topic = conformance.topic("load")
        inbox = conformance.inbox()
        publisher, subscriber = conformance.registry(), conformance.registry()
        subscriber.subscribe(BROKER, topic, inbox, consumer="load", concurrency=1)
        await subscriber.start()
        await publisher.start()
        count, each = self.publishers, self.messages_per_publisher

        async def publish(p: int) -> None:
            for i in range(each):
                await publisher.publish(BROKER, topic, [p, i])

        await _gather_within(self.timeout * 6, *(publish(p) for p in range(count)))
        await inbox.wait_for(count * each, timeout=self.timeout * 6)
        await _gather_within(self.timeout, subscriber.join())
        received = [tuple(p) for p in inbox.payloads]
        _no_duplicates("load", received)
        assert sorted(received) == [(p, i) for p in range(count) for i in range(each)]
        for p in range(count):
            mine = [i for q, i in received if q == p]
            assert mine == sorted(mine), f"publisher {p}'s messages arrived out of order"

    @_case()
    async def test_binary_payloads_and_unusual_headers(self, conformance: Conformance) -> None:
        """Any bytes and any JSON headers (unicode keys, nested values) arrive unchanged."""
        topic = conformance.topic("binary")
        inbox = conformance.inbox()
        registry = conformance.registry()
        registry.subscribe(BROKER, topic, inbox, consumer="binary")
        await registry.start()
        payloads = [
            bytes(range(256)),
            b"",
            b"\x00",
            b"\xff\xfe\x00\x01{not json}",
            os.urandom(200 * 1024),
        ]
        headers: dict[str, Any] = {
            "ключ": "значение",
            "emoji 🎉": "✓",
            "nested": {"a": [1, 2.5, {"b": None}], "c": True, "d": {"e": {"f": "deep"}}},
            "empty": "",
            "list": [],
            "number": 42,
            "x-dash_under.dot/slash:colon": "ok",
        }
        for data in payloads:
            await registry.publish_raw(BROKER, topic, data, headers=headers)
        json_payload = {"ünïcödé": "日本語", "nested": [[{}], {"x": [None, False]}], "big": 2**53}
        await registry.publish(BROKER, topic, json_payload)
        await inbox.wait_for(len(payloads) + 1)
        assert inbox.payloads == [*payloads, json_payload]
        expected = {**headers, "content-type": "application/octet-stream"}
        for message in inbox.items[: len(payloads)]:
            assert dict(message.headers) == expected, f"headers changed: {message.headers}"

    @_case()
    async def test_malformed_frames_reach_on_error(self, conformance: Conformance) -> None:
        """Bytes that are not an envelope go to ``on_error``; the subscription keeps going."""
        topic = conformance.topic("frames")
        inbox, errors = conformance.inbox(), conformance.errors()
        registry = conformance.registry()
        registry.on_error(ALL, errors)
        registry.subscribe(BROKER, topic, inbox, consumer="frames")
        await registry.start()
        frames = [b"not json at all", b'{"id": 1, "topic": []}', b"\xff\xfe\x00garbage", b"[]"]
        for data in frames:
            await conformance.send_frame(topic, data)
        await registry.publish(BROKER, topic, "after the garbage")
        await inbox.wait_payloads(["after the garbage"])

        def decode_errors(items: list[ErrorEvent]) -> list[ErrorEvent]:
            return [e for e in items if isinstance(e.error, DecodeError)]

        await errors.wait_until(
            lambda items: {e.data for e in decode_errors(items)} >= set(frames),
            f"a DecodeError in on_error for each of {len(frames)} malformed frames",
        )
        await registry.publish(BROKER, topic, "still here")
        await inbox.wait_payloads(["still here"])
        await _gather_within(self.timeout, registry.join())
        for event in decode_errors(errors.items):
            assert event.envelope is None, f"a frame that is not an envelope: {event}"
            assert event.broker == BROKER, f"reported for broker {event.broker!r}"
            assert event.outcome in ("dead-lettered", "dropped"), event.outcome
        assert len(errors) == len(frames), (
            f"each malformed frame is reported once, never redelivered: {errors.describe()}"
        )
        assert inbox.payloads == ["after the garbage", "still here"]

    @_case()
    async def test_closing_one_subscription_leaves_the_others(
        self, conformance: Conformance
    ) -> None:
        """``Subscription.close()`` stops that subscription only; it is idempotent."""
        topic, other_topic = conformance.topic("shared"), conformance.topic("other")
        driver = conformance.driver()
        await driver.start()
        closing, staying, elsewhere = (FrameInbox(self.timeout) for _ in range(3))
        first = await driver.subscribe(topic, "closing", None, closing)
        await driver.subscribe(topic, "staying", None, staying)
        await driver.subscribe(other_topic, "elsewhere", None, elsewhere)
        members: list[FrameInbox] = []
        group_subs: list[Subscription] = []
        if self.capabilities is not None and self.capabilities.groups:
            group = conformance.group()
            members = [FrameInbox(self.timeout), FrameInbox(self.timeout)]
            for i, member in enumerate(members):
                group_subs.append(await driver.subscribe(topic, f"member-{i}", group, member))
        await driver.publish(topic, conformance.envelope(topic, b"before"))
        for inbox in (closing, staying):
            await inbox.wait_for(1)
        await first.close()
        await first.close()
        if group_subs:
            await group_subs[0].close()
        after = [f"after {i}".encode() for i in range(10)]
        for data in after:
            await driver.publish(topic, conformance.envelope(topic, data))
        await driver.publish(other_topic, conformance.envelope(other_topic, b"elsewhere"))
        await staying.wait_until(lambda items: len(items) >= 1 + len(after), "10 more messages")
        await elsewhere.wait_for(1)
        if members:
            # "before" went to either member; only what was published after the close counts.
            def later(inbox: FrameInbox) -> list[bytes]:
                return [p for p in inbox.payloads if p != b"before"]

            await members[1].wait_until(
                lambda _: len(later(members[1])) >= len(after),
                "the remaining group member to get every message",
            )
            assert sorted(later(members[1])) == sorted(after), (
                "the remaining member of a group gets every message"
            )
            assert later(members[0]) == [], "a closed group member gets nothing more"
        assert staying.payloads == [b"before", *after]
        assert closing.payloads == [b"before"], (
            f"a closed subscription received more: {closing.payloads}"
        )

    @_case()
    async def test_close_drains_running_handlers(self, conformance: Conformance) -> None:
        """``close()`` while handlers run waits for them to finish; it does not cancel them."""
        topics = [conformance.topic("slow", str(i)) for i in range(2)]
        started = {topic: asyncio.Event() for topic in topics}
        release = asyncio.Event()
        outcome: dict[str, str] = {}

        async def slow(message: Message[Any]) -> None:
            started[message.topic].set()
            try:
                await asyncio.wait_for(release.wait(), self.timeout * 2)
            except asyncio.CancelledError:
                outcome[message.topic] = "cancelled"
                raise
            outcome[message.topic] = "finished"

        registry = conformance.registry()
        for i, topic in enumerate(topics):
            registry.subscribe(BROKER, topic, slow, consumer=f"slow-{i}")
        await registry.start()
        for topic in topics:
            await registry.publish(BROKER, topic, "work")
        await _gather_within(self.timeout, *(event.wait() for event in started.values()))
        closing = asyncio.ensure_future(registry.close())
        try:
            # Nothing should happen here: close() must keep waiting for the two handlers.
            done, _ = await asyncio.wait({closing}, timeout=0.2)
            assert not done, "close() returned while handlers were still running"
            release.set()
            try:
                await asyncio.wait_for(asyncio.shield(closing), self.timeout)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"close() did not return within {self.timeout:g}s after the handlers finished"
                ) from None
        finally:
            release.set()
            if not closing.done():
                closing.cancel()
                await asyncio.gather(closing, return_exceptions=True)
        assert outcome == dict.fromkeys(topics, "finished"), f"handlers: {outcome}"

    @_case()
    async def test_publish_after_close_raises(self, conformance: Conformance) -> None:
        """Publishing after close raises ClosedError, through the registry and on the driver."""
        topic = conformance.topic("closed")
        registry = conformance.registry()
        await registry.start()
        await registry.publish(BROKER, topic, "open")
        await registry.close()
        with pytest.raises(ClosedError):
            await registry.publish(BROKER, topic, "closed")
        driver = conformance.driver()
        await driver.start()
        await driver.close()
        await driver.close()
        with pytest.raises(ClosedError):
            await driver.publish(topic, conformance.envelope(topic, b"closed"))

    @_case(limit=True)
    async def test_longest_topic(self, conformance: Conformance) -> None:
        """A topic of exactly ``max_topic_length`` bytes is carried; one byte more is refused."""
        assert self.capabilities is not None
        assert self.capabilities.max_topic_length is not None
        limit = self.capabilities.max_topic_length
        base = conformance.topic("long") + "."
        topic = base + "x" * (limit - len(base.encode()))
        inbox = conformance.inbox()
        registry = conformance.registry()
        registry.subscribe(BROKER, topic, inbox, consumer="long")
        await registry.start()
        await registry.publish(BROKER, topic, "longest")
        await inbox.wait_payloads(["longest"])
        assert inbox.topics == [topic], f"the longest topic arrives whole: {inbox.describe()}"
        with pytest.raises(MessageError):
            await registry.publish(BROKER, topic + "x", "too long")

    @_case(network=True)
    async def test_subscription_survives_connection_cut(self, conformance: Conformance) -> None:
        """Cut the connection, refuse it for a while, restore it: the subscription comes back."""
        topic = conformance.topic("reconnect")
        proxy = await conformance.proxy()
        inbox = conformance.inbox()
        subscriber = conformance.registry(conformance.driver(address=proxy.address))
        publisher = conformance.registry()
        subscriber.subscribe(BROKER, topic, inbox, consumer="survivor")
        await subscriber.start()
        await publisher.start()

        async def probe(marker: str) -> None:
            await publisher.publish(BROKER, topic, marker)

        await conformance.publish_until_received(probe, inbox, "delivery before the cut")
        async with proxy.down():
            await asyncio.sleep(self.outage)  # the outage lasts this long
        await conformance.publish_until_received(probe, inbox, "the subscription to come back")
        sent = [f"after {i}" for i in range(20)]
        for payload in sent:
            await publisher.publish(BROKER, topic, payload)
        await inbox.wait_payloads(sent)
        await _gather_within(self.timeout, subscriber.join())
        after = [p for p in inbox.payloads if p in sent]
        _no_duplicates("after the restore", after)
        assert after == sent, f"after the restore, in order: {after}"

    @_case(network=True)
    async def test_publish_during_outage_raises(self, conformance: Conformance) -> None:
        """A publish while the broker is unreachable raises PublishError within publish_timeout."""
        topic = conformance.topic("outage")
        proxy = await conformance.proxy()
        driver = conformance.driver(address=proxy.address, publish_timeout=self.publish_timeout)
        publisher, subscriber = conformance.registry(driver), conformance.registry()
        inbox = conformance.inbox()
        subscriber.subscribe(BROKER, topic, inbox, consumer="outage")
        await subscriber.start()
        await publisher.start()

        async def probe(marker: str) -> None:
            await publisher.publish(BROKER, topic, marker)

        await conformance.publish_until_received(probe, inbox, "delivery before the outage")
        loop = asyncio.get_running_loop()
        grace = max(1.0, self.publish_timeout)
        async with proxy.down():
            for attempt in range(2):
                begun = loop.time()
                try:
                    await asyncio.wait_for(
                        publisher.publish(BROKER, topic, f"lost {attempt}"),
                        self.publish_timeout + grace,
                    )
                except PublishError:
                    pass
                except asyncio.TimeoutError:
                    raise AssertionError(
                        f"publish during the outage still waiting after {loop.time() - begun:.2f}s; "
                        f"it must raise PublishError within publish_timeout={self.publish_timeout}"
                    ) from None
                else:
                    raise AssertionError(
                        "publish during the outage returned as if sent: it must raise PublishError"
                    )
                elapsed = loop.time() - begun
                assert elapsed <= self.publish_timeout + grace, (
                    f"PublishError after {elapsed:.2f}s, over publish_timeout={self.publish_timeout}"
                )
        await conformance.publish_until_received(probe, inbox, "publishing to work again")

    @_case(network=True)
    async def test_start_against_a_closed_port_raises_connect_error(
        self, conformance: Conformance
    ) -> None:
        """Starting against a port nothing listens on raises ConnectError within ``timeout``.

        The registry can be closed afterwards.
        """
        address = ("127.0.0.1", closed_port())
        registry = conformance.registry(conformance.driver(address=address))
        try:
            await asyncio.wait_for(registry.start(), self.timeout)
        except ConnectError:
            pass
        except asyncio.TimeoutError:
            raise AssertionError(
                f"start() against {address[0]}:{address[1]}, where nothing listens, still "
                f"waiting after {self.timeout:g}s: it must raise ConnectError"
            ) from None
        except Exception as exc:
            raise AssertionError(
                f"start() against {address[0]}:{address[1]}, where nothing listens, raised "
                f"{type(exc).__name__}: {exc}; it must raise runa_message.ConnectError"
            ) from exc
        else:
            raise AssertionError(
                f"start() against {address[0]}:{address[1]}, where nothing listens, returned: "
                "it must raise ConnectError"
            )
        await _gather_within(self.timeout, registry.close())

    @_case(ack=True)
    async def test_failing_message_is_retried_a_bounded_number_of_times(
        self, conformance: Conformance
    ) -> None:
        """A handler that always fails: retried, then dead-lettered or dropped; never forever."""
        topic = conformance.topic("poison")
        calls: Counter[str] = Counter()
        handled = conformance.inbox()

        async def handler(message: Message[Any]) -> None:
            calls[message.payload] += 1
            if message.payload == "poison":
                raise RuntimeError("this handler always fails")
            await handled(message)

        errors = conformance.errors()
        registry = conformance.registry()
        registry.on_error(ALL, errors)
        registry.subscribe(BROKER, topic, handler, consumer="poisoned")
        await registry.start()
        await registry.publish(BROKER, topic, "poison")
        await errors.wait_until(
            lambda items: any(e.outcome != "retried" for e in items),
            "the failing message to be dead-lettered or dropped",
        )
        outcomes = [e.outcome for e in errors.items]
        assert all(isinstance(e.error, RuntimeError) for e in errors.items)
        assert outcomes[-1] in ("dead-lettered", "dropped"), outcomes
        assert outcomes[:-1] == ["retried"] * (len(outcomes) - 1), outcomes
        assert calls["poison"] == len(outcomes), "on_error hears of every failed call"
        if self.max_deliveries is not None:
            assert calls["poison"] == self.max_deliveries, (
                f"handler called {calls['poison']} times, max_deliveries={self.max_deliveries}"
            )
        # Never redelivered afterwards: what follows on the subscription arrives, the poison not.
        for n in range(3):
            await registry.publish(BROKER, topic, f"fine {n}")
        await handled.wait_payloads([f"fine {n}" for n in range(3)])
        await _gather_within(self.timeout, registry.join())
        assert calls["poison"] == len(outcomes), "the failing message came back after it ended"
        assert len(errors) == len(outcomes), f"more errors afterwards: {errors.describe()}"

    @_case(ack=True, retries=True)
    async def test_failed_message_is_retried_until_handled(self, conformance: Conformance) -> None:
        """A handler that fails once: the message comes again and is handled."""
        topic = conformance.topic("flaky")
        calls: Counter[str] = Counter()
        handled = conformance.inbox()

        async def handler(message: Message[Any]) -> None:
            calls[message.id] += 1
            if calls[message.id] == 1:
                raise RuntimeError("fails the first time only")
            await handled(message)

        errors = conformance.errors()
        registry = conformance.registry()
        registry.on_error(ALL, errors)
        registry.subscribe(BROKER, topic, handler, consumer="flaky")
        await registry.start()
        await registry.publish(BROKER, topic, "flaky")
        await handled.wait_payloads(["flaky"])
        await _gather_within(self.timeout, registry.join())
        assert handled.payloads == ["flaky"], f"handled once: {handled.describe()}"
        assert [e.outcome for e in errors.items] == ["retried"], errors.describe()

    @_case(groups=True, persistent=True)
    async def test_absent_group_member_gets_what_was_published_meanwhile(
        self, conformance: Conformance
    ) -> None:
        """Persistent groups: messages published while the only member is away wait for it."""
        topic, group = conformance.topic("durable"), conformance.group()
        first_inbox = conformance.inbox()
        member = conformance.registry()
        member.subscribe(BROKER, topic, first_inbox, group=group, consumer="durable")
        await member.start()
        publisher = conformance.registry()
        await publisher.start()

        async def probe(marker: str) -> None:
            await publisher.publish(BROKER, topic, marker)

        await conformance.publish_until_received(probe, first_inbox, "the group to work")
        await _gather_within(self.timeout, member.join())
        await member.close()
        sent = [f"meanwhile {i}" for i in range(10)]
        for payload in sent:
            await publisher.publish(BROKER, topic, payload)
        back_inbox = conformance.inbox()
        back = conformance.registry()
        back.subscribe(BROKER, topic, back_inbox, group=group, consumer="durable")
        await back.start()
        await back_inbox.wait_payloads(sent)
        await _gather_within(self.timeout, back.join())
        got = [p for p in back_inbox.payloads if p in sent]
        _no_duplicates("after coming back", got)
        assert sorted(got) == sorted(sent), f"received {sorted(got)}"


DriverConformance._cases = {
    name: (value, value.__conformance_needs__)
    for name, value in vars(DriverConformance).items()
    if name.startswith("test_") and hasattr(value, "__conformance_needs__")
}
