"""Run an application's registry in memory for unit tests, and record what it published.

:func:`in_memory` puts every broker of a :class:`~runa_message.Registry` (or of an
:class:`~runa_message.App`'s registry) on the memory driver, one isolated in-memory broker per
broker name, starts it, records every publish per broker and topic and every handler error,
and closes it at the end. Topics, wildcards, groups, codecs, middleware and error hooks work
as they do on the real drivers; nothing leaves the process::

    async with in_memory(registry) as run:
        await registry.publish("default", "notice.created", {"text": "hi"})
        await run.join()                          # every delivered message handled
        assert run.payloads("default", "notice.created") == [{"text": "hi"}]

A registry starts once: build a fresh one per test (a function that builds the application's
registry, or an ``App`` with its providers, makes that easy).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from runa_message.app import App
from runa_message.codec import CODECS, Codec
from runa_message.message import Envelope, ErrorEvent, PublishEvent
from runa_message.registry import ALL, Registry
from runa_message.topic import match_topic

__all__ = ["InMemory", "Recorder", "in_memory"]


class Recorder:
    """What a registry published (per broker and topic) and the errors its handlers reported.

    Install it with ``registry.on_publish(ALL, recorder.on_publish)`` and
    ``registry.on_error(ALL, recorder.on_error)``; :func:`in_memory` does.
    """

    def __init__(self) -> None:
        #: Every successful publish, in order.
        self.events: list[PublishEvent] = []
        #: Every error reported to ``on_error``, in order.
        self.errors: list[ErrorEvent] = []

    def on_publish(self, event: PublishEvent) -> None:
        """The ``on_publish`` hook: records publishes that reached the driver."""
        if event.error is None:
            self.events.append(event)

    def on_error(self, event: ErrorEvent) -> None:
        """The ``on_error`` hook: records the error."""
        self.errors.append(event)

    def published(self, broker: str | None = None, topic: str | None = None) -> list[Envelope]:
        """The envelopes published, in order; only ``broker``'s, only those ``topic`` selects.

        ``topic`` may be a pattern (``"notice.*"``), matched like a subscription.
        """
        return [
            event.envelope
            for event in self.events
            if (broker is None or event.broker == broker)
            and (topic is None or match_topic(topic, event.topic))
        ]

    def payloads(
        self,
        broker: str | None = None,
        topic: str | None = None,
        type_: Any = Any,
        codec: Codec | None = None,
    ) -> list[Any]:
        """The payloads published, decoded into ``type_`` with their content type's codec.

        JSON becomes plain values (or ``type_``), raw payloads ``bytes``. Pass ``codec`` for a
        codec of your own.
        """
        return [
            (codec or _codec_of(envelope)).decode(envelope.payload, type_)
            for envelope in self.published(broker, topic)
        ]

    def topics(self, broker: str | None = None) -> list[str]:
        """The topics published to, in order (repeated when published to more than once)."""
        return [e.topic for e in self.events if broker is None or e.broker == broker]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.events.clear()
        self.errors.clear()


def _codec_of(envelope: Envelope) -> Codec:
    content_type = envelope.headers.get("content-type", "application/json")
    codec = CODECS.get(content_type)
    if codec is None:
        raise LookupError(
            f"no codec known for content type {content_type!r}: pass codec= to payloads()"
        )
    return codec


class InMemory:
    """A registry running in memory, with what it published; :func:`in_memory` makes one."""

    def __init__(self, registry: Registry, recorder: Recorder, *, raise_errors: bool) -> None:
        self.registry = registry
        self.recorder = recorder
        self.raise_errors = raise_errors
        self._seen_errors = 0

    @property
    def errors(self) -> list[ErrorEvent]:
        """Errors reported to ``on_error`` so far (handler failures, undecodable payloads)."""
        return self.recorder.errors

    def published(self, broker: str | None = None, topic: str | None = None) -> list[Envelope]:
        """See :meth:`Recorder.published`."""
        return self.recorder.published(broker, topic)

    def payloads(
        self,
        broker: str | None = None,
        topic: str | None = None,
        type_: Any = Any,
        codec: Codec | None = None,
    ) -> list[Any]:
        """See :meth:`Recorder.payloads`."""
        return self.recorder.payloads(broker, topic, type_, codec)

    def topics(self, broker: str | None = None) -> list[str]:
        """See :meth:`Recorder.topics`."""
        return self.recorder.topics(broker)

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.recorder.clear()
        self._seen_errors = 0

    async def join(self, timeout: float = 5.0, *, raise_errors: bool | None = None) -> None:
        """Wait until every message delivered so far has been handled, including what handlers
        published meanwhile.

        Then, with ``raise_errors`` (default: as given to :func:`in_memory`), raise the first
        error a handler reported since the last ``join``, so a failing handler fails the test.
        Raises :class:`TimeoutError` when handlers are still busy after ``timeout`` seconds.
        """
        try:
            while True:
                before = len(self.recorder.events)
                await self.registry.join(timeout)
                if len(self.recorder.events) == before:
                    break
        except asyncio.TimeoutError as exc:
            raise TimeoutError(
                f"handlers still running after {timeout:g}s: a handler waits for something "
                "that does not come, or messages keep triggering each other"
            ) from exc
        if raise_errors if raise_errors is not None else self.raise_errors:
            self.raise_new_errors()

    def raise_new_errors(self) -> None:
        """Raise the first error reported since the last call (others are noted on it)."""
        new = self.recorder.errors[self._seen_errors :]
        self._seen_errors = len(self.recorder.errors)
        if not new:
            return
        first = new[0].error
        if len(new) > 1 and sys.version_info >= (3, 11):
            others = "; ".join(f"{type(e.error).__name__}: {e.error}" for e in new[1:])
            first.add_note(f"{len(new) - 1} more handler errors: {others}")
        raise first


def switch_to_memory(registry: Registry, recorder: Recorder) -> None:
    """Put every broker of ``registry`` on the memory driver and install ``recorder``'s hooks."""
    for info in registry.info():
        registry.broker(info.name, driver="memory")
    registry.on_publish(ALL, recorder.on_publish)
    registry.on_error(ALL, recorder.on_error)


@contextlib.asynccontextmanager
async def in_memory(
    target: Registry | App, *, raise_errors: bool = True
) -> AsyncIterator[InMemory]:
    """Run ``target`` (a registry, or an app with a ``message.provider``) on the memory driver.

    Every broker gets its own in-memory broker; publishes and handler errors are recorded.
    The registry (or app) is started on entry and closed (shut down) on exit. With
    ``raise_errors`` (the default), :meth:`InMemory.join` raises the first handler error.
    """
    recorder = Recorder()
    if isinstance(target, App):
        app = target
        holder: list[Registry] = []

        def memory_module(registry: Registry) -> None:
            # Runs after the app's own modules, so brokers they registered are switched too.
            switch_to_memory(registry, recorder)
            holder.append(registry)

        app.module(memory_module)
        await app.freeze()
        try:
            yield InMemory(holder[0], recorder, raise_errors=raise_errors)
        finally:
            await app.shutdown()
        return
    switch_to_memory(target, recorder)
    async with target:
        yield InMemory(target, recorder, raise_errors=raise_errors)
