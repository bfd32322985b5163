"""One subscription at run time: decoding, filtering, middleware, concurrency and its buffer.

An instance is the ``handler`` a driver receives (see :mod:`runa_message.driver` for the
call contract). Everything per message is resolved once, at ``start()``: the topic matcher,
the middleware chain and a decoder per content type.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from . import wire
from .buffer import Buffer
from .codec import JSON, Codec, Decoder, decoder_for
from .errors import DecodeError
from .hooks import Hooks
from .message import Envelope, ErrorEvent, Message, Outcome, local_envelope
from .topic import compile_pattern

__all__ = ["Middleware", "SubscriptionRuntime", "build_chain"]

# The last frame decoded and its envelope: a driver that hands one frame to several
# subscriptions (a Redis pattern and a channel, say) has it decoded once.
_last_frame: list[Any] = [None, None]

log = logging.getLogger("runa_message.subscription")

Next = Callable[[Envelope], Awaitable[None]]
#: Subscribe middleware: ``async def mw(envelope, call_next) -> None``.
Middleware = Callable[[Envelope, Next], Awaitable[None]]


def build_chain(middlewares: Sequence[Middleware], final: Next) -> Next:
    """Wrap ``final`` in ``middlewares``, the first one outermost."""
    call = final
    for middleware in reversed(middlewares):
        call = _link(middleware, call)
    return call


def _link(middleware: Middleware, call_next: Next) -> Next:
    def step(envelope: Envelope) -> Awaitable[None]:
        return middleware(envelope, call_next)

    return step


class _NoReuse:
    """A type no payload has: the reuse type of a subscription that always decodes."""


class SubscriptionRuntime:
    """The running side of one ``subscribe(...)``; the registry creates it at ``start()``."""

    def __init__(
        self,
        *,
        broker: str,
        pattern: str,
        consumer: str,
        handler: Callable[..., Any],
        payload: Any,
        wants_envelope: bool,
        codec: Codec | None,
        codecs: Mapping[str, Codec],
        default_codec: Codec,
        middlewares: Sequence[Middleware],
        hooks: Hooks,
        concurrency: int,
        buffer: int,
        ack: bool,
    ) -> None:
        self.broker = broker
        self.pattern = pattern
        self.consumer = consumer
        self._matches = compile_pattern(pattern)
        self._selected: dict[str, bool] = {}
        self._hooks = hooks
        self._ack = ack
        self._concurrency = concurrency
        if codec is not None:
            fixed = decoder_for(codec, payload)
            self._decoders: dict[str | None, Decoder] = {}
            self._default_decoder = fixed
        else:
            self._decoders = {name: decoder_for(c, payload) for name, c in codecs.items()}
            self._default_decoder = decoder_for(default_codec, payload)
        # In process, the memory driver carries a value the default JSON codec vouches for
        # as its Message: a subscription of that type decoding JSON with that codec takes it.
        json_codec = codec if codec is not None else codecs.get(JSON.name)
        reusable = json_codec is JSON and JSON.reusable(payload) is not None
        self._reuse_type = payload if reusable else _NoReuse
        self._call = self._make_call(handler, wants_envelope)
        final = self._final_envelope if wants_envelope else self._final
        self._chain = build_chain(middlewares, final)
        # With no middleware the worker decodes and calls the handler itself: one coroutine less.
        self._direct = not middlewares and not wants_envelope
        self._queue: Buffer[Envelope | Message[Any]] = Buffer(buffer)
        self._workers: list[asyncio.Task[None]] = []
        # Ack drivers only: at most `concurrency` handlers at once, and a count for join().
        self._semaphore = asyncio.Semaphore(concurrency) if ack else None
        self._in_flight = 0
        self._idle: asyncio.Event | None = None

    def _make_call(
        self, handler: Callable[..., Any], wants_envelope: bool
    ) -> Callable[[Any], Awaitable[Any]]:
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
        ):
            return handler

        async def in_thread(argument: Any) -> Any:
            # A plain function must not block the event loop.
            return await asyncio.to_thread(handler, argument)

        return in_thread

    # -- the Handler protocol -------------------------------------------------------------

    async def __call__(
        self,
        frame: Envelope | Message[Any] | bytes,
        /,
        *,
        retry: bool = False,
        dead_letter: bool = False,
    ) -> None:
        """Take one frame from the driver (see :mod:`runa_message.driver`)."""
        envelope: Envelope | Message[Any]
        if isinstance(frame, (Envelope, Message)):
            envelope = frame
        elif frame is _last_frame[0]:  # the same frame handed to several subscriptions
            envelope = _last_frame[1]
        else:
            try:
                envelope = wire.decode(frame)
                if type(frame) is bytes:
                    _last_frame[:] = (frame, envelope)
            except DecodeError as exc:
                data = bytes(frame)
                await self._report(exc, None, data, "dead-lettered" if dead_letter else "dropped")
                raise
        topic = envelope.topic
        selected = self._selected.get(topic)
        if selected is None:
            selected = self._matches(topic)
            if len(self._selected) >= 4096:
                self._selected.clear()
            self._selected[topic] = selected
        if not selected:
            return
        if not self._ack:
            if not self._workers:
                self._spawn()
            if not self._queue.offer(envelope):
                await self._queue.put(envelope)
            return
        if isinstance(envelope, Message):
            envelope = local_envelope(envelope)
        final: Outcome = "dead-lettered" if dead_letter else "dropped"
        outcome: Outcome = "retried" if retry else final
        # Counted from arrival, not from the slot: join() and close() wait for queued ones too.
        self._enter()
        try:
            async with self._semaphore:  # type: ignore[union-attr]
                try:
                    await self._chain(envelope)
                except DecodeError as exc:  # a payload that does not fit never will: no retry
                    await self._report(exc, envelope, None, final)
                    raise
                except Exception as exc:
                    await self._report(exc, envelope, None, outcome)
                    raise
        finally:
            self._leave()

    def offer(self, envelope: Envelope | Message[Any]) -> bool:
        """Queue an envelope without a coroutine, for the memory driver.

        False means "await the call instead": the buffer is full, the topic is new to this
        subscription, or the driver acknowledges.
        """
        if self._ack:
            return False
        selected = self._selected.get(envelope.topic)
        if selected is None:
            return False
        return not selected or self._queue.offer(envelope)

    async def report(
        self, error: BaseException, data: bytes | None = None, *, outcome: Outcome = "dropped"
    ) -> None:
        """Report a driver-side problem of this subscription to the error hooks."""
        await self._report(error, None, data, outcome)

    # -- running --------------------------------------------------------------------------

    def _spawn(self) -> None:
        # Workers start with the first message: a quiet subscription costs no task.
        self._workers = [
            asyncio.create_task(self._work(), name=f"runa_message:{self.broker}:{self.consumer}")
            for _ in range(self._concurrency)
        ]

    async def _work(self) -> None:
        queue = self._queue
        chain = self._chain
        direct = self._direct
        call = self._call
        message_of = self._message
        reuse_type = self._reuse_type
        item: Envelope | Message[Any] | None
        handled = 0  # reported to the buffer in one call when it runs empty
        while True:
            # Take what is there without a wait; only an empty buffer suspends the worker.
            item = queue.poll()
            if item is None:
                if handled:
                    queue.task_done(handled)
                    handled = 0
                item = await queue.get()
            try:
                if isinstance(item, Message):  # published in this process (see __init__)
                    if direct and type(item.payload) is reuse_type:
                        await call(item)  # the published value, as decoding would give it
                        continue
                    item = local_envelope(item)
                if direct:
                    await call(message_of(item))
                else:
                    await chain(item)
            except Exception as exc:
                await self._report(exc, item, None, "dropped")
            finally:
                handled += 1

    def _message(self, envelope: Envelope) -> Message[Any]:
        decode = self._decoders.get(envelope.headers.get("content-type"), self._default_decoder)
        payload = decode(envelope.payload)
        return Message(envelope.id, envelope.topic, payload, envelope.headers, envelope.created_at)

    async def _final(self, envelope: Envelope) -> None:
        await self._call(self._message(envelope))

    async def _final_envelope(self, envelope: Envelope) -> None:
        await self._call(envelope)

    def _enter(self) -> None:
        self._in_flight += 1

    def _leave(self) -> None:
        self._in_flight -= 1
        if not self._in_flight and self._idle is not None:
            self._idle.set()

    async def join(self) -> None:
        """Wait until everything handed over so far has been handled."""
        await self._queue.join()
        while self._in_flight:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()

    async def stop(self) -> None:
        """Cancel the workers (after :meth:`join`, or when draining timed out)."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _report(
        self,
        error: BaseException,
        envelope: Envelope | Message[Any] | None,
        data: bytes | None,
        outcome: Outcome,
    ) -> None:
        if isinstance(envelope, Message):
            envelope = local_envelope(envelope)
        topic = envelope.topic if envelope is not None else self.pattern
        event = ErrorEvent(self.broker, topic, self.consumer, envelope, data, error, outcome)
        await self._hooks.error(event)
