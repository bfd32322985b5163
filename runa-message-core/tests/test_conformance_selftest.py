"""Tests of the conformance suite itself.

A suite that passes everything proves nothing, so each case is run here against a driver
broken in exactly the respect that case checks, and must fail; the same broken driver still
passes a control case, so it is broken in that one respect only.

- Broken in-memory drivers are small :class:`MemoryDriver` subclasses.
- The network, acknowledgement and persistence cases need a driver that has those. The
  loopback broker below is a tiny TCP broker (JSON lines, wildcards and groups matched with
  ``match_topic``, acks with bounded redelivery, groups that keep messages for absent
  members), and :class:`LoopbackDriver` its driver. ``TestLoopbackConformance`` runs the
  whole suite on it, through :class:`TcpProxy` for the outage cases; its broken variants must
  fail the cases that concern them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import attrs
import pytest
import pytest_asyncio

from runa_message import (
    Capabilities,
    ClosedError,
    ConnectError,
    DecodeError,
    Driver,
    Envelope,
    Handler,
    MemoryDriver,
    PublishError,
    Subscription,
    match_topic,
    wire,
)
from runa_message.testing import DriverConformance
from runa_message.testing.conformance import Conformance, DriverFactory, SendFrame

pytest_plugins = ("pytester",)

#: Broken drivers fail fast: each wait of a case against them gives up after this long.
BROKEN_TIMEOUT = 0.5
INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
#: What a failing conformance case raises.
FAILED = (AssertionError, pytest.fail.Exception)


async def run_case(
    suite: type[DriverConformance],
    case: str,
    factory: DriverFactory,
    send_frame: SendFrame | None = None,
    broker_address: tuple[str, int] | None = None,
) -> None:
    """Run one conformance case the way pytest would, with the given fixtures."""
    method = getattr(suite, case)
    assert method is not None, f"{case} does not apply to {suite.__name__}"
    instance = suite()
    harness = Conformance(instance, factory, send_frame, broker_address)
    try:
        await method(instance, harness)
    finally:
        await harness.aclose()


# ---------------------------------------------------------------------------------------------
# Broken in-memory drivers: each differs from MemoryDriver in one respect.


class _Wrapped:
    """A handler wrapper that forwards everything, for drivers to change one thing."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(
        self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        await self.handler(frame, retry=retry, dead_letter=dead_letter)

    async def report(self, error: BaseException, data: bytes | None = None) -> None:
        await self.handler.report(error, data)


class DropsEveryTenth(MemoryDriver):
    """Loses every tenth message it publishes."""

    def __init__(self) -> None:
        super().__init__()
        self._count = itertools.count(1)

    async def publish(self, topic: str, envelope: Envelope) -> None:
        if next(self._count) % 10:
            await super().publish(topic, envelope)


class Reorders(MemoryDriver):
    """Swaps each pair of messages on a topic: holds one back until the next arrives."""

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[str, Envelope] = {}
        self._releasing: set[asyncio.Future[None]] = set()

    async def publish(self, topic: str, envelope: Envelope) -> None:
        held = self._held.pop(topic, None)
        if held is None:
            self._held[topic] = envelope
            # Not lost: released shortly if nothing follows.
            asyncio.get_running_loop().call_later(0.05, self._release, topic, envelope)
            return
        await super().publish(topic, envelope)
        await super().publish(topic, held)

    def _release(self, topic: str, envelope: Envelope) -> None:
        if self._held.get(topic) is envelope:
            del self._held[topic]
            task = asyncio.ensure_future(super().publish(topic, envelope))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)


class DuplicatesWildcards(MemoryDriver):
    """Hands every message of a wildcard subscription over twice."""

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        if "*" in pattern or "#" in pattern or "+" in pattern:

            class Twice(_Wrapped):
                async def __call__(
                    self,
                    frame: Envelope | bytes,
                    /,
                    *,
                    retry: bool = False,
                    dead_letter: bool = False,
                ) -> None:
                    await self.handler(frame)
                    await self.handler(frame)

            handler = Twice(handler)
        return await super().subscribe(pattern, consumer, group, handler)


