"""The Redis pub/sub driver.

Two connections per driver, whatever the number of subscriptions:

- the *publisher* connection: every ``publish`` appends its ``PUBLISH`` command to a queue
  and awaits its own future; one writer task sends everything queued in one write and reads
  the replies, so concurrent publishers share round trips the way a redis-py pipeline does.
  During an outage the writer reconnects with backoff; a queued publish that is still not
  sent after ``publish_timeout`` fails with :class:`~runa_message.PublishError`.
- the *subscriber* connection: one reader task owns it. ``SUBSCRIBE``/``PSUBSCRIBE`` replies
  confirm subscriptions; each message is routed with a dict lookup on its channel or pattern
  and its raw bytes handed to the subscription's handler (the registry decodes and filters
  with ``match_topic``). After a reconnect the reader subscribes every channel and pattern
  again by itself.

Both connections are made from the client's connection settings (``connection_pool.
connection_class`` and ``connection_kwargs``) with RESP2 and without redis-py's own retries,
so the driver alone decides when to reconnect; an injected client's pool is not used and the
client is never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from runa_message import wire
from runa_message.backoff import Backoff
from runa_message.driver import Capabilities, Handler
from runa_message.errors import (
    ClosedError,
    ConnectError,
    MessageError,
    PublishError,
    UnsupportedFeatureError,
)
from runa_message.redact import describe_error, url_secrets
from runa_message.topic import MANY, ONE, segments

from .settings import CAPABILITIES, RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.exceptions import ResponseError

    from runa_message.message import Envelope

__all__ = ["RedisDriver", "RedisSubscription"]

log = logging.getLogger("runa_message.redis")

#: Frame kinds on the subscriber connection (RESP2 arrays, first element).
_MESSAGE: Final = b"message"
_PMESSAGE: Final = b"pmessage"
_SUBSCRIBE: Final = b"subscribe"
_PSUBSCRIBE: Final = b"psubscribe"
_UNSUBSCRIBE: Final = b"unsubscribe"
_PUNSUBSCRIBE: Final = b"punsubscribe"
_PONG: Final = b"pong"

#: Glob characters escaped in literal parts of a pattern.
_GLOB_SPECIAL: Final = frozenset("[]?*\\")
#: One separator in a channel: runa treats ``.``, ``/`` and ``:`` alike.
_GLOB_SEP: Final = "[./:]"

#: Connect attempts give up after this long (the TCP connect and the handshake).
CONNECT_TIMEOUT: Final = 5.0
#: Reconnect backoff: first delay, growth factor, cap (seconds).
BACKOFF_FIRST: Final = 0.05
BACKOFF_FACTOR: Final = 2.0
BACKOFF_MAX: Final = 2.0
#: Most PUBLISH commands sent in one write.
MAX_BATCH: Final = 4096
#: Channel command headers kept for topics seen (bounded).
_HEADER_CACHE_SIZE: Final = 4096

# A queued publish: packed command, the publisher's future, deadline (loop time), topic.
_Pending = tuple[bytes, "asyncio.Future[None]", float, str]


class _RedisPy:
    """The parts of redis-py the driver uses, imported when the first driver is created.

    Listing drivers imports this package; redis-py takes long to import, so it waits.
    """

    def __init__(self) -> None:
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.exceptions import AuthenticationError, RedisError, ResponseError
        from redis.retry import Retry

        self.Redis = Redis
        self.NoBackoff = NoBackoff
        self.Retry = Retry
        self.RedisError = RedisError
        self.ResponseError = ResponseError
        self.AuthenticationError = AuthenticationError
        #: What a broken or refused connection raises.
        self.network_errors: tuple[type[BaseException], ...] = (
            RedisError,
            OSError,
            asyncio.TimeoutError,
        )


@functools.cache
def _redis_py() -> _RedisPy:
    return _RedisPy()


def _backoff(maximum: float = BACKOFF_MAX) -> Backoff:
    """Reconnect backoff: from BACKOFF_FIRST, growing by BACKOFF_FACTOR, jittered by +-20%."""
    return Backoff(BACKOFF_FIRST, BACKOFF_FACTOR, maximum, jitter=0.2)


def _glob_literal(text: str) -> str:
    if not any(ch in _GLOB_SPECIAL for ch in text):
        return text
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


def native_name(prefix: str, pattern: str) -> tuple[bool, bytes]:
    """The Redis name for a runa ``pattern``: ``(is_glob, channel_or_glob)``.

    A one-segment topic is a plain channel (``SUBSCRIBE``). Anything else is a glob
    (``PSUBSCRIBE``) that selects a superset of what ``match_topic`` selects: a separator
    becomes ``[./:]`` (topics keep the separators they were published with), ``*``/``+``
    becomes ``*`` and a trailing ``#``/``**`` becomes ``*`` after the other segments, so
    ``user.#`` also receives ``user``; the registry drops what does not match exactly.
    """
    parts = segments(pattern)
    if len(parts) == 1 and parts[0] not in ONE and parts[0] not in MANY:
        return False, (prefix + pattern).encode()
    tail = ""
    if parts[-1] in MANY:
        parts = parts[:-1]
        tail = "*"
    body = _GLOB_SEP.join("*" if part in ONE else _glob_literal(part) for part in parts)
    if body.endswith("*"):
        tail = ""
    return True, (_glob_literal(prefix) + body + tail).encode()


def _pack(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


class RedisSubscription:
    """One runa subscription on the driver's shared subscriber connection."""

    __slots__ = ("_closed", "_driver", "consumer", "glob", "handler", "name", "pattern")

    def __init__(
        self,
        driver: RedisDriver,
        pattern: str,
        consumer: str,
        glob: bool,
        name: bytes,
        handler: Handler,
    ) -> None:
        self._driver = driver
        self.pattern = pattern
        self.consumer = consumer
        self.glob = glob
        self.name = name
        self.handler = handler
        self._closed = False

    async def close(self) -> None:
        """Stop receiving (unsubscribe when it was the last user of its channel); idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._driver._remove(self)

    def __repr__(self) -> str:
        kind = "pattern" if self.glob else "channel"
        return (
            f"<RedisSubscription {self.pattern!r} consumer={self.consumer!r} "
            f"{kind}={self.name.decode(errors='replace')!r}{' closed' if self._closed else ''}>"
        )


class RedisDriver:
    """Redis pub/sub driver: channel ``prefix + topic``, glob wildcards, broadcast only.

    ``RedisDriver(settings, client=None)``: with ``client`` (a ``redis.asyncio.Redis``) the
    driver takes its connection settings and never closes it; otherwise it creates one from
    ``settings.url`` and closes it in :meth:`close`.
    """

    capabilities: Capabilities = CAPABILITIES

    def __init__(
        self, settings: RedisSettings | None = None, *, client: Redis | None = None
    ) -> None:
        if client is not None and not hasattr(client, "connection_pool"):
            raise TypeError(
                f"client must be a redis.asyncio.Redis, got {type(client).__name__} "
                "(Redis Cluster is not supported by this driver)"
            )
        self.settings = settings if settings is not None else RedisSettings()
        self._r = _redis_py()
        self._client = client
        self._owns_client = client is None
        self._prefix = self.settings.prefix
        self._prefix_bytes = self._prefix.encode()
        self._timeout = float(self.settings.publish_timeout)
        self._started = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_connection: Callable[[], AbstractConnection] | None = None
        # publisher
        self._pub_conn: AbstractConnection | None = None
        self._queue: list[_Pending] = []
        self._inflight: list[_Pending] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._pub_down_since: float | None = None
        self._pub_error: BaseException | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._headers: dict[str, bytes] = {}
        # subscriber
        self._sub_conn: AbstractConnection | None = None
        self._sub_live = False
        self._channels: dict[bytes, tuple[RedisSubscription, ...]] = {}
        self._patterns: dict[bytes, tuple[RedisSubscription, ...]] = {}
        self._confirms: dict[tuple[bool, bytes], asyncio.Future[None]] = {}
        self._sent: deque[tuple[bool, bytes] | None] = deque()
        self._reader_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._frames = 0
        self._reading = False

    # ------------------------------------------------------------------ lifecycle

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "new"
        return (
            f"<RedisDriver url={self.settings.redacted_url!r} prefix={self._prefix!r} "
            f"{state}{'' if self._owns_client else ' client=injected'}>"
        )

    @property
    def client(self) -> Redis | None:
        """The ``redis.asyncio.Redis`` client (None before :meth:`start` when not injected)."""
        return self._client

    async def start(self) -> None:
        """Connect the publisher connection; :class:`~runa_message.ConnectError` if it cannot.

        Keeps trying for ``publish_timeout`` seconds (a server that is starting up is fine);
        a refused login (or another refusal of the handshake) fails at once.
        """
        if self._closed:
            raise ClosedError("the Redis driver is closed; create a new one")
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = self._r.Redis.from_url(self.settings.url, **self.settings.tls_options())
        self._new_connection = self._connection_factory(self._client)
        conn = self._new_connection()
        deadline = self._loop.time() + self._timeout
        backoff = _backoff()
        while True:
            try:
                await self._connect(conn, max(deadline - self._loop.time(), 0.1))
                break
            except self._r.network_errors as exc:
                await _drop(conn)
                left = deadline - self._loop.time()
                if left <= 0 or isinstance(
                    exc, (self._r.AuthenticationError, self._r.ResponseError)
                ):
                    if self._owns_client:
                        await self._client.aclose()
                        self._client = None
                    raise ConnectError(
                        f"cannot connect to Redis at {self.settings.redacted_url}: "
                        f"{self._describe(exc)}; check that the server runs and the url setting"
                    ) from None
                await asyncio.sleep(min(backoff.delay(), left))
        self._pub_conn = conn
        self._started = True
        self._writer_task = self._loop.create_task(self._write_loop(conn), name="runa-redis-writer")
        log.debug("connected to Redis at %s", self.settings.redacted_url)

    async def close(self) -> None:
        """Flush queued publishes (up to ``publish_timeout``), unsubscribe, disconnect; idempotent.

        A client the driver created is closed; an injected client is left open.
        """
        if self._closed:
            return
        self._closed = True
        pending = [item[1] for item in self._inflight + self._queue if not item[1].done()]
        if pending and self._pub_down_since is None:
            await asyncio.wait(pending, timeout=self._timeout)
        for task in (self._writer_task, self._reader_task, self._watch_task):
            if task is not None:
                task.cancel()
        for task in (self._writer_task, self._reader_task, self._watch_task):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        if self._expiry is not None:
            self._expiry.cancel()
        error = ClosedError("the Redis driver was closed before this message was sent")
        for item in self._inflight + self._queue:
            if not item[1].done():
                item[1].set_exception(error)
        self._inflight = []
        self._queue = []
        for future in self._confirms.values():
            if not future.done():
                future.set_exception(ClosedError("the Redis driver was closed"))
        self._confirms.clear()
        self._channels.clear()
        self._patterns.clear()
        for conn in (self._pub_conn, self._sub_conn):
            if conn is not None:
                await _drop(conn)
        self._pub_conn = self._sub_conn = None
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        log.debug("closed the Redis driver for %s", self.settings.redacted_url)

    def _connection_factory(self, client: Redis) -> Callable[[], AbstractConnection]:
        pool = client.connection_pool
        kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        connect_timeout = kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout")
        kwargs.update(
            # Plain RESP2 arrays of bytes for pub/sub frames, whatever the client speaks.
            protocol=2,
            decode_responses=False,
            # The driver reconnects by itself, with its own backoff and deadlines.
            retry=self._r.Retry(self._r.NoBackoff(), 0),
            retry_on_error=[],
            retry_on_timeout=False,
            socket_timeout=None,
            socket_connect_timeout=connect_timeout or CONNECT_TIMEOUT,
            health_check_interval=0,
        )
        if "maint_notifications_config" in kwargs:
            # Maintenance push notifications (redis-py 7+) need RESP3 and a pool.
            kwargs["maint_notifications_config"] = None
        kwargs.pop("maint_notifications_pool_handler", None)
        kwargs.pop("oss_cluster_maint_notifications_handler", None)
        connection_class = pool.connection_class

        def new_connection() -> AbstractConnection:
            return connection_class(**kwargs)

        return new_connection

    async def _connect(self, conn: AbstractConnection, timeout: float = CONNECT_TIMEOUT) -> None:
        await asyncio.wait_for(conn.connect(), min(timeout, CONNECT_TIMEOUT))  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ publishing

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish ``envelope`` on channel ``prefix + topic``.

        Waits for Redis to take it; raises :class:`PublishError` after ``publish_timeout``
        without a connection, :class:`ClosedError` after :meth:`close`.
        """
        loop = self._loop
        if loop is None or self._closed:
            if self._closed:
                raise ClosedError(
                    f"cannot publish to {topic!r}: the Redis driver is closed; "
                    "publish before closing the registry"
                )
            raise PublishError(
                f"cannot publish to {topic!r}: the Redis driver is not started; "
                "call registry.start() (or await driver.start()) first"
            )
        header = self._headers.get(topic)
        if header is None:
            header = self._header(topic)
        data = wire.encode(envelope)
        future: asyncio.Future[None] = loop.create_future()
        deadline = loop.time() + self._timeout
        self._queue.append(
            (b"%b$%d\r\n%b\r\n" % (header, len(data), data), future, deadline, topic)
        )
        if self._pub_down_since is not None and self._expiry is None:
            self._expiry = loop.call_at(deadline, self._expire)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        await future

    def _header(self, topic: str) -> bytes:
        channel = self._prefix_bytes + topic.encode()
        header = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n" % (len(channel), channel)
        if len(self._headers) >= _HEADER_CACHE_SIZE:
            self._headers.clear()
        self._headers[topic] = header
        return header

    async def _write_loop(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        # Several attempts within any publish's publish_timeout, so a publish waiting through
        # an outage goes out soon after the server is back.
        backoff = _backoff(min(BACKOFF_MAX, self._timeout / 4))
        read = conn.read_response
        inf = math.inf
        errors = self._r.network_errors
        response_error = self._r.ResponseError
        while True:
            if not self._queue:
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            if not conn.is_connected:
                try:
                    await self._connect(conn)
                except Exception as exc:
                    if not isinstance(exc, errors):
                        log.exception("unexpected error connecting the publisher to Redis")
                    await _drop(conn)
                    self._publisher_down(exc)
                    await asyncio.sleep(backoff.delay())
                    continue
                backoff.reset()
                self._publisher_up()
            queue = self._queue
            if len(queue) <= MAX_BATCH:
                batch = queue
                self._queue = []
            else:
                batch = queue[:MAX_BATCH]
                del queue[:MAX_BATCH]
            if len(batch) == 1:
                live = batch if not batch[0][1].done() else []
            else:
                live = [item for item in batch if not item[1].done()]
            if not live:
                continue
            self._inflight = live
            done = 0
            # One timer per batch (not one per reply): a server that stops answering gets
            # its connection aborted when the oldest publish in the batch is due.
            stalled = loop.call_at(live[0][2], _abort, conn)
            try:
                await conn.send_packed_command(
                    [item[0] for item in live] if len(live) > 1 else live[0][0], check_health=False
                )
                for item in live:
                    try:
                        await read(disable_decoding=True, timeout=inf)
                    except response_error as exc:
                        done += 1
                        if not item[1].done():
                            item[1].set_exception(
                                PublishError(f"Redis refused to publish to {item[3]!r}: {exc}")
                            )
                        continue
                    done += 1
                    if not item[1].done():
                        item[1].set_result(None)
            except Exception as exc:
                if not isinstance(exc, errors):
                    log.exception("unexpected error on the publisher connection to Redis")
                await _drop(conn)
                error: BaseException = exc
                if loop.time() >= live[0][2]:
                    error = TimeoutError(f"no reply within {self._timeout:g} s")
                # Not acknowledged: send again after reconnecting (Redis may have published
                # some of them; an envelope id tells a duplicate).
                self._queue[:0] = live[done:]
                self._publisher_down(error)
            finally:
                stalled.cancel()
                self._inflight = []

    def _publisher_down(self, exc: BaseException) -> None:
        loop = asyncio.get_running_loop()
        self._pub_error = exc
        if self._pub_down_since is None:
            self._pub_down_since = loop.time()
            log.warning(
                "lost the publisher connection to Redis at %s (%s); reconnecting",
                self.settings.redacted_url,
                self._describe(exc),
            )
        self._expire()

    def _publisher_up(self) -> None:
        if self._pub_down_since is not None:
            log.warning(
                "publisher connection to Redis at %s restored after %.1f s",
                self.settings.redacted_url,
                asyncio.get_running_loop().time() - self._pub_down_since,
            )
        self._pub_down_since = None
        self._pub_error = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        """Fail queued publishes past their deadline; re-arm for the next one while down."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._pub_down_since is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        expired = 0
        for item in queue:
            if item[2] > now:
                break
            expired += 1
            if not item[1].done():
                item[1].set_exception(
                    PublishError(
                        f"cannot publish to {item[3]!r}: no connection to Redis at "
                        f"{self.settings.redacted_url} within publish_timeout "
                        f"({self._timeout:g} s): {self._describe(self._pub_error)}; check that "
                        "the server runs, or raise publish_timeout"
                    )
                )
        if expired:
            del queue[:expired]
        if queue:
            self._expiry = loop.call_at(queue[0][2], self._expire)

    # ------------------------------------------------------------------ subscribing

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> RedisSubscription:
        """Subscribe to ``pattern`` on the shared subscriber connection; return once confirmed.

        ``group`` is refused with :class:`UnsupportedFeatureError`: Redis pub/sub delivers
        every message to every subscriber.
        """
        if group is not None:
            raise UnsupportedFeatureError(
                f"subscription {consumer!r} to {pattern!r} asks for group {group!r}, but Redis "
                "pub/sub cannot share messages among group members (every subscriber gets "
                "every message): use the NATS, AMQP or MQTT driver for groups, or subscribe "
                "without group= for a broadcast; a Redis Streams mode with groups is planned"
            )
        if self._closed:
            raise ClosedError("the Redis driver is closed; subscribe before closing")
        if self._loop is None:
            raise MessageError(
                "the Redis driver is not started: call registry.start() (or await "
                "driver.start()) before subscribing"
            )
        glob, name = native_name(self._prefix, pattern)
        sub = RedisSubscription(self, pattern, consumer, glob, name, handler)
        table = self._patterns if glob else self._channels
        routes = table.get(name)
        key = (glob, name)
        if routes:
            table[name] = (*routes, sub)
            future = self._confirms.get(key)
        else:
            table[name] = (sub,)
            future = self._confirms.get(key)
            if future is None:
                future = self._confirms[key] = self._loop.create_future()
            if self._reader_task is None:
                self._start_reader()
            elif self._sub_live and self._sub_conn is not None:
                await self._send_subscribe([key])
        if future is not None:
            try:
                await asyncio.wait_for(asyncio.shield(future), self._timeout)
            except BaseException as exc:
                await self._remove(sub)
                if isinstance(exc, asyncio.TimeoutError):
                    raise MessageError(
                        f"Redis at {self.settings.redacted_url} did not confirm the "
                        f"subscription to {pattern!r} within {self._timeout:g} s "
                        "(publish_timeout); check that the server runs"
                    ) from None
                raise
        log.debug("subscribed %r to %r", consumer, name)
        return sub

    async def _remove(self, sub: RedisSubscription) -> None:
        table = self._patterns if sub.glob else self._channels
        routes = table.get(sub.name)
        if routes is None or sub not in routes:
            return
        rest = tuple(route for route in routes if route is not sub)
        if rest:
            table[sub.name] = rest
            return
        del table[sub.name]
        future = self._confirms.pop((sub.glob, sub.name), None)
        if future is not None and not future.done():
            future.cancel()
        conn = self._sub_conn
        if self._sub_live and conn is not None and not self._closed:
            command = b"PUNSUBSCRIBE" if sub.glob else b"UNSUBSCRIBE"
            self._sent.append(None)
            # On failure the reader reconnects and subscribes only what is left.
            with contextlib.suppress(*self._r.network_errors):
                await conn.send_packed_command(_pack(command, sub.name), check_health=False)

    def _start_reader(self) -> None:
        assert self._new_connection is not None
        assert self._loop is not None
        self._sub_conn = self._new_connection()
        self._reader_task = self._loop.create_task(
            self._read_loop(self._sub_conn), name="runa-redis-reader"
        )
        if self.settings.health_check_interval > 0:
            self._watch_task = self._loop.create_task(
                self._watch(self._sub_conn, self.settings.health_check_interval),
                name="runa-redis-health",
            )

    def _describe(self, exc: BaseException | None) -> str:
        return describe_error(exc, url_secrets(self.settings.url))

    async def _send_subscribe(self, keys: list[tuple[bool, bytes]]) -> None:
        conn = self._sub_conn
        assert conn is not None
        self._sent.extend(keys)
        packed = [_pack(b"PSUBSCRIBE" if glob else b"SUBSCRIBE", name) for glob, name in keys]
        # On failure the reader sees the broken connection, reconnects and subscribes again.
        with contextlib.suppress(*self._r.network_errors):
            await conn.send_packed_command(packed, check_health=False)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        backoff = _backoff()
        down_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._connect(conn)
                # Every channel and pattern, in the same step that makes subscribe() send
                # its own commands from now on: nothing is missed, at worst sent twice.
                self._sent.clear()
                keys = [(False, name) for name in self._channels] + [
                    (True, name) for name in self._patterns
                ]
                for key in keys:
                    if key not in self._confirms:
                        self._confirms[key] = loop.create_future()
                self._sub_live = True
                if keys:
                    await self._send_subscribe(keys)
            except Exception as exc:
                if not isinstance(exc, self._r.network_errors):
                    log.exception("unexpected error connecting the subscriber to Redis")
                self._sub_live = False
                await _drop(conn)
                if down_since is None:
                    down_since = loop.time()
                    log.warning(
                        "cannot connect the subscriber to Redis at %s (%s); retrying",
                        self.settings.redacted_url,
                        self._describe(exc),
                    )
                await asyncio.sleep(backoff.delay())
                continue
            backoff.reset()
            if down_since is not None:
                log.warning(
                    "subscriber connection to Redis at %s restored after %.1f s; messages "
                    "published meanwhile were not received (Redis pub/sub keeps nothing)",
                    self.settings.redacted_url,
                    loop.time() - down_since,
                )
                down_since = None
            try:
                await self._pump(conn)
            except Exception as exc:
                if not isinstance(exc, self._r.network_errors):
                    log.exception("unexpected error on the subscriber connection to Redis")
                self._sub_live = False
                await _drop(conn)
                down_since = loop.time()
                log.warning(
                    "lost the subscriber connection to Redis at %s (%s); reconnecting",
                    self.settings.redacted_url,
                    self._describe(exc),
                )
            finally:
                self._sub_live = False

    async def _pump(self, conn: AbstractConnection) -> None:
        read = conn.read_response
        channels = self._channels
        patterns = self._patterns
        inf = math.inf
        response_error = self._r.ResponseError
        while True:
            self._reading = True
            try:
                frame = await read(disable_decoding=True, timeout=inf)
            except response_error as exc:
                self._reading = False
                self._refused(exc)
                continue
            self._reading = False
            self._frames += 1
            kind = frame[0]
            if kind == _PMESSAGE:
                routes = patterns.get(frame[1])
                data = frame[3]
            elif kind == _MESSAGE:
                routes = channels.get(frame[1])
                data = frame[2]
            else:
                self._control(kind, frame)
                continue
            if routes is None:
                continue
            for sub in routes:
                try:
                    await sub.handler(data)
                except MessageError:
                    pass  # a frame that is not an envelope: the registry reported it
                except Exception:
                    log.exception("the handler of %r failed", sub)

    def _control(self, kind: bytes, frame: list[Any]) -> None:
        if kind in (_SUBSCRIBE, _PSUBSCRIBE):
            if self._sent:
                self._sent.popleft()
            future = self._confirms.pop((kind == _PSUBSCRIBE, frame[1]), None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind in (_UNSUBSCRIBE, _PUNSUBSCRIBE, _PONG) and self._sent:
            self._sent.popleft()

    def _refused(self, exc: ResponseError) -> None:
        key = self._sent.popleft() if self._sent else None
        if key is None:
            log.warning("Redis refused a command on the subscriber connection: %s", exc)
            return
        future = self._confirms.pop(key, None)
        error = MessageError(
            f"Redis refused to subscribe to {key[1].decode(errors='replace')!r}: {exc}"
        )
        if future is not None and not future.done():
            future.set_exception(error)
        else:
            log.warning("%s", error)

    async def _watch(self, conn: AbstractConnection, interval: float) -> None:
        seen = -1
        pinged = False
        while True:
            await asyncio.sleep(interval)
            if not self._sub_live or self._frames != seen or not self._reading:
                seen = self._frames
                pinged = False
                continue
            if pinged:
                log.warning(
                    "no answer from Redis at %s on the subscriber connection for %g s; "
                    "reconnecting",
                    self.settings.redacted_url,
                    interval,
                )
                pinged = False
                _abort(conn)
                continue
            pinged = True
            self._sent.append(None)
            try:
                await conn.send_packed_command(_pack(b"PING"), check_health=False)
            except self._r.network_errors:
                pinged = False


async def _drop(conn: AbstractConnection) -> None:
    with contextlib.suppress(Exception):  # a broken connection: nothing more to do
        await conn.disconnect(nowait=True)


def _abort(conn: AbstractConnection) -> None:
    """Close a connection that hangs, so a read blocked on it fails at once."""
    writer = getattr(conn, "_writer", None)
    if writer is not None:
        writer.transport.abort()
