"""The in-memory driver: same-process broadcasts with the semantics of the network drivers.

Messages never leave the process and are never encoded to frames: the envelope itself is
handed to each subscription. A value the default JSON codec would decode back into itself
(:meth:`runa_message.JSONCodec.reusable`) travels as its :class:`~runa_message.Message`,
not encoded at all, and subscriptions of its type hand that message to their handlers.
Wildcards, groups (round robin over the members of a group with the same pattern) and
backpressure (``publish`` waits for a full subscriber) behave as on the brokers. This
module is also the driver's entry-point plugin (``memory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import attrs

from .config import structure_settings
from .driver import Capabilities, Handler
from .errors import ClosedError, DecodeError
from .hookspecs import hookimpl
from .message import Envelope, Message, local_envelope
from .plugins import DriverDescription
from .subscription import SubscriptionRuntime
from .topic import TopicIndex

__all__ = ["MemoryDriver", "MemorySettings"]


@attrs.frozen
class MemorySettings:
    """The memory driver has no settings; an unknown key in ``[message.memory]`` is an error."""


class _Member:
    """One subscription's handler, and its way to take an envelope without awaiting."""

    __slots__ = ("handler", "offer")

    def __init__(self, handler: Handler) -> None:
        self.handler: Callable[[Envelope | Message[Any] | bytes], Awaitable[None]]
        self.offer: Callable[[Envelope | Message[Any]], bool]
        if isinstance(handler, SubscriptionRuntime):
            self.handler = handler
            self.offer = handler.offer
        else:  # any other handler gets plain envelopes, as from a network driver

            async def plain(frame: Envelope | Message[Any] | bytes) -> None:
                await handler(local_envelope(frame) if isinstance(frame, Message) else frame)

            self.handler = plain
            self.offer = _never


def _never(envelope: Envelope | Message[Any]) -> bool:
    return False


class _Target:
    """A broadcast subscription, or all members of one group on one pattern."""

    __slots__ = ("_turn", "members", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.members: list[_Member] = []
        self._turn = itertools.count()

    def pick(self) -> _Member:
        members = self.members
        return members[0] if len(members) == 1 else members[next(self._turn) % len(members)]


class _MemorySubscription:
    __slots__ = ("_driver", "_handler", "_key", "_target")

    def __init__(self, driver: MemoryDriver, target: _Target, handler: _Member, key: Any) -> None:
        self._driver = driver
        self._target = target
        self._handler = handler
        self._key = key

    async def close(self) -> None:
        self._driver._remove(self._target, self._handler, self._key)


class MemoryDriver:
    """Delivers within this process; one instance is one isolated broker."""

    capabilities = Capabilities(wildcards=True, groups=True, ack=False, persistent=False)

    #: Deliveries in a row after which ``publish`` lets the event loop run once, so that
    #: handlers start while a publisher that never waits is still publishing.
    burst = 128

    def __init__(self, settings: MemorySettings | None = None) -> None:
        self._index: TopicIndex[_Target] = TopicIndex()
        self._groups: dict[tuple[str, str], _Target] = {}
        self._closed: bool = False
        self._delivered = 0

    def __repr__(self) -> str:
        return "MemoryDriver()"

    async def start(self) -> None:
        """Nothing to connect."""
        self._closed = False

    async def publish(self, topic: str, envelope: Envelope | Message[Any]) -> None:
        """Hand ``envelope`` to every subscription that matches ``topic`` (one member per group)."""
        rest = self.deliver(topic, envelope)
        if rest is not None:
            await rest

    def deliver(
        self, topic: str, envelope: Envelope | Message[Any]
    ) -> Coroutine[Any, Any, None] | None:
        """:meth:`publish` without a coroutine while every subscription has room.

        Returns None when ``envelope`` was handed to every subscription, else a coroutine to
        await: the one that hands it to the rest (waiting for room), or, after
        :attr:`burst` deliveries in a row, one pass of the event loop.
        """
        if self._closed:
            raise ClosedError("memory driver is closed")
        targets = self._index.cache.get(topic) or self._index.match(topic)
        for target in targets:
            member = target.pick()
            if not member.offer(envelope):
                self._delivered = 0
                return self._deliver_rest(targets, target, member, envelope)
        self._delivered += 1
        if self._delivered >= self.burst:
            self._delivered = 0
            return asyncio.sleep(0)
        return None

    async def _deliver_rest(
        self,
        targets: tuple[_Target, ...],
        target: _Target,
        member: _Member,
        envelope: Envelope | Message[Any],
    ) -> None:
        await member.handler(envelope)
        for later in targets[targets.index(target) + 1 :]:
            member = later.pick()
            if not member.offer(envelope):
                await member.handler(envelope)

    async def publish_frame(self, topic: str, data: bytes) -> None:
        """Hand raw frame bytes to the subscriptions of ``topic``, as a network driver would."""
        if self._closed:
            raise ClosedError("memory driver is closed")
        for target in self._index.match(topic):
            with contextlib.suppress(DecodeError):  # the registry reported it to on_error
                await target.pick().handler(data)

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> _MemorySubscription:
        """Add a subscription; ``group`` members share one target and take turns."""
        key = None if group is None else (group, pattern)
        found = None if key is None else self._groups.get(key)
        if found is None:
            target = _Target(pattern)
            self._index.add(pattern, target)
            if key is not None:
                self._groups[key] = target
        else:
            target = found
        member = _Member(handler)
        target.members.append(member)
        return _MemorySubscription(self, target, member, key)

    def _remove(self, target: _Target, handler: _Member, key: Any) -> None:
        if handler in target.members:
            target.members.remove(handler)
        if not target.members:
            self._index.remove(target.pattern, target)
            if key is not None:
                self._groups.pop(key, None)

    async def close(self) -> None:
        """Drop every subscription; publishing afterwards raises :class:`ClosedError`."""
        self._closed = True
        self._index = TopicIndex()
        self._groups.clear()


@hookimpl
def runa_message_driver(name: str, settings: Mapping[str, Any]) -> MemoryDriver | None:
    """Create the memory driver."""
    if name != "memory":
        return None
    return MemoryDriver(structure_settings(MemorySettings, settings, "message.memory"))


@hookimpl
def runa_message_driver_description(name: str) -> DriverDescription | None:
    """Describe the memory driver."""
    if name != "memory":
        return None
    return DriverDescription(
        "memory",
        "In-process broadcasts and groups, nothing leaves the process.",
        MemoryDriver.capabilities,
        MemorySettings,
    )