class HashNeedsASegment(MemoryDriver):
    """Translates ``#`` to one-or-more segments (NATS ``>`` unfixed): ``user.#`` misses ``user``."""

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        for many in ("#", "**"):
            if pattern.endswith(many):
                pattern = pattern[: -len(many)] + "*." + many
        return await super().subscribe(pattern, consumer, group, handler)


class OverDeliversWildcards(MemoryDriver):
    """Subscribes to far more than asked (like a Redis glob); the registry filters, so this is fine."""

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        first = pattern.replace("/", ".").replace(":", ".").split(".")[0]
        return await super().subscribe(f"{first}.#", consumer, group, handler)


class IgnoresGroups(MemoryDriver):
    """Treats every group subscription as broadcast."""

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        return await super().subscribe(pattern, consumer, None, handler)


class LastMemberTakesAll(MemoryDriver):
    """A second member of a group replaces the first (one shared subscription per filter)."""

    def __init__(self) -> None:
        super().__init__()
        self._native: dict[tuple[str, str], Subscription] = {}

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        if group is None:
            return await super().subscribe(pattern, consumer, group, handler)
        previous = self._native.pop((group, pattern), None)
        if previous is not None:
            await previous.close()
        subscription = self._native[(group, pattern)] = await super().subscribe(
            pattern, consumer, group, handler
        )
        return subscription


class SeparatorSensitive(MemoryDriver):
    """Matches topics by their spelling: ``a.b`` never meets ``a/b``."""

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        class Literal(_Wrapped):
            async def __call__(
                self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
            ) -> None:
                envelope = frame if isinstance(frame, Envelope) else wire.decode(frame)
                for sep in "/:":
                    if sep in envelope.topic and sep not in pattern:
                        return
                await self.handler(frame)

        return await super().subscribe(pattern, consumer, group, Literal(handler))


class NormalisesTopic(MemoryDriver):
    """Rebuilds the envelope's topic from a native, dotted channel name."""

    async def publish(self, topic: str, envelope: Envelope) -> None:
        native = topic.replace("/", ".").replace(":", ".")
        await super().publish(topic, attrs.evolve(envelope, topic=native))


class LowercasesTopics(MemoryDriver):
    """A case-insensitive broker: ``Orders.New`` arrives as ``orders.new``."""

    async def publish(self, topic: str, envelope: Envelope) -> None:
        await super().publish(topic.lower(), attrs.evolve(envelope, topic=topic.lower()))


class DropsNonAsciiTopics(MemoryDriver):
    """Silently loses messages whose topic is not ASCII."""

    async def publish(self, topic: str, envelope: Envelope) -> None:
        if topic.isascii():
            await super().publish(topic, envelope)


class FlattensHeaders(MemoryDriver):
    """Keeps only string headers with ASCII names (a broker with string-only properties)."""

    async def publish(self, topic: str, envelope: Envelope) -> None:
        headers = {k: v for k, v in envelope.headers.items() if isinstance(v, str) and k.isascii()}
        await super().publish(topic, attrs.evolve(envelope, headers=headers))


class SwallowsDecodeErrors(MemoryDriver):
    """Decodes frames itself and drops the bad ones without telling anyone."""

    async def publish_frame(self, topic: str, data: bytes) -> None:
        try:
            envelope = wire.decode(data)
        except DecodeError:
            return
        await super().publish(topic, envelope)


class CloseClosesEverything(MemoryDriver):
    """Closing one subscription drops every subscription of the driver."""

    def __init__(self) -> None:
        super().__init__()
        self._all: list[Subscription] = []

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        self._all.append(await super().subscribe(pattern, consumer, group, handler))
        everything = self._all

        class All:
            async def close(self) -> None:
                for subscription in everything:
                    await subscription.close()

        return All()


class CloseHangs(MemoryDriver):
    """``close()`` waits for something that never happens."""

    async def close(self) -> None:
        await asyncio.Event().wait()


class PublishAfterCloseDrops(MemoryDriver):
    """After ``close()``, publishing silently does nothing instead of raising ClosedError."""

    async def publish(self, topic: str, envelope: Envelope) -> None:
        with contextlib.suppress(ClosedError):
            await super().publish(topic, envelope)


