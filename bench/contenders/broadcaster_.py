"""encode/broadcaster on its memory backend: string messages, one task per subscriber.

broadcaster carries strings, so the message is JSON text and the subscriber parses it into
a dict (untyped). It has no wildcard subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from . import Contender, Plan, Publisher, Sink, message_dict, stacked

__all__ = ["BroadcasterContender", "hold_subscriptions"]


class _BroadcastPublisher(Publisher):
    def __init__(self, broadcast: Any, channel: str) -> None:
        self._publish = broadcast.publish
        self._channel = channel

    async def publish(self, i: int) -> None:
        await self._publish(self._channel, orjson.dumps(message_dict(i)).decode())


async def _listen(broadcast: Any, channel: str, ready: asyncio.Event, hit: Any) -> None:
    loads = orjson.loads
    async with broadcast.subscribe(channel) as subscriber:
        ready.set()
        async for event in subscriber:
            hit(loads(event.message)["id"])


class BroadcasterContender(Contender):
    """broadcaster ``memory://``."""

    family = "broadcaster"
    requires = ("broadcaster",)
    wildcards = False

    @contextlib.asynccontextmanager
    async def session(self, plan: Plan, sink: Sink) -> AsyncIterator[Publisher]:
        from broadcaster import Broadcast

        if plan.wildcard or plan.decoys:
            raise NotImplementedError("broadcaster has no wildcard subscriptions")
        async with stacked() as stack:
            broadcast = Broadcast("memory://")
            await broadcast.connect()
            stack.push(broadcast.disconnect)
            tasks = []
            for _ in range(plan.subscriptions):
                ready = asyncio.Event()
                tasks.append(asyncio.create_task(_listen(broadcast, plan.topic, ready, sink.hit)))
                await ready.wait()
            stack.push(lambda: _cancel(tasks))
            yield _BroadcastPublisher(broadcast, plan.topic)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def hold_subscriptions(count: int) -> Any:
    """Open ``count`` subscriptions on distinct channels, each with its listening task."""
    from broadcaster import Broadcast

    broadcast = Broadcast("memory://")
    await broadcast.connect()
    events = [asyncio.Event() for _ in range(count)]
    tasks = [
        asyncio.create_task(_listen(broadcast, f"bench.memory.{i}", events[i], lambda i: None))
        for i in range(count)
    ]
    for event in events:
        await event.wait()
    return broadcast, tasks
