"""A bounded FIFO between a driver and a subscription's workers.

Unlike :class:`asyncio.Queue`, a producer that found the buffer full sleeps until it has
drained to half, not until one slot frees. Under load the producer and the workers then take
turns in batches instead of waking each other for every message, which is most of the cost
of a message in the memory driver. An idle buffer holds one empty deque and nothing else:
waiters are made when someone waits, so ten thousand quiet subscriptions stay small.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Buffer"]

T = TypeVar("T")


class Buffer(Generic[T]):
    """Holds at most ``size`` items (never None); :meth:`put` waits while it is full."""

    __slots__ = ("_getters", "_idle", "_items", "_low", "_putters", "_size", "_unfinished")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"buffer size must be at least 1, got {size}")
        self._items: deque[T] = deque()
        self._size = size
        self._low = size // 2
        self._getters: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []
        self._unfinished = 0
        self._idle: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        """Append ``item`` if there is room, without waiting; return whether it was taken."""
        if len(self._items) >= self._size:
            return False
        self._items.append(item)
        self._unfinished += 1
        if self._getters:
            _wake(self._getters, one=True)
        return True

    async def put(self, item: T) -> None:
        """Append ``item``, first waiting (until half drained) while the buffer is full."""
        while not self.offer(item):
            await _wait(self._putters)

    async def get(self) -> T:
        """Take the oldest item, waiting while the buffer is empty."""
        item = self.poll()
        while item is None:
            await _wait(self._getters)
            item = self.poll()
        return item

    def poll(self) -> T | None:
        """Take the oldest item without waiting; None when the buffer is empty."""
        items = self._items
        if not items:
            return None
        item = items.popleft()
        if self._putters and len(items) <= self._low:
            _wake(self._putters, one=False)
        return item

    def task_done(self, count: int = 1) -> None:
        """Mark ``count`` items taken by :meth:`get` or :meth:`poll` as handled."""
        self._unfinished -= count
        if not self._unfinished and self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
            self._idle = None

    async def join(self) -> None:
        """Wait until every item put so far has been taken and marked done."""
        if not self._unfinished:
            return
        if self._idle is None:
            self._idle = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._idle)


async def _wait(waiters: list[asyncio.Future[None]]) -> None:
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        if not waiter.done():
            waiter.cancel()
        if waiter in waiters:
            waiters.remove(waiter)


def _wake(waiters: list[asyncio.Future[None]], *, one: bool) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            if one:
                return