class SubscribesLate(MemoryDriver):
    """``subscribe()`` returns before the subscription is active."""

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        later = asyncio.ensure_future(
            _after(0.2, MemoryDriver.subscribe(self, pattern, consumer, group, handler))
        )

        class Late:
            async def close(self) -> None:
                await (await later).close()

        return Late()


async def _after(delay: float, awaitable: Awaitable[Subscription]) -> Subscription:
    await asyncio.sleep(delay)  # the bug being simulated: activation after returning
    return await awaitable


class OneHandlerPerTopic(MemoryDriver):
    """One native subscription per topic: a second broadcast subscription replaces the first."""

    def __init__(self) -> None:
        super().__init__()
        self._native: dict[str, Subscription] = {}

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        if group is not None:
            return await super().subscribe(pattern, consumer, group, handler)
        previous = self._native.pop(pattern, None)
        if previous is not None:
            await previous.close()
        subscription = self._native[pattern] = await super().subscribe(
            pattern, consumer, group, handler
        )
        return subscription


class TruncatesLongTopics(MemoryDriver):
    """Declares 64-byte topics but loses those over 48 bytes."""

    capabilities = Capabilities(wildcards=True, groups=True, max_topic_length=64)

    async def publish(self, topic: str, envelope: Envelope) -> None:
        if len(topic.encode()) <= 48:
            await super().publish(topic, envelope)


class LimitedMemory(MemoryDriver):
    """MemoryDriver with a declared topic limit that it honours (the control for the above)."""

    capabilities = Capabilities(wildcards=True, groups=True, max_topic_length=64)


class ClaimsGroupsAndWildcards(MemoryDriver):
    """Its test class says: no groups, no wildcards; the driver declares and accepts both."""


class _MemorySuite(DriverConformance):
    capabilities = MemoryDriver.capabilities
    timeout = BROKEN_TIMEOUT


class _LimitedSuite(_MemorySuite):
    capabilities = LimitedMemory.capabilities


class _PlainSuite(_MemorySuite):
    capabilities = Capabilities(wildcards=False, groups=False)


def memory_fixtures(cls: type[MemoryDriver]) -> tuple[DriverFactory, SendFrame]:
    driver = cls()

    def make(
        *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
    ) -> Driver:
        return driver

    return make, driver.publish_frame


#: (broken driver, its suite, the cases it must fail, a case it must still pass)
BROKEN_MEMORY: list[tuple[type[MemoryDriver], type[DriverConformance], list[str], str]] = [
    (
        DropsEveryTenth,
        _MemorySuite,
        ["test_concurrent_publishers", "test_order_kept_with_concurrency_one"],
        "test_round_trip",
    ),
    (
        Reorders,
        _MemorySuite,
        ["test_order_kept_with_concurrency_one"],
        "test_wildcards_match_exactly",
    ),
    (DuplicatesWildcards, _MemorySuite, ["test_wildcards_match_exactly"], "test_round_trip"),
    (HashNeedsASegment, _MemorySuite, ["test_wildcards_match_exactly"], "test_round_trip"),
    (
        IgnoresGroups,
        _MemorySuite,
        [
            "test_group_each_message_to_one_member",
            "test_group_members_in_one_process",
            "test_groups_and_broadcast_side_by_side",
        ],
        "test_broadcast_every_subscription_gets_everything",
    ),
    (
        LastMemberTakesAll,
        _MemorySuite,
        ["test_group_members_in_one_process", "test_group_each_message_to_one_member"],
        "test_groups_and_broadcast_side_by_side",
    ),
    (SeparatorSensitive, _MemorySuite, ["test_separators_are_equivalent"], "test_round_trip"),
    (
        NormalisesTopic,
        _MemorySuite,
        ["test_separators_are_equivalent", "test_wildcards_match_exactly"],
        "test_round_trip",
    ),
    (LowercasesTopics, _MemorySuite, ["test_topic_isolation"], "test_round_trip"),
    (DropsNonAsciiTopics, _MemorySuite, ["test_unusual_topics"], "test_round_trip"),
    (
        FlattensHeaders,
        _MemorySuite,
        ["test_binary_payloads_and_unusual_headers"],
        "test_broadcast_every_subscription_gets_everything",
    ),
    (
        SwallowsDecodeErrors,
        _MemorySuite,
        ["test_malformed_frames_reach_on_error"],
        "test_round_trip",
    ),
    (
        CloseClosesEverything,
        _MemorySuite,
        ["test_closing_one_subscription_leaves_the_others"],
        "test_round_trip",
    ),
    (CloseHangs, _MemorySuite, ["test_close_drains_running_handlers"], "test_round_trip"),
    (PublishAfterCloseDrops, _MemorySuite, ["test_publish_after_close_raises"], "test_round_trip"),
    (SubscribesLate, _MemorySuite, ["test_round_trip"], "test_capabilities_declared"),
    (
        OneHandlerPerTopic,
        _MemorySuite,
        ["test_broadcast_every_subscription_gets_everything"],
        "test_round_trip",
    ),
    (TruncatesLongTopics, _LimitedSuite, ["test_longest_topic"], "test_round_trip"),
    (
        ClaimsGroupsAndWildcards,
        _PlainSuite,
        ["test_capabilities_declared", "test_groups_unsupported", "test_wildcards_unsupported"],
        "test_round_trip",
    ),
]


