"""The NATS driver: runa topics on NATS subjects, groups as queue groups, on nats-py.

A topic is published on the subject ``prefix + topic`` with ``/`` and ``:`` written as
``.``. In patterns ``*``/``+`` become ``*`` and ``#``/``**`` become ``>``; because NATS ``>``
needs at least one more token, ``user.#`` subscribes ``user.>`` and ``user``, so a
subscription receives exactly what :func:`~runa_message.match_topic` selects.

Delivery is core NATS: at most once, nothing kept for a subscriber that is away. nats-py
reconnects by itself and restores every subscription. A publish while the connection is down
waits up to ``publish_timeout`` for it to come back, then raises
:class:`~runa_message.PublishError`; it is never left in a buffer that may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, cast

from runa_message.driver import Capabilities, Handler
from runa_message.errors import (
    ClosedError,
    ConfigError,
    ConnectError,
    DecodeError,
    MessageError,
    PublishError,
)
from runa_message.redact import describe_error, redact_url
from runa_message.topic import MANY, ONE, segments
from runa_message.wire import encode

from .settings import NatsSettings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription

    from runa_message.message import Envelope

__all__ = ["NatsDriver", "subject_of", "subjects_of"]

log = logging.getLogger("runa_message.nats")

#: The client-side buffer of publishes not yet written to the socket (nats-py's
#: ``pending_size``); a publish that finds it full waits for the socket to drain.
OUTBOUND_BUFFER = 2 * 1024 * 1024
#: How often a waiter looks at the state of a client it gets no callbacks from (injected).
_POLL_SECONDS = 0.05
#: nats-py gives up a single connection attempt after this long (start() waits longer).
_ATTEMPT_SECONDS = 2.0
_CACHE_SIZE = 4096

_State = Literal["new", "starting", "running", "closing", "closed"]


class _NatsPy:
    """The parts of nats-py the driver uses, imported when the first driver is created.

    Listing drivers imports this package; nats-py (its client and errors) waits until then.
    """

    def __init__(self) -> None:
        from nats import errors
        from nats.aio.client import Client

        self.Client = Client
        self.Error = errors.Error
        self.BadSubjectError = errors.BadSubjectError
        self.MaxPayloadError = errors.MaxPayloadError
        self.ConnectionClosedError = errors.ConnectionClosedError
        self.ConnectionDrainingError = errors.ConnectionDrainingError
        self.OutboundBufferLimitError = errors.OutboundBufferLimitError
        self.StaleConnectionError = errors.StaleConnectionError
        self.FlushTimeoutError = errors.FlushTimeoutError
        self.SlowConsumerError = errors.SlowConsumerError
        #: Connection errors that retrying does not cure (credentials, TLS).
        self.fatal: tuple[type[BaseException], ...] = (
            ssl.SSLError,
            ssl.CertificateError,
            errors.AuthorizationError,
            errors.SecureConnRequiredError,
            errors.SecureConnWantedError,
            errors.SecureConnFailedError,
            errors.InvalidUserCredentialsError,
        )


@functools.cache
def _nats_py() -> _NatsPy:
    return _NatsPy()


def subject_of(prefix: str, topic: str) -> str:
    """The NATS subject a (validated) topic is published on."""
    return prefix + topic.replace("/", ".").replace(":", ".")


def subjects_of(prefix: str, pattern: str) -> tuple[str, ...]:
    """The NATS subjects that together receive what a (validated) pattern selects.

    ``user.#`` gives ``("user.>", "user")``: NATS ``>`` needs at least one token, and the
    two never both match one subject. A bare ``#`` gives ``prefix + ">"``.
    """
    tokens = [
        "*" if seg in ONE else ">" if seg in MANY else "*" if ">" in seg else seg
        for seg in segments(pattern)
    ]
    # A literal token holding '>' is not a valid NATS filter token; '*' selects more and
    # the registry filters the rest out.
    subject = prefix + ".".join(tokens)
    if tokens[-1] == ">" and len(tokens) > 1:
        return (subject, prefix + ".".join(tokens[:-1]))
    return (subject,)


class NatsDriver:
    """The runa-message driver for NATS (core pub/sub, queue groups), on nats-py.

    ``NatsDriver(settings)`` connects at ``start()`` and drains and closes its connection at
    ``close()``. ``NatsDriver(settings, client=nc)`` uses a connected ``nats.aio.client.Client``
    and never closes it: ``close()`` drains only this driver's subscriptions.
    """

    capabilities: Capabilities

    def __init__(
        self, settings: NatsSettings | None = None, *, client: Client | None = None
    ) -> None:
        self.settings = settings if settings is not None else NatsSettings()
        self.capabilities = self.settings.capabilities
        self._n = _nats_py()
        self._prefix = self.settings.prefix
        self._client = client
        self._nc: Client | None = None
        self._owns = client is None
        self._state: _State = "new"
        self._subjects: dict[str, str] = {}
        self._subscriptions: set[_NatsSubscription] = set()
        self._natives: dict[NatsSubscription, _NatsSubscription] = {}
        self._changed = asyncio.Event()
        self._closing: asyncio.Future[None] | None = None
        self._startup_failure: asyncio.Future[BaseException] | None = None
        self._last_error: BaseException | None = None
        self._outage_logged = False
        self._original_error_cb: Any = None
        self._chained_error_cb: Any = None

    def __repr__(self) -> str:
        shown = [redact_url(url) for url in self.settings.url]
        where = (
            "injected client" if not self._owns else repr(shown[0] if len(shown) == 1 else shown)
        )
        return f"<NatsDriver {where} prefix={self._prefix!r} {self._state}>"

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (or adopt the injected client).

        Waits up to ``connect_timeout`` for the first connection, then raises
        :class:`~runa_message.ConnectError`; an authorization or TLS failure raises it at
        once.
        """
        if self._state in ("closing", "closed"):
            raise ClosedError("the NATS driver is closed: create a new driver to connect again")
        if self._state != "new":
            return
        self._state = "starting"
        try:
            if self._client is not None:
                self._adopt(self._client)
                self._nc = self._client
            else:
                nc = await self._connect()
                if self._closing is not None:  # close() was called meanwhile
                    await nc.close()
                    raise ClosedError("the NATS driver was closed while it was starting")
                self._nc = nc
        except BaseException:
            if self._state == "starting":
                self._state = "new"
            raise
        self._state = "running"
        log.debug("%r started", self)

    async def close(self) -> None:
        """Drain this driver's subscriptions within ``drain_timeout``, then close its connection.

        Idempotent. A client passed in is flushed but never closed. Publishing afterwards
        raises :class:`~runa_message.ClosedError`.
        """
        if self._state == "closed":
            return
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        self._state = "closing"
        self._pulse()
        try:
            if self._subscriptions:
                await asyncio.gather(
                    *(sub.close() for sub in list(self._subscriptions)), return_exceptions=True
                )
            nc = self._nc
            if nc is not None:
                if self._owns:
                    await self._close_own(nc)
                else:
                    await self._release_client(nc)
        finally:
            self._state = "closed"
            self._closing.set_result(None)
            log.debug("%r closed", self)

    async def _connect(self) -> Client:
        settings = self.settings
        nc = self._n.Client()
        loop = asyncio.get_running_loop()
        failure: asyncio.Future[BaseException] = loop.create_future()
        self._startup_failure = failure
        connecting = asyncio.ensure_future(nc.connect(**self._connect_options()))
        try:
            waiting: list[asyncio.Future[Any]] = [connecting, failure]
            done, _ = await asyncio.wait(
                waiting,
                timeout=settings.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            await _abandon(nc, connecting)
            raise
        finally:
            self._startup_failure = None
        if connecting in done and connecting.exception() is None:
            log.info("connected to NATS at %s", self._server(nc))
            return nc
        await _abandon(nc, connecting)
        if failure.done():
            reason: BaseException | None = failure.result()
        elif connecting.done() and not connecting.cancelled():
            reason = connecting.exception()
        else:
            reason = self._last_error
        servers = ", ".join(redact_url(url) for url in settings.url)
        if failure.done():
            text = f"NATS at {servers} refused the connection: {self._describe(reason)}"
        else:
            text = f"cannot connect to NATS at {servers} within {settings.connect_timeout}s" + (
                f" (last error: {self._describe(reason)})" if reason is not None else ""
            )
        raise ConnectError(
            f"{text}; check that nats-server runs there and the url, credentials and TLS "
            "settings (raise connect_timeout for a slow network)"
        ) from None

    def _connect_options(self) -> dict[str, Any]:
        settings = self.settings
        options: dict[str, Any] = {
            "servers": list(settings.url),
            "name": settings.name,
            "allow_reconnect": settings.max_reconnect_attempts != 0,
            "connect_timeout": min(_ATTEMPT_SECONDS, settings.connect_timeout),
            "reconnect_time_wait": settings.reconnect_time_wait,
            "max_reconnect_attempts": settings.max_reconnect_attempts,
            "ping_interval": settings.ping_interval,
            "max_outstanding_pings": 2,
            "pending_size": OUTBOUND_BUFFER,
            "flush_timeout": settings.publish_timeout,
            "drain_timeout": settings.drain_timeout,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        if settings.user is not None:
            options["user"] = settings.user
            options["password"] = settings.password
        if settings.token is not None:
            options["token"] = settings.token
        if settings.creds_file is not None:
            if not os.path.isfile(settings.creds_file):
                raise ConfigError(
                    f"message.nats.creds_file: {settings.creds_file!r} is not a file; give the "
                    "path of a NATS .creds file"
                )
            options["user_credentials"] = settings.creds_file
        if settings.tls:
            options["tls"] = self._ssl_context()
            if settings.tls_hostname is not None:
                options["tls_hostname"] = settings.tls_hostname
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        settings = self.settings
        try:
            context = ssl.create_default_context(cafile=settings.tls_ca_file)
            if settings.tls_cert_file is not None:
                context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"message.nats: cannot load the TLS files (tls_ca_file, tls_cert_file, "
                f"tls_key_file): {exc}; give readable PEM files"
            ) from None
        return context

    def _adopt(self, nc: Client) -> None:
        if nc.is_closed:
            raise MessageError(
                "the NATS client passed to NatsDriver is closed: pass a connected client "
                "(nc = await nats.connect(...))"
            )
        if not (nc.is_connected or nc.is_reconnecting):
            raise MessageError(
                "the NATS client passed to NatsDriver is not connected: "
                "await nc.connect(...) before registry.start()"
            )
        # Slow-consumer and permission errors of this driver's subscriptions reach only the
        # client's error callback; chain onto it so they are reported to on_error too.
        original = getattr(nc, "_error_cb", None)
        if original is not None:

            async def chained(error: Exception) -> None:
                self._observe(error)
                await original(error)

            self._original_error_cb = original
            self._chained_error_cb = chained
            nc._error_cb = chained

    async def _close_own(self, nc: Client) -> None:
        if nc.is_connected:
            try:
                await _flush(nc, self.settings.drain_timeout)
            except (self._n.Error, asyncio.TimeoutError) as exc:
                log.warning(
                    "NATS did not confirm the last publishes within drain_timeout (%ss): %s",
                    self.settings.drain_timeout,
                    self._describe(exc),
                )
        elif not nc.is_closed and nc.pending_data_size:
            log.warning(
                "closing while NATS is unreachable: %d bytes of publishes were not sent",
                nc.pending_data_size,
            )
        try:
            await nc.close()
        except Exception as exc:  # closing must not fail the caller's shutdown
            log.warning("closing the NATS connection failed: %s", self._describe(exc))
        # close() cancels a reconnect loop in progress, but may lose the cancellation (_end).
        reconnecting = getattr(nc, "_reconnection_task", None)
        if reconnecting is not None:
            await _end(reconnecting)

    async def _release_client(self, nc: Client) -> None:
        if self._chained_error_cb is not None and getattr(nc, "_error_cb", None) is (
            self._chained_error_cb
        ):
            nc._error_cb = self._original_error_cb
        if nc.is_connected:
            try:
                await _flush(nc, self.settings.drain_timeout)
            except (self._n.Error, asyncio.TimeoutError) as exc:
                log.warning(
                    "NATS did not confirm the last publishes within drain_timeout: %s",
                    self._describe(exc),
                )

    # -- publish ------------------------------------------------------------------------

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish ``envelope`` on the subject of ``topic``.

        While the connection is down, waits up to ``publish_timeout`` for it to come back,
        then raises :class:`~runa_message.PublishError`.
        """
        nc = self._nc
        if nc is None or self._state != "running":
            raise self._not_running(f"publish to {topic!r}")
        subject = self._subjects.get(topic)
        if subject is None:
            subject = self._subject(topic)
        data = encode(envelope)
        if not nc.is_connected:
            await self._wait_connected(nc, self.settings.publish_timeout, topic)
        elif nc.pending_data_size + len(data) > OUTBOUND_BUFFER:
            await self._publish_stalled(nc, subject, data, topic)
            return
        try:
            await nc.publish(subject, data)
        except self._n.Error as exc:
            raise self._publish_error(nc, topic, data, exc) from None

    def _subject(self, topic: str) -> str:
        subject = subject_of(self._prefix, topic)
        if len(self._subjects) >= _CACHE_SIZE:
            self._subjects.clear()
        self._subjects[topic] = subject
        return subject

    async def _publish_stalled(self, nc: Client, subject: str, data: bytes, topic: str) -> None:
        # The buffer is full: nats-py makes this publish wait for the socket to drain.
        timeout = self.settings.publish_timeout
        try:
            await asyncio.wait_for(nc.publish(subject, data), timeout)
        except asyncio.TimeoutError:
            pass
        except self._n.Error as exc:
            raise self._publish_error(nc, topic, data, exc) from None
        if nc.pending_data_size > OUTBOUND_BUFFER:
            raise PublishError(
                f"publish to {topic!r}: NATS did not take the message within publish_timeout "
                f"({timeout}s): the connection is stalled and {nc.pending_data_size} bytes wait "
                "in the client's buffer; the message goes out only if the connection recovers"
            )

    def _publish_error(self, nc: Client, topic: str, data: bytes, exc: Exception) -> MessageError:
        if self._state in ("closing", "closed"):
            return ClosedError(f"the NATS driver is closed: cannot publish to {topic!r}")
        if isinstance(exc, self._n.MaxPayloadError):
            return PublishError(
                f"publish to {topic!r}: the frame is {len(data)} bytes, over the NATS server's "
                f"max_payload of {nc.max_payload} bytes; publish a smaller payload or raise "
                "max_payload in the nats-server config"
            )
        if isinstance(exc, self._n.ConnectionClosedError):
            return PublishError(
                f"publish to {topic!r}: the NATS connection is closed{self._last_error_text()}; "
                "the message was not sent"
            )
        if isinstance(exc, self._n.ConnectionDrainingError):
            return PublishError(
                f"publish to {topic!r}: the NATS connection is draining (closing); "
                "the message was not sent"
            )
        if isinstance(exc, self._n.OutboundBufferLimitError):
            return PublishError(
                f"publish to {topic!r}: NATS is unreachable and the client's buffer is full; "
                "the message was not sent"
            )
        return PublishError(
            f"publish to {topic!r} failed: {self._describe(exc)}; the message was not sent"
        )

    # -- subscribe ----------------------------------------------------------------------

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> _NatsSubscription:
        """Subscribe to the subjects of ``pattern``; ``group`` becomes the NATS queue group.

        Returns once the server has the subscription (a PING/PONG round trip after SUB).
        """
        nc = self._nc
        if nc is None or self._state != "running":
            raise self._not_running(f"subscribe to {pattern!r}")
        subjects = subjects_of(self._prefix, pattern)
        sub = _NatsSubscription(self, pattern, consumer, group, handler, subjects)
        timeout = self.settings.connect_timeout
        if not nc.is_connected:
            await self._wait_connected(nc, timeout, pattern, subscribe=True)
        settings = self.settings
        try:
            for subject in subjects:
                native = await nc.subscribe(
                    subject,
                    queue=group or "",
                    cb=sub.deliver,
                    pending_msgs_limit=settings.pending_msgs_limit,
                    pending_bytes_limit=settings.pending_bytes_limit,
                )
                sub.natives.append(native)
                self._natives[native] = sub
            self._subscriptions.add(sub)
            # Return only once the server has the subscription (see _flush).
            await _flush(nc, timeout)
        except self._n.BadSubjectError:
            await sub.close()
            raise MessageError(
                f"NATS does not accept the subjects {', '.join(subjects)} of pattern "
                f"{pattern!r}: use plain segments and the wildcards '*' and '#'"
            ) from None
        except (self._n.Error, asyncio.TimeoutError, OSError) as exc:
            await sub.close()
            raise MessageError(
                f"NATS did not confirm the subscription to {pattern!r} (subjects "
                f"{', '.join(subjects)}) within {timeout}s: {self._describe(exc)}"
            ) from None
        if sub.refused is not None:
            error = sub.refused
            await sub.close()
            raise MessageError(
                f"NATS refused the subscription to {pattern!r}: {self._describe(error)}; "
                "grant this user subscribe permission on those subjects"
            )
        sub._confirmed = True
        return sub

    async def _release(self, sub: _NatsSubscription) -> None:
        self._subscriptions.discard(sub)
        for native in sub.natives:
            self._natives.pop(native, None)
        nc = self._nc
        if nc is None or nc.is_closed or not sub.natives:
            return
        await asyncio.gather(*(self._drain(nc, native, sub) for native in sub.natives))

    async def _drain(self, nc: Client, native: NatsSubscription, sub: _NatsSubscription) -> None:
        if nc.is_connected:
            # nats-py leaves Subscription.drain unannotated.
            drain: Callable[[], Awaitable[None]] = native.drain
            try:
                await asyncio.wait_for(drain(), self.settings.drain_timeout)
                return
            except asyncio.TimeoutError:
                log.warning(
                    "%r: %d message(s) still buffered after drain_timeout (%ss); dropping them",
                    sub,
                    native.pending_msgs,
                    self.settings.drain_timeout,
                )
            except self._n.Error as exc:
                log.debug("%r: drain failed (%s); unsubscribing", sub, exc)
        try:
            await native.unsubscribe()
        except self._n.Error:
            # A drain that timed out leaves nats-py's subscription marked closed but still
            # running: stop its task and forget it so a reconnect does not restore it.
            with contextlib.suppress(Exception):
                native._stop_processing()
                nc._remove_sub(native._id)

    # -- connection state -------------------------------------------------------------------

    async def _wait_connected(
        self, nc: Client, timeout: float, what: str, *, subscribe: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        action = f"subscribe to {what!r}" if subscribe else f"publish to {what!r}"
        while not nc.is_connected:
            if self._state in ("closing", "closed"):
                raise ClosedError(f"the NATS driver is closed: cannot {action}")
            if nc.is_closed:
                raise self._lost(
                    f"{action}: the NATS connection is closed{self._last_error_text()}",
                    subscribe,
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._lost(
                    f"{action}: NATS is unreachable and the connection did not come back "
                    f"within {timeout}s{self._last_error_text()}; "
                    + ("nothing was subscribed" if subscribe else "the message was not sent"),
                    subscribe,
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, _POLL_SECONDS))

    @staticmethod
    def _lost(text: str, subscribe: bool) -> MessageError:
        return MessageError(text) if subscribe else PublishError(text)

    def _pulse(self) -> None:
        # Wake every waiter; each one looks at the connection state again.
        self._changed.set()
        self._changed.clear()

    def _not_running(self, action: str) -> MessageError:
        if self._state in ("closing", "closed"):
            return ClosedError(f"the NATS driver is closed: cannot {action}")
        return MessageError(f"the NATS driver is not started: cannot {action}; call start() first")

    async def _on_error(self, error: Exception) -> None:
        if self._observe(error):
            return
        self._last_error = error
        text = self._describe(error)
        if self._state == "starting":
            failure = self._startup_failure
            if failure is not None and not failure.done() and _fatal(error):
                failure.set_result(error)
            log.debug("connecting to NATS: %s", text)
        elif isinstance(error, (OSError, asyncio.TimeoutError, self._n.StaleConnectionError)):
            if self._state != "running":
                log.debug("NATS connection: %s", text)
            elif not self._outage_logged:
                self._outage_logged = True
                log.warning("NATS connection problem: %s; reconnecting", text)
            else:
                log.debug("NATS connection problem: %s; reconnecting", text)
        elif isinstance(error, self._n.FlushTimeoutError):
            log.warning("NATS: the outbound buffer was not flushed within publish_timeout")
        else:
            log.error("NATS error: %s", text)

    def _observe(self, error: Exception) -> bool:
        """Route an error that belongs to one of this driver's subscriptions; True if it did."""
        if isinstance(error, self._n.SlowConsumerError):
            sub = self._natives.get(error.sub)
            if sub is None:
                return False
            sub.dropped()
            return True
        text = str(error)
        if "permissions violation for subscription" in text:
            owners = [
                sub
                for sub in self._subscriptions
                if any(f'"{subject.lower()}"' in text for subject in sub.subjects)
            ]
            for sub in owners:
                sub.refuse(error)
            return bool(owners)
        return False

    async def _on_disconnected(self) -> None:
        if self._state == "running":
            log.warning("NATS connection lost; reconnecting (subscriptions are restored)")
        self._pulse()

    async def _on_reconnected(self) -> None:
        self._outage_logged = False
        nc = self._nc
        if self._state == "running" and nc is not None:
            log.warning(
                "reconnected to NATS at %s; %d subscription(s) restored",
                self._server(nc),
                len(self._subscriptions),
            )
        self._pulse()

    async def _on_closed(self) -> None:
        self._pulse()
        if self._state != "running":
            return
        error = MessageError(
            f"the NATS connection closed for good{self._last_error_text()}: subscriptions "
            "receive nothing more and publishes fail; restart the application (or set "
            "max_reconnect_attempts = -1 to keep reconnecting)"
        )
        log.error("%s", error)
        for sub in list(self._subscriptions):
            await sub.report(error)

    # -- text ---------------------------------------------------------------------------

    def _server(self, nc: Client) -> str:
        url = nc.connected_url
        return redact_url(url.geturl()) if url is not None else "?"

    def _describe(self, error: BaseException | None) -> str:
        return describe_error(error, self.settings.secrets)

    def _last_error_text(self) -> str:
        if self._last_error is None:
            return ""
        return f" (last error: {self._describe(self._last_error)})"


class _NatsSubscription:
    """One ``subscribe(...)``: one NATS subscription per subject of its pattern."""

    __slots__ = (
        "_closed",
        "_confirmed",
        "_driver",
        "_drops",
        "_handler",
        "_reporter",
        "consumer",
        "group",
        "natives",
        "pattern",
        "refused",
        "subjects",
    )

    def __init__(
        self,
        driver: NatsDriver,
        pattern: str,
        consumer: str,
        group: str | None,
        handler: Handler,
        subjects: tuple[str, ...],
    ) -> None:
        self._driver = driver
        self._handler = handler
        self.pattern = pattern
        self.consumer = consumer
        self.group = group
        self.subjects = subjects
        self.natives: list[NatsSubscription] = []
        self.refused: Exception | None = None
        self._closed = False
        self._confirmed = False
        self._drops = 0
        self._reporter: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        group = f" group={self.group!r}" if self.group else ""
        return (
            f"<NatsSubscription {self.pattern!r} on {', '.join(self.subjects)}{group} "
            f"consumer={self.consumer!r}>"
        )

    async def deliver(self, msg: Msg) -> None:
        """nats-py's callback: hand the frame's bytes to the registry's handler."""
        data = msg.data
        try:
            await self._handler(data)
        except DecodeError:
            pass  # not an envelope: the registry reported it to on_error already
        except Exception as exc:
            await self.report(exc, data)

    async def close(self) -> None:
        """Stop receiving: drain what nats-py buffered (within ``drain_timeout``); idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._driver._release(self)

    async def report(self, error: BaseException, data: bytes | None = None) -> None:
        """Report a problem of this subscription to the registry (its ``on_error`` hooks)."""
        try:
            await self._handler.report(error, data)
        except Exception:
            log.exception("%r: reporting %r failed", self, error)

    def refuse(self, error: Exception) -> None:
        """The server refused this subscription (permissions): remember and report it."""
        self.refused = error
        if self._confirmed and not self._closed:
            # Refused after subscribe() returned (a reconnect to a server with other rules).
            text = self._driver._describe(error)
            log.error("%r: %s", self, text)
            self._spawn(
                self.report(
                    MessageError(
                        f"NATS refused the subscription to {self.pattern!r}: {text}; "
                        "it receives nothing; grant this user subscribe permission"
                    )
                )
            )

    def dropped(self) -> None:
        """nats-py dropped a message of this subscription (slow consumer): count, report."""
        self._drops += 1
        if self._reporter is None:
            self._reporter = self._spawn(self._report_drops())

    async def _report_drops(self) -> None:
        # One report per burst of drops, so reporting does not slow delivery down further.
        settings = self._driver.settings
        try:
            while self._drops:
                count, self._drops = self._drops, 0
                error = MessageError(
                    f"NATS dropped {count} message(s) of subscription {self.consumer!r} on "
                    f"{self.pattern!r}: the handler falls behind and the client buffer is full "
                    f"(pending_msgs_limit={settings.pending_msgs_limit}, pending_bytes_limit="
                    f"{settings.pending_bytes_limit}); handle faster, raise concurrency or the "
                    "limits, or spread the load with a group"
                )
                log.warning("%r: %s", self, error)
                await self.report(error)
        finally:
            self._reporter = None

    @staticmethod
    def _spawn(coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)
        return task


#: Report tasks in flight (asyncio keeps only weak references to tasks).
_background: set[asyncio.Task[None]] = set()


def _fatal(error: BaseException) -> bool:
    """Whether a connection error will not go away by retrying (credentials, TLS)."""
    if isinstance(error, _nats_py().fatal):
        return True
    text = str(error).lower()
    return "authorization" in text or "authentication" in text


async def _flush(nc: Client, timeout: float) -> None:
    """Return once the server has processed every command sent before the call.

    nats-py writes PING straight to the socket while SUB, UNSUB and PUB wait in its buffer
    for the flusher task, so one PONG can come back before they were even written. By the
    time it does, the flusher has written them; a second PING/PONG then follows them.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # nats-py annotates the timeout as int, but takes seconds as a float.
    await nc.flush(cast(int, timeout))
    await nc.flush(cast(int, max(deadline - loop.time(), 0.001)))


async def _abandon(nc: Client, connecting: asyncio.Future[None]) -> None:
    await _end(connecting)
    with contextlib.suppress(Exception):
        await nc.close()


async def _end(task: asyncio.Future[Any]) -> None:
    # Before Python 3.12 asyncio.wait_for (inside nats-py's connect) can swallow a
    # cancellation that lands as its inner connect attempt fails; nats-py would then go on
    # retrying for ever. Cancel again until the task has really ended.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
