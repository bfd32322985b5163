"""The AMQP (RabbitMQ) driver, on aio-pika's robust connection.

Topology (see ``docs/drivers/amqp.md``):

- Messages are published to one durable topic exchange (``exchange``), the routing key being
  ``prefix`` + the topic with ``/`` and ``:`` turned into ``.``.
- A broadcast subscription owns an exclusive, auto-deleted queue bound with the pattern
  (``*``/``+`` become ``*``, ``#``/``**`` become ``#``: AMQP's topic rules are runa's).
- The members of a group share one durable queue, ``<exchange>.group.<group>.<hash>``, the
  hash being taken from the binding key, so members with another pattern never share it.
- A handler that raises gets its message published again to its queue with the
  ``x-runa-retries`` header counting up, ``max_retries`` times; then the message is rejected
  to the dead-letter exchange the driver declares. A :class:`~runa_message.DecodeError`
  raised back (a frame that is not an envelope, a payload that does not fit the handler's
  type) is permanent: that message is rejected at once, never retried. A delivery the
  broker makes again (never acknowledged) counts as an attempt too.

aio-pika's robust connection and channels reconnect and declare the exchanges, queues and
bindings again. Consumers are registered on the channel directly (one task per delivery, the
body bytes handed over as they are) and consume again when their channel was restored, and
when the broker cancels them while the connection stays up (their queue was deleted, or the
cluster node holding it went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs

from runa_message import wire
from runa_message.backoff import Backoff
from runa_message.driver import Capabilities, Handler
from runa_message.errors import (
    ClosedError,
    ConnectError,
    DecodeError,
    MessageError,
    PublishError,
    UnsupportedFeatureError,
)
from runa_message.redact import describe_error, redact_url, url_secrets
from runa_message.topic import MANY, ONE, translate

from .settings import CAPABILITIES, MAX_NAME_BYTES, AmqpSettings

if TYPE_CHECKING:
    import aiormq.abc
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractExchange,
        AbstractQueue,
    )
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic

    from runa_message.message import Envelope

__all__ = ["RETRY_HEADER", "AmqpDriver", "AmqpSubscription"]

log = logging.getLogger("runa_message.amqp")

#: The AMQP header that counts how many times a message was delivered again after a failure.
RETRY_HEADER = "x-runa-retries"

_CONTENT_TYPE = "application/json"
_WILDCARD_CHAR = re.compile(r"[*+#]")
# What start() meets when the broker cannot be reached or refuses the login (aiormq's
# connection errors, its authentication errors included, are ConnectionErrors).
_UNREACHABLE = (OSError, asyncio.TimeoutError)


class _AioPika:
    """The parts of aio-pika, aiormq and pamqp the driver uses, imported with the first driver.

    Listing drivers imports this package; aio-pika takes long to import, so it waits.
    """

    def __init__(self) -> None:
        import aio_pika
        import aiormq
        from pamqp.commands import Basic

        self.connect_robust = aio_pika.connect_robust
        self.TOPIC = aio_pika.ExchangeType.TOPIC
        self.Properties = Basic.Properties
        self.Ack = Basic.Ack
        #: Errors of a lost or closing connection or channel: wait for it, then retry.
        self.connection_errors: tuple[type[BaseException], ...] = (
            aiormq.exceptions.AMQPError,
            ConnectionError,
            OSError,
            RuntimeError,
        )


@functools.cache
def _aio_pika() -> _AioPika:
    return _AioPika()


class AmqpDriver:
    """Publish and subscribe through an AMQP 0-9-1 broker (RabbitMQ).

    ``AmqpDriver(settings, client=connection)``: pass an aio-pika connection to share it
    (use ``aio_pika.connect_robust`` for reconnection); the driver then never closes it.
    Settings may also be given as keyword arguments: ``AmqpDriver(url=..., prefetch=10)``.
    """

    capabilities: Capabilities

    def __init__(
        self,
        settings: AmqpSettings | None = None,
        *,
        client: AbstractConnection | None = None,
        **options: Any,
    ) -> None:
        if options:
            if settings is not None:
                raise TypeError("pass AmqpDriver either settings or keyword settings, not both")
            settings = AmqpSettings.from_mapping(options, path="AmqpDriver()")
        #: The driver's settings.
        self.settings = settings if settings is not None else AmqpSettings()
        self.capabilities: Capabilities = attrs.evolve(
            CAPABILITIES, max_topic_length=MAX_NAME_BYTES - len(self.settings.prefix.encode())
        )
        self._a = _aio_pika()
        self._connection: AbstractConnection | None = client
        self._owns_connection = client is None
        self._publish_channel: AbstractChannel | None = None
        self._retry_channel: AbstractChannel | None = None
        self._retry_lock = asyncio.Lock()
        self._subscriptions: set[AmqpSubscription] = set()
        #: Durable queues this driver declared (group queues, the dead-letter queue).
        self.declared_queues: set[str] = set()
        self._started = False
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self._exchange_name = self.settings.exchange
        self._prefix = self.settings.prefix
        self._timeout = self.settings.publish_timeout
        self._delivery_mode = 2 if self.settings.persistent_messages else 1
        self._dead_letter_exchange = (
            self.settings.dead_letter_exchange if self.settings.dead_letter else None
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "new"
        url = redact_url(self.settings.url)
        return f"<AmqpDriver url={url!r} exchange={self._exchange_name!r} {state}>"

    # -- names ----------------------------------------------------------------------------

    def routing_key(self, topic: str) -> str:
        """The routing key a message on ``topic`` is published with."""
        return self._prefix + topic.replace("/", ".").replace(":", ".")

    def binding_key(self, pattern: str) -> str:
        """The binding key of a subscription to ``pattern`` (runa syntax)."""
        return self._prefix + translate(pattern, separator=".", one="*", many="#")

    def verbatim_binding_key(self, pattern: str) -> str | None:
        """The binding for topics published with ``/`` or ``:`` kept in the routing key.

        Go runa's AMQP driver uses the topic as written as routing key; a subscription whose
        pattern holds ``/`` or ``:`` also binds it that way (wildcards in AMQP spelling), so
        messages on topics written alike reach it. None when it adds nothing.
        """
        if "/" not in pattern and ":" not in pattern:
            return None
        words = []
        for word in pattern.split("."):
            if word in ONE:
                words.append("*")
            elif word in MANY:
                words.append("#")
            elif _WILDCARD_CHAR.search(word):
                return None  # a wildcard inside an AMQP word would be taken literally
            else:
                words.append(word)
        return self._prefix + ".".join(words)

    def group_queue(self, pattern: str, group: str) -> str:
        """The durable queue the members of ``group`` subscribed to ``pattern`` share.

        ``<exchange>.group.<group>.<hash>``: the hash is the first 12 hex digits of the
        SHA-256 of the binding key, so one group with two patterns has two queues.
        """
        digest = hashlib.sha256(self.binding_key(pattern).encode()).hexdigest()[:12]
        name = f"{self._exchange_name}.group.{group}.{digest}"
        if len(name.encode()) > MAX_NAME_BYTES:
            raise UnsupportedFeatureError(
                f"group {group[:40]!r}... makes the queue name longer than {MAX_NAME_BYTES} "
                "bytes, AMQP's limit: use a shorter group name"
            )
        return name

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (unless a connection was given) and declare the exchanges.

        Raises :class:`~runa_message.ConnectError` when the broker cannot be reached within
        ``connect_timeout`` or refuses the login.
        """
        if self._closed:
            raise ClosedError("this AMQP driver is closed: create a new one")
        if self._started:
            return
        settings = self.settings
        if self._connection is None:
            self._connection = await self._connect()
        try:
            channel = self._connection.channel(publisher_confirms=settings.publisher_confirms)
            await asyncio.wait_for(channel.initialize(), settings.connect_timeout)
            self._publish_channel = channel
            await self._declare_exchanges(channel)
            if settings.dead_letter and settings.dead_letter_queue:
                queue = await channel.declare_queue(settings.dead_letter_queue, durable=True)
                await queue.bind(settings.dead_letter_exchange, "#")
                self.declared_queues.add(settings.dead_letter_queue)
        except Exception as exc:
            await self._abort_start()
            if isinstance(exc, _UNREACHABLE):
                raise ConnectError(
                    f"cannot reach the AMQP broker {self._where()} within connect_timeout "
                    f"({settings.connect_timeout:g} s): {self._describe(exc)}; check that the "
                    "broker runs"
                ) from None
            raise MessageError(
                f"AMQP driver could not declare exchange {self._exchange_name!r} on "
                f"{self._where()}: {self._describe(exc)}; a name declared before with other "
                "options must be deleted first, or choose another exchange"
            ) from None
        self._started = True
        self._watchdog = asyncio.get_running_loop().create_task(
            self._watch(), name="runa_message.amqp:watchdog"
        )
        log.debug("AMQP driver started on %s", self._where())

    async def _watch(self) -> None:
        # A backstop for the restoration: a subscription whose consumer is gone while the
        # connection is up (a cancel the client library did not report, a restoration that
        # failed) consumes again within a few seconds.
        interval = max(1.0, 2 * self.settings.reconnect_interval)
        while not self._closed:
            await asyncio.sleep(interval)
            connection: Any = self._connection
            connected = connection is not None and not connection.is_closed
            event = getattr(connection, "connected", None)
            if isinstance(event, asyncio.Event):
                connected = connected and event.is_set()
            for subscription in list(self._subscriptions):
                subscription.check(connected)

    async def _connect(self) -> AbstractConnection:
        settings = self.settings
        try:
            return await self._a.connect_robust(
                settings.url,
                timeout=settings.connect_timeout,
                reconnect_interval=settings.reconnect_interval,
                client_properties={"connection_name": "runa-message"},
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ConnectError(
                f"cannot connect to AMQP broker {self._where()}: {self._describe(exc)}; check "
                "that the broker runs and the url, user and password are right"
            ) from None

    async def _declare_exchanges(self, channel: AbstractChannel) -> AbstractExchange:
        exchange = await channel.declare_exchange(self._exchange_name, self._a.TOPIC, durable=True)
        if self.settings.dead_letter:
            await channel.declare_exchange(
                self.settings.dead_letter_exchange, self._a.TOPIC, durable=True
            )
        return exchange

    async def _abort_start(self) -> None:
        channel, self._publish_channel = self._publish_channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
        if self._owns_connection and self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                await connection.close()

    async def close(self) -> None:
        """Close subscriptions, channels and the connection the driver opened; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        subscriptions = list(self._subscriptions)
        await asyncio.gather(*(sub.close() for sub in subscriptions), return_exceptions=True)
        for channel in (self._retry_channel, self._publish_channel):
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), self.settings.close_timeout)
        self._retry_channel = self._publish_channel = None
        if self._owns_connection and self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self.settings.close_timeout)
        log.debug("AMQP driver closed on %s", self._where())

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish ``envelope`` on ``topic``; wait at most ``publish_timeout`` (then PublishError)."""
        if self._closed:
            raise ClosedError("this AMQP driver is closed: nothing can be published through it")
        channel = self._publish_channel
        if channel is None:
            raise PublishError("the AMQP driver is not started: call registry.start() first")
        body = wire.encode(envelope)
        routing_key = self._prefix + topic.replace("/", ".").replace(":", ".")
        properties = self._a.Properties(
            content_type=_CONTENT_TYPE,
            delivery_mode=self._delivery_mode,
            message_id=envelope.id,
            timestamp=envelope.created_at,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        underlay = _underlay(channel)
        if underlay is not None:
            try:
                result = await underlay.basic_publish(
                    body,
                    exchange=self._exchange_name,
                    routing_key=routing_key,
                    properties=properties,
                    timeout=self._timeout,
                )
            except self._a.connection_errors as exc:
                if self._closed:
                    raise ClosedError("the AMQP driver was closed during the publish") from None
                log.debug("publish on %s failed (%s); waiting for the connection", topic, exc)
            except asyncio.TimeoutError:
                raise self._timeout_error(topic, envelope, None) from None
            else:
                if result is None or isinstance(result, self._a.Ack):
                    return
                raise PublishError(
                    f"the broker refused message {envelope.id} on {topic!r} "
                    f"({type(result).__name__}): check the broker's logs and limits"
                )
        await self._publish_slow(channel, topic, envelope, routing_key, body, properties, deadline)

    async def _publish_slow(
        self,
        channel: AbstractChannel,
        topic: str,
        envelope: Envelope,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        deadline: float,
    ) -> None:
        # The connection is down or was lost during the publish: wait until the robust
        # connection restored the channel, publish again, until the deadline.
        loop = asyncio.get_running_loop()
        pause = Backoff(first=0.02, maximum=0.5, jitter=0)
        last: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._timeout_error(topic, envelope, last)
            if self._closed:
                raise ClosedError("the AMQP driver was closed during the publish")
            try:
                underlay = await asyncio.wait_for(_ready_underlay(channel), remaining)
                result = await underlay.basic_publish(
                    body,
                    exchange=self._exchange_name,
                    routing_key=routing_key,
                    properties=properties,
                    timeout=remaining,
                )
            except asyncio.TimeoutError:
                continue
            except self._a.connection_errors as exc:
                last = exc
                # The broken connection may not be noticed yet: back off a little.
                await asyncio.sleep(min(pause.delay(), max(0.0, deadline - loop.time())))
                continue
            if result is None or isinstance(result, self._a.Ack):
                return
            raise PublishError(
                f"the broker refused message {envelope.id} on {topic!r} "
                f"({type(result).__name__}): check the broker's logs and limits"
            )

    def _timeout_error(
        self, topic: str, envelope: Envelope, last: BaseException | None
    ) -> PublishError:
        reason = f" (last error: {self._describe(last)})" if last is not None else ""
        return PublishError(
            f"message {envelope.id} on {topic!r} was not confirmed by the AMQP broker "
            f"{self._where()} within publish_timeout={self._timeout}s{reason}: the broker is "
            "down or unreachable; the message may or may not have been delivered"
        )

    async def _republish(self, queue: str, message: DeliveredMessage, attempt: int) -> None:
        """Put ``message`` back at the end of ``queue`` with its retry count; confirmed."""
        channel = self._retry_channel
        if channel is None:
            async with self._retry_lock:
                if self._retry_channel is None:
                    connection = self._connection
                    if connection is None or self._closed:
                        raise ClosedError("the AMQP driver is closed")
                    opened = connection.channel(publisher_confirms=True)
                    await opened.initialize()
                    self._retry_channel = opened
                channel = self._retry_channel
        original = message.header.properties
        headers = dict(original.headers or {})
        headers[RETRY_HEADER] = attempt
        properties = self._a.Properties(
            content_type=original.content_type,
            delivery_mode=original.delivery_mode or self._delivery_mode,
            message_id=original.message_id,
            timestamp=original.timestamp,
            headers=headers,
        )
        underlay = await asyncio.wait_for(_ready_underlay(channel), self._timeout)
        result = await underlay.basic_publish(
            message.body,
            exchange="",
            routing_key=queue,
            properties=properties,
            timeout=self._timeout,
        )
        if result is not None and not isinstance(result, self._a.Ack):
            raise PublishError(f"the broker refused the retry ({type(result).__name__})")

    # -- subscribing ----------------------------------------------------------------------

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> AmqpSubscription:
        """Declare and bind the subscription's queue, start consuming; return when active."""
        if self._closed:
            raise ClosedError("this AMQP driver is closed: create a new one")
        connection = self._connection
        if connection is None or not self._started:
            raise RuntimeError("the AMQP driver is not started: call start() first")
        binding = self.binding_key(pattern)
        if len(binding.encode()) > MAX_NAME_BYTES:
            raise UnsupportedFeatureError(
                f"pattern {pattern[:40]!r}... gives a binding key over {MAX_NAME_BYTES} bytes, "
                "AMQP's limit: use a shorter pattern"
            )
        if group is None:
            name = f"{self._exchange_name}.broadcast.{secrets.token_hex(8)}"
        else:
            name = self.group_queue(pattern, group)
        channel = connection.channel(publisher_confirms=False)
        try:
            await channel.initialize()
            await channel.set_qos(prefetch_count=self.settings.prefetch)
            # Declared on this channel too, so its restoration after a reconnection
            # never binds to an exchange that is not there yet.
            exchange = await self._declare_exchanges(channel)
            if group is None:
                queue = await channel.declare_queue(
                    name, exclusive=True, auto_delete=True, arguments=self._queue_arguments(name)
                )
            else:
                queue = await channel.declare_queue(
                    name, durable=True, arguments=self._queue_arguments(name)
                )
                self.declared_queues.add(name)
            await queue.bind(exchange, binding)
            verbatim = self.verbatim_binding_key(pattern)
            if (
                verbatim is not None
                and verbatim != binding
                and len(verbatim.encode()) <= MAX_NAME_BYTES
            ):
                await queue.bind(exchange, verbatim)
            subscription = AmqpSubscription(self, channel, queue, pattern, consumer, handler)
            await subscription.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await channel.close()
            if isinstance(exc, MessageError):
                raise
            raise MessageError(
                f"AMQP driver could not subscribe {consumer!r} to {pattern!r} (queue {name!r}): "
                f"{self._describe(exc)}; a queue declared before with other options must be "
                "deleted first"
            ) from None
        self._subscriptions.add(subscription)
        log.debug("subscribed %s to %r through queue %s", consumer, binding, name)
        return subscription

    # -- helpers --------------------------------------------------------------------------

    def _queue_arguments(self, queue: str) -> dict[str, Any] | None:
        # Dead letters carry the name of their queue as routing key, whatever topic they
        # had or however often they were retried: bind to the dead-letter exchange by queue.
        if self._dead_letter_exchange is None:
            return None
        return {
            "x-dead-letter-exchange": self._dead_letter_exchange,
            "x-dead-letter-routing-key": queue,
        }

    def _where(self) -> str:
        return redact_url(self.settings.url)

    def _describe(self, exc: BaseException | None) -> str:
        return describe_error(exc, url_secrets(self.settings.url))


class AmqpSubscription:
    """One consumer on one queue; :meth:`close` stops it (a group's queue stays).

    The consumer is registered on the channel directly: each delivery is one task calling the
    handler with the body bytes. aio-pika's robust channel declares the queue and its bindings
    again after a reconnection; this object consumes again then (the channel's reopen
    callback), and also when the broker cancels the consumer while the connection stays up
    (its queue was deleted, or the cluster node holding it went away).
    """

    def __init__(
        self,
        driver: AmqpDriver,
        channel: AbstractChannel,
        queue: AbstractQueue,
        pattern: str,
        consumer: str,
        handler: Handler,
    ) -> None:
        self.driver = driver
        self.queue_name = queue.name
        self.pattern = pattern
        self.consumer = consumer
        self.tag = _consumer_tag(consumer)
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._errors = driver._a.connection_errors
        self._max_retries = driver.settings.max_retries
        self._dead_letter = driver.settings.dead_letter
        self._closing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._recovery: asyncio.Task[None] | None = None
        self._missing = False
        self._consume_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<AmqpSubscription {self.consumer!r} {self.pattern!r} queue={self.queue_name!r}>"

    # -- consuming, and consuming again ----------------------------------------------------

    async def start(self) -> None:
        """Start consuming; from now on, consume again whenever the channel is restored."""
        await self._consume()
        self._channel.reopen_callbacks.add(self._on_reopen)  # type: ignore[attr-defined]

    async def _consume(self) -> None:
        async with self._consume_lock:
            if self._closing:
                return
            underlay = await self._channel.get_underlay_channel()
            if self.tag in _consumers(underlay):
                return
            # aiormq 7 tells of a consumer the broker cancelled; with aiormq 6 the driver's
            # watchdog notices it is gone.
            cancelled = getattr(underlay, "on_consumer_cancel_callbacks", None)
            if cancelled is not None:
                cancelled.add(self._on_broker_cancel)
            await underlay.basic_consume(
                self.queue_name,
                self._on_delivery,
                consumer_tag=self.tag,
                timeout=self.driver.settings.connect_timeout,
            )

    async def _on_reopen(self, _channel: Any) -> None:
        # The robust channel declared the queue and its bindings again: consume again.
        try:
            await self._consume()
        except Exception as exc:
            log.debug("consuming %s again failed (%s); retrying", self.queue_name, exc)
            self._recover()

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        if frame.consumer_tag == self.tag and not self._closing:
            log.warning(
                "the broker cancelled consumer %s of queue %s; consuming again",
                self.tag,
                self.queue_name,
            )
            self._recover()

    def check(self, connected: bool) -> None:
        """Consume again if the consumer is gone while it should be there (the watchdog)."""
        if self._closing or not connected:
            return
        if self._recovery is not None and not self._recovery.done():
            return
        underlay = _underlay(self._channel)
        if underlay is not None and self.tag in _consumers(underlay):
            self._missing = False
        elif not self._missing:
            self._missing = True  # maybe restoring right now: look again next time
        else:
            self._missing = False
            log.warning("queue %s has lost its consumer; consuming again", self.queue_name)
            self._recover()

    def _recover(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(
                self._recover_loop(), name=f"runa_message.amqp:recover:{self.queue_name}"
            )

    async def _recover_loop(self) -> None:
        settings = self.driver.settings
        pause = Backoff(first=0.1, maximum=settings.reconnect_interval, jitter=0)
        while not self._closing:
            try:
                await asyncio.wait_for(self._restore(), settings.connect_timeout)
                log.info("consuming queue %s again", self.queue_name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The queue's node may still be down, or the connection: try again.
                log.debug("consuming %s again failed (%s); retrying", self.queue_name, exc)
            await asyncio.sleep(pause.delay())

    async def _restore(self) -> None:
        channel: Any = self._channel
        if _underlay(self._channel) is None:
            # A failed declaration closed the channel: reopening it declares the queue and
            # its bindings again (and the reopen callback consumes).
            await channel.restore()
        else:
            # The queue may have been deleted: declare it and bind it again.
            await self._queue.restore()  # type: ignore[attr-defined]
        await self._consume()

    # -- one delivery ---------------------------------------------------------------------

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        channel = message.channel
        tag = cast(int, message.delivery_tag)
        if self._closing:
            # Received after close() began and never handed over: give it back.
            with contextlib.suppress(*self._errors):
                await channel.basic_nack(tag, requeue=True)
            return
        headers = message.header.properties.headers
        retries = headers.get(RETRY_HEADER, 0) if headers else 0
        if not isinstance(retries, int):
            retries = 0
        retry = retries < self._max_retries
        self._in_flight += 1
        self._idle.clear()
        try:
            if message.redelivered:
                # Handed out before and never acknowledged (a process exited, a connection
                # broke): that delivery counts as an attempt, so a message that makes its
                # handler's process die is not delivered forever.
                await self._redelivered(message, tag, retry, retries)
                return
            try:
                await self._handler(message.body, retry=retry, dead_letter=self._dead_letter)
            except DecodeError:
                # Not an envelope, or a payload that does not fit the handler's type: it never
                # will, so it is dead-lettered (or dropped) at once, never retried.
                await self._reject(channel, tag)
            except Exception:
                await self._failed(message, tag, retry, retries)
            else:
                try:
                    await channel.basic_ack(tag)
                except self._errors as exc:
                    log.debug(
                        "ack on %s lost (%s); the broker delivers again", self.queue_name, exc
                    )
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _failed(self, message: DeliveredMessage, tag: int, retry: bool, retries: int) -> None:
        if not retry:
            await self._reject(message.channel, tag)
            return
        await self._requeue(message, tag, retries + 1)

    async def _requeue(self, message: DeliveredMessage, tag: int, attempt: int) -> None:
        # A copy with the count goes to the end of the queue, then the original is acked.
        try:
            await self.driver._republish(self.queue_name, message, attempt)
        except Exception as exc:
            # Bounded either way: without a connection the reject is lost too and the broker
            # delivers the message again; with one, it is dead-lettered rather than looping.
            log.warning(
                "retry of message %s on queue %s failed (%s); rejecting it",
                message.header.properties.message_id,
                self.queue_name,
                self.driver._describe(exc),
            )
            await self._reject(message.channel, tag)
            return
        try:
            await message.channel.basic_ack(tag)
        except self._errors as exc:
            log.debug("ack on %s lost (%s)", self.queue_name, exc)

    async def _redelivered(
        self, message: DeliveredMessage, tag: int, retry: bool, retries: int
    ) -> None:
        if retry:
            await self._requeue(message, tag, retries + 1)
            return
        await self._reject(message.channel, tag)
        fate = "dead-lettered" if self._dead_letter else "dropped"
        times = "once" if retries == 0 else f"{retries + 1} times"
        error = MessageError(
            f"message {message.header.properties.message_id} on queue {self.queue_name!r} was "
            f"delivered {times} without an acknowledgement (its handler's process exited or "
            f"lost the connection); {fate} without calling the handler again"
        )
        log.warning("%s", error)
        with contextlib.suppress(Exception):
            await self._handler.report(
                error, message.body, outcome="dead-lettered" if self._dead_letter else "dropped"
            )

    async def _reject(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        # With a dead-letter exchange on the queue, the broker moves the message there.
        try:
            await channel.basic_reject(tag, requeue=False)
        except self._errors as exc:
            log.debug("reject on %s lost (%s); the broker delivers again", self.queue_name, exc)

    # -- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop consuming, let handlers in flight finish (``close_timeout``), close the channel."""
        if self._closing:
            return
        self._closing = True
        timeout = self.driver.settings.close_timeout
        self._channel.reopen_callbacks.discard(self._on_reopen)  # type: ignore[attr-defined]
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        underlay = _underlay(self._channel)
        if underlay is not None and self.tag in _consumers(underlay):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(underlay.basic_cancel(self.tag), timeout)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._channel.close(), timeout)
        self.driver._subscriptions.discard(self)


def _underlay(channel: AbstractChannel) -> aiormq.abc.AbstractChannel | None:
    # The aiormq channel under an open aio-pika channel, without awaiting anything.
    transport = getattr(channel, "_channel", None)
    if transport is None:
        return None
    underlay: aiormq.abc.AbstractChannel = transport.channel
    if underlay.is_closed:
        return None
    return underlay


async def _ready_underlay(channel: AbstractChannel) -> aiormq.abc.AbstractChannel:
    ready = getattr(channel, "ready", None)
    if ready is not None:
        await ready()
    return await channel.get_underlay_channel()


def _consumers(channel: aiormq.abc.AbstractChannel) -> Mapping[str, Any]:
    consumers: Mapping[str, Any] = getattr(channel, "consumers", {})
    return consumers


def _consumer_tag(consumer: str) -> str:
    # Tags are short strings (255 bytes): keep the consumer's name readable in the broker UI.
    name = consumer.encode()[:200].decode(errors="ignore")
    return f"runa.{name}.{secrets.token_hex(4)}"
