"""Error and publish hooks: called in order, sync or async, never able to break delivery."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .message import ErrorEvent, PublishEvent

__all__ = ["ErrorHook", "Hooks", "PublishHook"]

log = logging.getLogger("runa_message")

#: ``on_error`` hook: gets an :class:`ErrorEvent`; sync or async.
ErrorHook = Callable[[ErrorEvent], Awaitable[None] | None]
#: ``on_publish`` hook: gets a :class:`PublishEvent` after every attempt; sync or async.
PublishHook = Callable[[PublishEvent], Awaitable[None] | None]


class Hooks:
    """The hooks of one broker: registry-wide ones first, then the broker's own."""

    __slots__ = ("on_error", "on_publish")

    def __init__(self, on_error: Sequence[ErrorHook], on_publish: Sequence[PublishHook]) -> None:
        self.on_error = tuple(on_error)
        self.on_publish = tuple(on_publish)

    async def error(self, event: ErrorEvent) -> None:
        """Tell the error hooks; with none, log the error so nothing fails in silence."""
        if not self.on_error:
            log.error(
                "message on %s/%s (consumer %s) failed, %s: %s",
                event.broker,
                event.topic,
                event.consumer,
                event.outcome,
                event.error,
                exc_info=event.error,
            )
            return
        for hook in self.on_error:
            await _call(hook, event)

    async def published(self, event: PublishEvent) -> None:
        """Tell the publish hooks about one attempt."""
        for hook in self.on_publish:
            await _call(hook, event)


async def _call(hook: Callable[[Any], Awaitable[None] | None], event: object) -> None:
    try:
        result = hook(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("hook %r raised; the hook's error is ignored", hook)
