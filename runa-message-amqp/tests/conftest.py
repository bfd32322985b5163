"""Fixtures of the AMQP driver tests: RabbitMQ on 127.0.0.1:5672 (guest/guest).

A test needing the broker fails, never skips, when RabbitMQ is down. Every test gets its own
exchange; what the drivers it made declared (exchanges, group queues, the dead-letter queue)
is deleted when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from runa_message import wire
from runa_message.errors import DecodeError
from runa_message.message import Envelope, Outcome
from runa_message_amqp import AmqpDriver, AmqpSettings

HOST, PORT = "127.0.0.1", 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/"
WAIT = 10.0


class Recorder:
    """A :class:`runa_message.Handler` that decodes frames as the registry does and records them.

    ``fail``: how many calls raise before calls succeed (``-1``: every call raises).
    ``misfit``: every call raises :class:`DecodeError`, as the registry does for a payload
    that does not fit the handler's type.
    """

    def __init__(self, fail: int = 0, *, misfit: bool = False) -> None:
        self.fail = fail
        self.misfit = misfit
        self.calls: list[tuple[bytes, bool, bool]] = []
        self.envelopes: list[Envelope] = []
        self.reports: list[BaseException] = []
        self.outcomes: list[Outcome] = []
        self._changed = asyncio.Event()

    async def __call__(
        self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        assert isinstance(frame, bytes)
        self.calls.append((frame, retry, dead_letter))
        self._changed.set()
        envelope = wire.decode(frame)  # raises DecodeError back, as the registry does
        self.envelopes.append(envelope)
        self._changed.set()
        if self.misfit:
            raise DecodeError("payload does not fit the handler's type")
        if self.fail:
            self.fail -= 1 if self.fail > 0 else 0
            raise RuntimeError("handler failed")

    async def report(
        self, error: BaseException, data: bytes | None = None, *, outcome: Outcome = "dropped"
    ) -> None:
        self.reports.append(error)
        self.outcomes.append(outcome)
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``condition()`` holds after some call."""

        async def until() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)

    async def wait_id(self, message_id: str, timeout: float = WAIT) -> None:
        """Wait until the envelope ``message_id`` arrived."""
        await self.wait_for(lambda: any(e.id == message_id for e in self.envelopes), timeout)

    def topics(self, *, but: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """The topics received, except the envelope ids in ``but``."""
        return [e.topic for e in self.envelopes if e.id not in but]


class Topology:
    """Names one test uses, and everything to delete at its end."""

    def __init__(self) -> None:
        self.exchange = f"runa.test.{secrets.token_hex(6)}"
        self.queues: set[str] = set()
        self.exchanges: set[str] = {self.exchange, f"{self.exchange}.dlx"}
        self.drivers: list[AmqpDriver] = []

    def settings(self, **options: Any) -> AmqpSettings:
        """Settings on this test's exchange (and the local broker unless ``url`` is given)."""
        options.setdefault("url", URL)
        options.setdefault("exchange", self.exchange)
        options.setdefault("reconnect_interval", 0.2)
        options.setdefault("close_timeout", 5.0)
        settings = AmqpSettings(**options)
        self.exchanges.add(settings.dead_letter_exchange)
        if settings.dead_letter_queue:
            self.queues.add(settings.dead_letter_queue)
        return settings

    def driver(self, client: AbstractConnection | None = None, **options: Any) -> AmqpDriver:
        """A driver on this test's exchange, closed and cleaned up after the test."""
        driver = AmqpDriver(self.settings(**options), client=client)
        self.drivers.append(driver)
        return driver


@pytest.fixture
async def admin() -> AsyncIterator[AbstractConnection]:
    """A plain aio-pika connection to the broker, for raw publishing and inspection."""
    connection = await aio_pika.connect(URL, timeout=5)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def topology(admin: AbstractConnection) -> AsyncIterator[Topology]:
    """This test's exchange and drivers; deletes what they declared afterwards."""
    topo = Topology()
    try:
        yield topo
    finally:
        for driver in topo.drivers:
            await driver.close()
            topo.queues |= driver.declared_queues
        channel = await admin.channel()
        for queue in sorted(topo.queues):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
            if channel.is_closed:
                channel = await admin.channel()
        for exchange in sorted(topo.exchanges):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
            if channel.is_closed:
                channel = await admin.channel()
        await channel.close()


@pytest.fixture
def recorder() -> type[Recorder]:
    """The recording handler class."""
    return Recorder


class DeadLetters:
    """Collects what reaches a dead-letter queue."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        await self.messages.put(message)

    async def get(self, timeout: float = WAIT) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self.messages.get(), timeout)


@pytest.fixture
def dead_letters(admin: AbstractConnection) -> Callable[[str], Any]:
    """``await dead_letters(queue)``: start collecting what reaches that queue."""

    async def watch(queue: str) -> DeadLetters:
        channel = await admin.channel()
        collected = DeadLetters()
        declared = await channel.declare_queue(queue, passive=True)
        await declared.consume(collected.on_message)
        return collected

    return watch
