"""Collectors that tests wait on: messages a handler received, errors a hook was given.

Every wait has a timeout and fails with an :class:`AssertionError` that says what was
awaited and what had arrived, so a conformance failure reads as a failed assertion.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from runa_message import wire
from runa_message.message import Envelope, ErrorEvent, Message, Outcome

__all__ = ["ErrorInbox", "FrameInbox", "Inbox", "Waitable"]

T = TypeVar("T")


class Waitable(Generic[T]):
    """A list of received items that can be awaited until a condition holds."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.items: list[T] = []
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: T) -> None:
        """Record ``item`` and wake the waiters."""
        self.items.append(item)
        self._changed.set()

    async def wait_until(
        self,
        predicate: Callable[[list[T]], bool],
        what: str,
        timeout: float | None = None,
    ) -> None:
        """Wait until ``predicate(items)`` holds; fail with an AssertionError after ``timeout``."""
        loop = asyncio.get_running_loop()
        limit = self.timeout if timeout is None else timeout
        deadline = loop.time() + limit
        while not predicate(self.items):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {limit:g}s waiting for {what}; received {len(self.items)}: "
                    f"{self.describe()}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                continue

    async def wait_for(self, count: int, timeout: float | None = None) -> None:
        """Wait until at least ``count`` items arrived."""
        await self.wait_until(lambda items: len(items) >= count, f"{count} items", timeout)

    def describe(self, limit: int = 10) -> str:
        """A short preview of the items, for failure messages."""
        shown = ", ".join(repr(item) for item in self.items[:limit])
        return f"[{shown}{', ...' if len(self.items) > limit else ''}]"


class Inbox(Waitable[Message[Any]]):
    """A handler that records every :class:`Message` it is given."""

    async def __call__(self, message: Message[Any]) -> None:
        """Record ``message``."""
        self.add(message)

    @property
    def payloads(self) -> list[Any]:
        """The payloads received, in arrival order."""
        return [message.payload for message in self.items]

    @property
    def topics(self) -> list[str]:
        """The topics received, in arrival order."""
        return [message.topic for message in self.items]

    def describe(self, limit: int = 10) -> str:
        """Topics and payloads, briefly."""
        shown = ", ".join(f"{m.topic}={_short(m.payload)}" for m in self.items[:limit])
        return f"[{shown}{', ...' if len(self.items) > limit else ''}]"

    async def wait_payloads(self, payloads: list[Any], timeout: float | None = None) -> None:
        """Wait until every payload in ``payloads`` arrived (in any order)."""
        wanted = list(payloads)

        def arrived(items: list[Message[Any]]) -> bool:
            have = [item.payload for item in items]
            return all(p in have for p in wanted)

        await self.wait_until(arrived, f"payloads {_short(wanted)}", timeout)


class ErrorInbox(Waitable[ErrorEvent]):
    """An ``on_error`` hook that records every :class:`ErrorEvent`."""

    def __call__(self, event: ErrorEvent) -> None:
        """Record ``event``."""
        self.add(event)

    def describe(self, limit: int = 10) -> str:
        """Errors and outcomes, briefly."""
        shown = ", ".join(
            f"{type(e.error).__name__}({e.outcome}, {e.topic})" for e in self.items[:limit]
        )
        return f"[{shown}{', ...' if len(self.items) > limit else ''}]"


class FrameInbox(Waitable[Envelope]):
    """A driver-level :class:`~runa_message.driver.Handler` that records the envelopes it gets.

    Bytes are decoded with :mod:`runa_message.wire`, as the registry does; a frame that does not
    decode raises :class:`~runa_message.DecodeError` back to the driver.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        super().__init__(timeout)
        self.reports: list[BaseException] = []

    async def __call__(
        self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        """Take one frame from a driver."""
        self.add(frame if isinstance(frame, Envelope) else wire.decode(frame))

    async def report(
        self, error: BaseException, data: bytes | None = None, *, outcome: Outcome = "dropped"
    ) -> None:
        """Record a driver-side problem."""
        self.reports.append(error)

    @property
    def payloads(self) -> list[bytes]:
        """The payloads received, in arrival order."""
        return [envelope.payload for envelope in self.items]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