@pytest.mark.parametrize(
    ("broken", "suite", "case"),
    [(b, s, c) for b, s, cases, _ in BROKEN_MEMORY for c in cases],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
async def test_broken_memory_driver_fails_its_case(
    broken: type[MemoryDriver], suite: type[DriverConformance], case: str
) -> None:
    factory, send_frame = memory_fixtures(broken)
    with pytest.raises(FAILED):
        await run_case(suite, case, factory, send_frame)


@pytest.mark.parametrize(
    ("broken", "suite", "case"),
    [(b, s, control) for b, s, _, control in BROKEN_MEMORY],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
async def test_broken_memory_driver_is_broken_in_one_respect(
    broken: type[MemoryDriver], suite: type[DriverConformance], case: str
) -> None:
    factory, send_frame = memory_fixtures(broken)
    await run_case(suite, case, factory, send_frame)


@pytest.mark.parametrize("case", ["test_wildcards_match_exactly", "test_topic_isolation"])
async def test_over_delivery_is_filtered_by_the_registry(case: str) -> None:
    """Over-delivery is allowed (the registry filters): a driver subscribing broader passes."""
    factory, send_frame = memory_fixtures(OverDeliversWildcards)
    await run_case(_MemorySuite, case, factory, send_frame)


async def test_limited_memory_passes_the_longest_topic_case() -> None:
    factory, send_frame = memory_fixtures(LimitedMemory)
    await run_case(_LimitedSuite, "test_longest_topic", factory, send_frame)


def test_every_case_is_proven_by_a_broken_driver() -> None:
    proven = {case for _, _, cases, _ in BROKEN_MEMORY for case in cases}
    proven |= {case for _, cases in BROKEN_LOOPBACK for case in cases}
    assert proven == set(DriverConformance._cases)


# ---------------------------------------------------------------------------------------------
# The loopback broker: a tiny TCP broker for the network, ack and persistence cases.

_LIMIT = 2**24


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _line(op: dict[str, Any]) -> bytes:
    return json.dumps(op).encode() + b"\n"


@attrs.define(eq=False)
class _Member:
    conn: _Conn
    sid: int


@attrs.define(eq=False)
class _Queue:
    """A broadcast subscription's queue, or a group's, shared by its members."""

    pattern: str
    durable: bool
    members: list[_Member] = attrs.field(factory=list)
    pending: deque[tuple[str, int]] = attrs.field(factory=deque)
    turn: itertools.count[int] = attrs.field(factory=itertools.count)


@attrs.define(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    inflight: dict[int, tuple[_Queue, str, int]] = attrs.field(factory=dict)


class LoopbackBroker:
    """Wildcards and groups (matched with ``match_topic``), acks with bounded redelivery."""

    def __init__(self, max_deliveries: int = 3) -> None:
        self.max_deliveries = max_deliveries
        self.queues: dict[Any, _Queue] = {}
        self.address = ("127.0.0.1", 0)
        self._tags = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._serving: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_LIMIT)
        self.address = ("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.writer.transport.abort()
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            while line := await reader.readline():
                self._handle(conn, json.loads(line))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # the broker is closing
        finally:
            self._serving.discard(task)
            self._conns.discard(conn)
            self._lost(conn)
            writer.transport.abort()

    def _handle(self, conn: _Conn, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "pub":
            for queue in list(self.queues.values()):
                if match_topic(queue.pattern, op["topic"]):
                    queue.pending.append((op["d"], 1))
                    self._dispatch(queue)
        elif kind == "sub":
            if op["group"] is None:
                key: Any = ("sub", id(conn), op["sid"])
            else:
                key = ("group", op["group"], op["pattern"])
            queue = self.queues.get(key)
            if queue is None:
                queue = self.queues[key] = _Queue(op["pattern"], bool(op["durable"]))
            queue.members.append(_Member(conn, op["sid"]))
            self._dispatch(queue)
        elif kind == "unsub":
            self._remove(lambda m: m.conn is conn and m.sid == op["sid"])
        elif kind == "ack":
            entry = conn.inflight.pop(op["tag"], None)
            if entry is None:
                return
            queue, data, attempt = entry
            if (
                not op["ok"]
                and not op.get("final")
                and (op.get("forever") or attempt < self.max_deliveries)
            ):
                queue.pending.append((data, attempt + 1))
                self._dispatch(queue)
        if "ref" in op:
            conn.writer.write(_line({"op": "ok", "ref": op["ref"]}))

    def _dispatch(self, queue: _Queue) -> None:
        while queue.pending and queue.members:
            member = queue.members[next(queue.turn) % len(queue.members)]
            data, attempt = queue.pending.popleft()
            tag = next(self._tags)
            member.conn.inflight[tag] = (queue, data, attempt)
            member.conn.writer.write(
                _line({"op": "msg", "sid": member.sid, "tag": tag, "d": data, "n": attempt})
            )

    def _remove(self, gone: Callable[[_Member], bool]) -> None:
        for key, queue in list(self.queues.items()):
            queue.members = [m for m in queue.members if not gone(m)]
            if not queue.members and not queue.durable:
                del self.queues[key]

    def _lost(self, conn: _Conn) -> None:
        self._remove(lambda m: m.conn is conn)
        for queue, data, attempt in conn.inflight.values():
            # Unacknowledged: back to the queue, for another member or a later one.
            if queue.durable or queue.members:
                queue.pending.appendleft((data, attempt))
                self._dispatch(queue)


class _LoopbackSubscription:
    def __init__(self, driver: LoopbackDriver, sid: int, op: dict[str, Any], handler: Handler):
        self.driver = driver
        self.sid = sid
        self.op = op
        self.handler = handler
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.driver._subs.pop(self.sid, None)
        if self.driver.cancel_on_close:
            for task in self.tasks:
                task.cancel()
        if self.driver._connected.is_set():
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                await asyncio.wait_for(self.driver._request({"op": "unsub", "sid": self.sid}), 5)


class LoopbackDriver:
    """The driver of the loopback broker: reconnects, resubscribes, acks after the handler."""

    capabilities = Capabilities(wildcards=True, groups=True, ack=True, persistent=True)
    #: Knobs that the broken variants below turn.
    reconnect = True
    resubscribe = True
    publish_waits = True
    publish_deadline = True
    durable_groups = True
    retry_forever = False
    retry_failures = True
    decode_errors_final = True
    cancel_on_close = False
    connect_error = True

    def __init__(
        self, address: tuple[str, int], *, publish_timeout: float = 2.0, max_deliveries: int = 3
    ) -> None:
        self.address = address
        self.publish_timeout = publish_timeout
        self.max_deliveries = max_deliveries
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self._refs = itertools.count(1)
        self._sids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._subs: dict[int, _LoopbackSubscription] = {}
        self._runner: asyncio.Task[None] | None = None
        self._generation = 0

    def __repr__(self) -> str:
        return f"LoopbackDriver({self.address[0]}:{self.address[1]})"

    async def start(self) -> None:
        try:
            reader = await self._connect()
        except OSError as exc:
            if not self.connect_error:
                raise
            raise ConnectError(f"cannot connect to {self.address}: {exc}") from None
        self._runner = asyncio.ensure_future(self._run(reader))

    async def _connect(self) -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(*self.address, limit=_LIMIT)
        self._writer = writer
        self._generation += 1
        self._connected.set()
        return reader

    async def _run(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                while line := await reader.readline():
                    self._received(json.loads(line))
            except (ConnectionError, OSError, ValueError):
                pass
            self._connected.clear()
            if self._writer is not None:
                self._writer.transport.abort()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection lost"))
            self._pending.clear()
            if self._closed or not self.reconnect:
                return
            reader = await self._reconnect()

    async def _reconnect(self) -> asyncio.StreamReader:
        delay = 0.02
        while True:
            try:
                reader = await self._connect()
            except OSError:
                await asyncio.sleep(delay)  # backoff between attempts
                delay = min(delay * 2, 0.5)
                continue
            if self.resubscribe:
                for sub in list(self._subs.values()):
                    self._send(sub.op)
            return reader

    def _send(self, op: dict[str, Any]) -> asyncio.Future[None]:
        ref = next(self._refs)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        assert self._writer is not None
        self._writer.write(_line({**op, "ref": ref}))
        return future

    async def _request(self, op: dict[str, Any]) -> None:
        await self._send(op)

    def _received(self, op: dict[str, Any]) -> None:
        if op["op"] == "ok":
            future = self._pending.pop(op["ref"], None)
            if future is not None and not future.done():
                future.set_result(None)
            return
        sub = self._subs.get(op["sid"])
        if sub is None or sub.closed:
            # Not ours any more: give it back (a group hands it to another member).
            self._ack(self._generation, op["tag"], ok=False)
            return
        task = asyncio.ensure_future(self._deliver(sub, op))
        sub.tasks.add(task)
        task.add_done_callback(sub.tasks.discard)

    async def _deliver(self, sub: _LoopbackSubscription, op: dict[str, Any]) -> None:
        generation = self._generation
        last = op["n"] >= self.max_deliveries or not self.retry_failures
        retry = self.retry_forever or not last
        ok, final = True, False
        try:
            await sub.handler(base64.b64decode(op["d"]), retry=retry)
        except DecodeError:
            ok, final = False, self.decode_errors_final
        except Exception:
            ok, final = False, not self.retry_failures
        self._ack(generation, op["tag"], ok=ok, final=final)

    def _ack(self, generation: int, tag: int, *, ok: bool, final: bool = False) -> None:
        if generation != self._generation or not self._connected.is_set():
            return  # the broker already took it back when the connection dropped
        assert self._writer is not None
        self._writer.write(
            _line(
                {"op": "ack", "tag": tag, "ok": ok, "final": final, "forever": self.retry_forever}
            )
        )

    async def publish(self, topic: str, envelope: Envelope) -> None:
        await self.publish_frame(topic, wire.encode(envelope))

    async def publish_frame(self, topic: str, data: bytes) -> None:
        if self._closed:
            raise ClosedError("loopback driver is closed")
        if not self._connected.is_set() and not self.publish_waits:
            return  # the bug: dropped in silence
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.publish_timeout if self.publish_deadline else 3600)
        while True:
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
                await asyncio.wait_for(
                    self._request({"op": "pub", "topic": topic, "d": _b64(data)}),
                    deadline - loop.time(),
                )
                return
            except asyncio.TimeoutError:
                raise PublishError(
                    f"loopback broker unreachable for {self.publish_timeout}s"
                ) from None
            except ConnectionError:
                continue

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        sid = next(self._sids)
        op = {
            "op": "sub",
            "sid": sid,
            "pattern": pattern,
            "group": group,
            "durable": group is not None and self.durable_groups,
        }
        sub = _LoopbackSubscription(self, sid, op, handler)
        self._subs[sid] = sub
        if self._connected.is_set():  # otherwise the reconnect subscribes it
            await asyncio.wait_for(self._request(op), 5)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        subs = list(self._subs.values())
        for sub in subs:
            await sub.close()
        tasks = [task for sub in subs for task in sub.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._writer is not None:
            self._writer.transport.abort()
        self._connected.clear()


class TestLoopbackConformance(DriverConformance):
    """The whole suite on a network driver with groups, acks and persistence."""

    capabilities = LoopbackDriver.capabilities
    network = True
    max_deliveries = 3
    driver_class: ClassVar[type[LoopbackDriver]] = LoopbackDriver

    @pytest_asyncio.fixture
    async def loopback(self) -> AsyncIterator[LoopbackBroker]:
        broker = LoopbackBroker(max_deliveries=3)
        await broker.start()
        yield broker
        await broker.close()

    @pytest.fixture
    def driver_factory(self, loopback: LoopbackBroker) -> DriverFactory:
        return loopback_factory(self.driver_class, loopback)

    @pytest.fixture
    def broker_address(self, loopback: LoopbackBroker) -> tuple[str, int]:
        return loopback.address

    @pytest_asyncio.fixture
    async def send_frame(self, loopback: LoopbackBroker) -> AsyncIterator[SendFrame]:
        raw = LoopbackDriver(loopback.address)
        await raw.start()
        yield raw.publish_frame
        await raw.close()


def loopback_factory(cls: type[LoopbackDriver], broker: LoopbackBroker) -> DriverFactory:
    def make(
        *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
    ) -> Driver:
        return cls(address or broker.address, publish_timeout=publish_timeout or 2.0)

    return make


# Broken loopback drivers: one knob turned each.


class NoReconnect(LoopbackDriver):
    reconnect = False


class NoResubscribe(LoopbackDriver):
    resubscribe = False


class PublishDropsDuringOutage(LoopbackDriver):
    publish_waits = False


class PublishWaitsForever(LoopbackDriver):
    publish_deadline = False


class NotDurable(LoopbackDriver):
    durable_groups = False


class RetriesForever(LoopbackDriver):
    retry_forever = True


class NeverRetries(LoopbackDriver):
    retry_failures = False


class RetriesGarbage(LoopbackDriver):
    decode_errors_final = False


class CancelsHandlersOnClose(LoopbackDriver):
    cancel_on_close = True


class StartRaisesOSError(LoopbackDriver):
    connect_error = False


BROKEN_LOOPBACK: list[tuple[type[LoopbackDriver], list[str]]] = [
    (NoReconnect, ["test_subscription_survives_connection_cut"]),
    (NoResubscribe, ["test_subscription_survives_connection_cut"]),
    (PublishDropsDuringOutage, ["test_publish_during_outage_raises"]),
    (PublishWaitsForever, ["test_publish_during_outage_raises"]),
    (NotDurable, ["test_absent_group_member_gets_what_was_published_meanwhile"]),
    (RetriesForever, ["test_failing_message_is_retried_a_bounded_number_of_times"]),
    (
        NeverRetries,
        [
            "test_failing_message_is_retried_a_bounded_number_of_times",
            "test_failed_message_is_retried_until_handled",
        ],
    ),
    (RetriesGarbage, ["test_malformed_frames_reach_on_error"]),
    (CancelsHandlersOnClose, ["test_close_drains_running_handlers"]),
    (StartRaisesOSError, ["test_start_against_a_closed_port_raises_connect_error"]),
]


class _LoopbackSuite(DriverConformance):
    capabilities = LoopbackDriver.capabilities
    network = True
    max_deliveries = 3
    timeout = 1.0
    publish_timeout = 0.3
    outage = 0.2


@pytest_asyncio.fixture
async def loopback_broker() -> AsyncIterator[LoopbackBroker]:
    broker = LoopbackBroker(max_deliveries=3)
    await broker.start()
    yield broker
    await broker.close()


@pytest.mark.parametrize(
    ("broken", "case"),
    [(b, c) for b, cases in BROKEN_LOOPBACK for c in cases],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
async def test_broken_loopback_driver_fails_its_case(
    broken: type[LoopbackDriver], case: str, loopback_broker: LoopbackBroker
) -> None:
    raw = LoopbackDriver(loopback_broker.address)
    await raw.start()
    try:
        with pytest.raises(FAILED):
            await run_case(
                _LoopbackSuite,
                case,
                loopback_factory(broken, loopback_broker),
                raw.publish_frame,
                loopback_broker.address,
            )
    finally:
        await raw.close()


@pytest.mark.parametrize("broken", [b for b, _ in BROKEN_LOOPBACK], ids=lambda b: b.__name__)
async def test_broken_loopback_driver_passes_the_round_trip(
    broken: type[LoopbackDriver], loopback_broker: LoopbackBroker
) -> None:
    await run_case(_LoopbackSuite, "test_round_trip", loopback_factory(broken, loopback_broker))


# ---------------------------------------------------------------------------------------------
# Collection: what a driver's test class gets, by its capabilities, through pytest itself.

_BASE = """
        import pytest
        from runa_message import Capabilities, MemoryDriver
        from runa_message.testing import DriverConformance


        class Base(DriverConformance):
            @pytest.fixture
            def driver_factory(self):
                driver = MemoryDriver()
                driver.capabilities = self.capabilities
                return lambda *, address=None, publish_timeout=None: driver
"""


def test_cases_are_selected_by_capabilities(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_selection=_BASE
        + """
        from runa_message import Capabilities


        class TestPlain(Base):
            capabilities = Capabilities(wildcards=False, groups=False)


        class TestFull(Base):
            capabilities = Capabilities(wildcards=True, groups=True, ack=True, persistent=True)
            network = True
            max_deliveries = 1
        """
    )
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:randomly")
    names = set(result.stdout.lines)
    plain = {line.split("::")[-1] for line in names if "TestPlain::" in line}
    full = {line.split("::")[-1] for line in names if "TestFull::" in line}
    assert "test_groups_unsupported" in plain
    assert "test_wildcards_unsupported" in plain
    assert "test_group_each_message_to_one_member" not in plain
    assert "test_wildcards_match_exactly" not in plain
    assert "test_subscription_survives_connection_cut" not in plain
    assert "test_failing_message_is_retried_a_bounded_number_of_times" not in plain
    assert "test_groups_unsupported" not in full
    assert {
        "test_group_each_message_to_one_member",
        "test_wildcards_match_exactly",
        "test_subscription_survives_connection_cut",
        "test_publish_during_outage_raises",
        "test_failing_message_is_retried_a_bounded_number_of_times",
        "test_absent_group_member_gets_what_was_published_meanwhile",
    } <= full
    # max_deliveries = 1 means no retry: the "retried until handled" case does not apply.
    assert "test_failed_message_is_retried_until_handled" not in full
    assert "test_longest_topic" not in full
    assert "skipped" not in result.stdout.str()


def test_plain_driver_runs_green_and_nothing_is_skipped(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_plain=_BASE
        + """
        import pytest
        from runa_message import Capabilities


        class TestPlain(Base):
            capabilities = Capabilities(wildcards=False, groups=False)

            @pytest.fixture
            def send_frame(self, driver_factory):
                return driver_factory().publish_frame
        """
    )
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=15)


def test_a_test_class_must_declare_capabilities() -> None:
    with pytest.raises(TypeError, match="capabilities"):

        class TestNothingDeclared(DriverConformance):
            pass


def test_a_missing_send_frame_fixture_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_missing=_BASE
        + """
        from runa_message import Capabilities


        class TestNoFrames(Base):
            capabilities = Capabilities(wildcards=True, groups=True)
        """
    )
    result = pytester.runpytest("-q", "-p", "no:randomly", "-k", "malformed")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*define a `send_frame` fixture*"])


# ---------------------------------------------------------------------------------------------
# The driver of "Writing a driver" passes the suite, run from the page itself.


def test_writing_a_driver_page_passes_the_suite(
    pytester: pytest.Pytester, page_files: Callable[[str], dict[str, str]]
) -> None:
    """The page's driver and test module, as files; pytest-asyncio in strict mode (no ini)."""
    files = page_files("writing-a-driver.md")
    assert {"runa_message_bus.py", "test_bus_conformance.py"} <= set(files)
    for name, text in files.items():
        (pytester.path / name).write_text(text, encoding="utf-8")
    result = pytester.runpytest(
        "-q",
        "-p",
        "no:randomly",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "test_bus_conformance.py",
    )
    result.assert_outcomes(passed=15)
