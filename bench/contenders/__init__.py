"""What every contender implements, and the pieces they share.

A contender is one library on one broker (``runa`` on ``redis``, ``faststream`` on ``nats``,
...). For a :class:`Plan` it opens a session: subscribers first (``plan.subscriptions`` of
them, on the plan's topic or on a wildcard pattern that selects it), then a publisher. Each
subscriber hands every message's ``id`` to the :class:`Sink`, which counts and keeps time;
the workloads drive the :class:`Publisher` the session yields.

Setup and teardown are never timed. Negative ids are readiness probes (see
:meth:`Sink.hit`), sent before a workload starts so that no contender is measured while
its subscriptions are still being set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "BROKERS",
    "ENDPOINTS",
    "Contender",
    "Plan",
    "Publisher",
    "Sink",
    "all_contenders",
    "message_dict",
    "native",
    "shared_settings",
    "url",
]

#: The brokers in the order they are run and reported.
BROKERS = ("memory", "redis", "nats", "amqp", "mqtt")

#: Where each network broker listens (the local brokers the project tests against).
ENDPOINTS = {
    "redis": ("127.0.0.1", int(os.environ.get("BENCH_REDIS_PORT", "6379"))),
    "nats": ("127.0.0.1", int(os.environ.get("BENCH_NATS_PORT", "4222"))),
    "amqp": ("127.0.0.1", int(os.environ.get("BENCH_AMQP_PORT", "5672"))),
    "mqtt": ("127.0.0.1", int(os.environ.get("BENCH_MQTT_PORT", "1883"))),
}


def url(broker: str) -> str:
    """The URL of a local broker, in the scheme its client libraries take."""
    host, port = ENDPOINTS[broker]
    scheme = {"redis": "redis", "nats": "nats", "amqp": "amqp", "mqtt": "mqtt"}[broker]
    auth = "guest:guest@" if broker == "amqp" else ""
    return f"{scheme}://{auth}{host}:{port}"


#: Delivery settings every contender on a broker runs with, so that all do the same work.
#: runa's driver defaults win (read at run time); these are the fallbacks.
_SHARED_DEFAULTS: dict[str, dict[str, Any]] = {
    "amqp": {"publisher_confirms": True, "persistent_messages": True, "prefetch": 100},
    "mqtt": {"qos": 1, "version": "5"},
}


def shared_settings(broker: str) -> dict[str, Any]:
    """The delivery settings (AMQP confirms, persistence, prefetch; MQTT QoS) for ``broker``."""
    from .runa import RunaContender

    settings = dict(_SHARED_DEFAULTS.get(broker, {}))
    settings.update(RunaContender(broker).settings())
    return settings


def message_dict(i: int) -> dict[str, Any]:
    """The benchmark message as plain JSON data."""
    return {"id": i, "text": "hello"}


@dataclass(frozen=True)
class Plan:
    """One session: which broker, which topic, how many subscriptions, exact or wildcard.

    ``topic`` uses dots (``bench.ab12cd.7``); :func:`native` spells a topic or pattern for
    the broker (MQTT uses ``/`` and ``+``). ``subscriptions`` subscriptions receive every
    message: on ``topic`` itself, or with ``wildcard`` on ``topic + ".*"`` while messages go
    to ``topic + ".x"``. ``decoys`` more subscriptions receive nothing: half on sibling
    topics, half on sibling wildcard patterns (they measure what matching costs).
    """

    broker: str
    topic: str
    subscriptions: int = 1
    wildcard: bool = False
    decoys: int = 0

    @property
    def publish_topic(self) -> str:
        """Where messages are published, in the broker's spelling."""
        return native(f"{self.topic}.x" if self.wildcard else self.topic, self.broker)

    def pattern(self) -> str:
        """What the receiving subscriptions subscribe to, in the broker's spelling."""
        return native(f"{self.topic}.*" if self.wildcard else self.topic, self.broker)

    def decoy_patterns(self) -> list[tuple[str, bool]]:
        """``(pattern, is_wildcard)`` of each decoy, in the broker's spelling."""
        return [
            (native(f"{self.topic}.d{j}.*", self.broker), True)
            if j % 2
            else (native(f"{self.topic}.d{j}", self.broker), False)
            for j in range(self.decoys)
        ]


def native(pattern: str, broker: str) -> str:
    """A dotted topic or pattern (``*`` for one segment) in ``broker``'s own syntax."""
    if broker == "mqtt":
        return pattern.replace(".", "/").replace("*", "+")
    return pattern


