"""A bounded FIFO between a driver and a subscription's workers.

Unlike :class:`asyncio.Queue`, a producer that found the buffer full sleeps until it has
drained to half, not until one slot frees. Under load the producer and the workers then take
turns in batches instead of waking each other for every message, which is most of the cost
of a message in the memory driver.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Buffer"]

T = TypeVar("T")


class Buffer(Generic[T]):
    """Holds at most ``size`` items; :meth:`put` waits while it is full."""

    __slots__ = ("_getters", "_idle", "_items", "_low", "_putters", "_size", "_unfinished")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"buffer size must be at least 1, got {size}")
        self._items: deque[T] = deque()
        self._size = size
        self._low = size // 2
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        """Append ``item`` if there is room, without waiting; return whether it was taken."""
        if len(self._items) >= self._size:
            return False
        self._items.append(item)
        self._unfinished += 1
        if self._unfinished == 1:
            self._idle.clear()
        if self._getters:
            self._wake_getter()
        return True

    async def put(self, item: T) -> None:
        """Append ``item``, first waiting (until half drained) while the buffer is full."""
        while not self.offer(item):
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _wake_getter(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break

    async def get(self) -> T:
        """Take the oldest item, waiting while the buffer is empty."""
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
        return self._take()

    def poll(self) -> T | None:
        """Take the oldest item without waiting; None when the buffer is empty."""
        return self._take() if self._items else None

    def _take(self) -> T:
        items = self._items
        item = items.popleft()
        if self._putters and len(items) <= self._low:
            putters, self._putters = self._putters, deque()
            for putter in putters:
                if not putter.done():
                    putter.set_result(None)
        return item

    def task_done(self) -> None:
        """Mark one item taken by :meth:`get` as handled."""
        self._unfinished -= 1
        if not self._unfinished:
            self._idle.set()

    async def join(self) -> None:
        """Wait until every item put so far has been taken and marked done."""
        await self._idle.wait()
