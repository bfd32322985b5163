"""The in-memory driver: same-process broadcasts with the semantics of the network drivers.

Messages never leave the process and are never encoded to frames: the envelope itself is
handed to each subscription. Wildcards, groups (round robin over the members of a group
with the same pattern) and backpressure (``publish`` waits for a full subscriber) behave
as on the brokers. This module is also the driver's entry-point plugin (``memory``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .config import structure_settings
from .driver import Capabilities, Handler
from .errors import ClosedError, DecodeError
from .hookspecs import hookimpl
from .message import Envelope
from .plugins import DriverDescription
from .topic import TopicIndex

__all__ = ["MemoryDriver", "MemorySettings"]


@attrs.frozen
class MemorySettings:
    """The memory driver has no settings; an unknown key in ``[message.memory]`` is an error."""


class _Member:
    """One subscription's handler, and its optional way to take an envelope without awaiting."""

    __slots__ = ("handler", "offer")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.offer: Callable[[Envelope], bool] = getattr(handler, "offer", _never)


def _never(envelope: Envelope) -> bool:
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

    def __init__(self, settings: MemorySettings | None = None) -> None:
        self._index: TopicIndex[_Target] = TopicIndex()
        self._groups: dict[tuple[str, str], _Target] = {}
        self._closed: bool = False

    def __repr__(self) -> str:
        return "MemoryDriver()"

    async def start(self) -> None:
        """Nothing to connect."""
        self._closed = False

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Hand ``envelope`` to every subscription that matches ``topic`` (one member per group)."""
        if self._closed:
            raise ClosedError("memory driver is closed")
        for target in self._index.match(topic):
            member = target.pick()
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