class Sink:
    """Counts handled messages and notes when the last expected one was handled.

    Handlers call :meth:`hit` with the message id on the event loop thread, or
    :meth:`hit_from_thread` from a client library's own thread. Ids below zero are
    readiness probes: they are tallied per probe and never counted as messages.
    """

    __slots__ = ("_expected", "_future", "_loop", "_probe_want", "_probes", "count")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.count = 0
        self._expected = 0
        self._future: asyncio.Future[float] = self._loop.create_future()
        self._probes: dict[int, int] = {}
        self._probe_want = 0

    def expect(self, count: int) -> asyncio.Future[float]:
        """Reset the count; the future resolves to the time of the ``count``-th hit."""
        self.count = 0
        self._expected = count
        self._future = self._loop.create_future()
        return self._future

    def hit(self, i: int) -> None:
        """One subscription handled message ``i``."""
        if i < 0:
            self._probe(i)
            return
        self.count += 1
        if self.count == self._expected:
            self._future.set_result(time.perf_counter())

    def hit_from_thread(self, i: int) -> None:
        """:meth:`hit` for a handler running on a client library's thread.

        The count is kept on the calling thread (one thread per client, so no race); the
        loop is woken only for probes and for the last expected message.
        """
        if i < 0:
            self._loop.call_soon_threadsafe(self._probe, i)
            return
        self.count += 1
        if self.count == self._expected:
            self._loop.call_soon_threadsafe(_resolve, self._future, time.perf_counter())

    def _probe(self, i: int) -> None:
        seen = self._probes[i] = self._probes.get(i, 0) + 1
        if seen == self._probe_want and self._expected == -1 and not self._future.done():
            self._future.set_result(time.perf_counter())

    async def wait_ready(self, publisher: Publisher, subscriptions: int, timeout: float) -> None:
        """Publish probes until one probe reached every subscription."""
        self._probe_want = subscriptions
        self._expected = -1
        self._future = self._loop.create_future()
        deadline = time.monotonic() + timeout
        probe = 0
        while True:
            probe -= 1
            await publisher.publish(probe)
            try:
                await asyncio.wait_for(asyncio.shield(self._future), 0.05 if probe > -20 else 0.25)
                return
            except asyncio.TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"subscriptions not ready after {timeout:.0f} s "
                        f"(probes seen: {self._probes})"
                    ) from None


def _resolve(future: asyncio.Future[float], value: float) -> None:
    if not future.done():
        future.set_result(value)


class Publisher:
    """Publishes benchmark message ``i`` to the session's topic."""

    async def publish(self, i: int) -> None:
        """Publish one message and wait as the library's publish call waits."""
        raise NotImplementedError

    async def publish_chunk(self, ids: Sequence[int]) -> None:
        """Publish several messages from one task (concurrent workload); one by one here."""
        publish = self.publish
        for i in ids:
            await publish(i)


class Contender:
    """One library on one broker. Subclasses set the class attributes and :meth:`session`."""

    #: ``runa``, ``faststream``, ``raw`` or ``broadcaster``.
    family: ClassVar[str]
    #: Import names whose absence makes the contender missing.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Whether it can subscribe with wildcards.
    wildcards: ClassVar[bool] = True

    def __init__(self, broker: str) -> None:
        self.broker = broker

    def __repr__(self) -> str:
        return f"<{self.family} on {self.broker}>"

    @property
    def label(self) -> str:
        """``family`` and the library the family means on this broker."""
        return self.family

    def missing(self) -> str | None:
        """Why this contender cannot run here (library or broker absent), or None."""
        for name in self.requires:
            try:
                importlib.import_module(name)
            except Exception as exc:
                return f"cannot import {name}: {type(exc).__name__}: {exc}"
        if self.broker in ENDPOINTS and not reachable(self.broker):
            host, port = ENDPOINTS[self.broker]
            return f"no {self.broker} broker on {host}:{port}"
        return None

    def settings(self) -> dict[str, Any]:
        """The settings this contender runs with that matter for a fair comparison."""
        return {}

    def session(self, plan: Plan, sink: Sink) -> contextlib.AbstractAsyncContextManager[Publisher]:
        """Subscribe as ``plan`` says, then yield a publisher; tear everything down after."""
        raise NotImplementedError


def reachable(broker: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections where ``broker`` should listen."""
    try:
        with socket.create_connection(ENDPOINTS[broker], timeout=timeout):
            return True
    except OSError:
        return False


async def close_quietly(*closers: Any) -> None:
    """Await each close coroutine function, ignoring errors (teardown is not measured)."""
    for close in closers:
        with contextlib.suppress(Exception):
            result = close()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await asyncio.wait_for(result, 10)


@dataclass
class Stack:
    """Things to close at the end of a session, last first."""

    closers: list[Any] = field(default_factory=list)

    def push(self, close: Any) -> None:
        """Close ``close()`` (sync or async) at the end."""
        self.closers.append(close)

    async def aclose(self) -> None:
        """Close everything, last pushed first."""
        await close_quietly(*reversed(self.closers))
        self.closers.clear()


@contextlib.asynccontextmanager
async def stacked() -> AsyncIterator[Stack]:
    """An async context holding a :class:`Stack`, closed on exit."""
    stack = Stack()
    try:
        yield stack
    finally:
        await stack.aclose()


def all_contenders(brokers: Sequence[str] = BROKERS) -> list[Contender]:
    """Every contender on the given brokers, runa first on each."""
    from . import broadcaster_, faststream_, raw, runa

    result: list[Contender] = []
    for broker in brokers:
        result.append(runa.RunaContender(broker))
        if broker == "memory":
            result.append(broadcaster_.BroadcasterContender(broker))
        else:
            result.append(faststream_.FASTSTREAM[broker](broker))
            result.append(raw.RAW[broker](broker))
    return result
