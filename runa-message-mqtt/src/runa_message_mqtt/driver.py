"""The MQTT driver: paho-mqtt 2 clients driven by the asyncio event loop.

Each broker connection is a paho ``Client`` whose socket the event loop watches: readable
-> ``loop_read()``, writable -> ``loop_write()``, a one-second timer -> ``loop_misc()``
(keepalive). Only the TCP/TLS connect, which blocks inside paho, runs in a worker thread.

Routing is exact. With MQTT 5 every subscription carries a subscription identifier and the
broker tags each PUBLISH with the identifiers it matched, so one connection serves every
subscription, shared (``$share/<group>/...``) and plain, overlapping or not. MQTT 3.1.1 has
no such tag, so a connection only holds filters that cannot match the same topic; a filter
that overlaps the ones already on a connection gets a connection of its own.

Frames are handed to the registry's handler in arrival order by one task per connection.
Messages received with QoS 1 or 2 are acknowledged once the handler took them (their
subscription's buffer had room), so the broker's in-flight window bounds what waits here;
past a high-water mark of waiting frames the connection stops reading its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import attrs

from runa_message import wire
from runa_message.backoff import Backoff
from runa_message.driver import Capabilities, Handler
from runa_message.errors import (
    ClosedError,
    ConfigError,
    ConnectError,
    DecodeError,
    MessageError,
    PublishError,
    UnsupportedFeatureError,
)
from runa_message.message import Envelope
from runa_message.redact import describe_error, redact_url
from runa_message.topic import translate

from .settings import CAPABILITIES, MAX_TOPIC_BYTES, MqttSettings

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["MqttDriver", "MqttSubscription"]

log = logging.getLogger("runa_message.mqtt")


#: Frames waiting for their handler on one connection before it stops reading its socket.
_HIGH_WATER = 1024
#: ... and the level at which it reads again.
_LOW_WATER = 256
#: Reconnect backoff: first delay, cap (seconds); each delay is jittered by +-50%.
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
#: How often keepalive (``loop_misc``) and publish deadlines are looked at, in seconds.
_MISC_INTERVAL = 1.0
_SWEEP_INTERVAL = 0.1
_TOPIC_CACHE = 4096
_TO_MQTT = str.maketrans(".:", "//")
_BAD_SHARE_NAME = re.compile(r"[/+#\x00]")


class _Paho:
    """The parts of paho-mqtt the driver uses, imported when the first driver is created.

    Listing drivers imports this package; paho-mqtt waits until a driver is made.
    """

    def __init__(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        from .client import FastClient

        self.FastClient = FastClient
        self.VERSION2 = CallbackAPIVersion.VERSION2
        self.MQTTv5 = mqtt.MQTTv5
        self.MQTTv311 = mqtt.MQTTv311
        self.NO_CONN = mqtt.MQTT_ERR_NO_CONN
        self.error_string = mqtt.error_string
        self.Properties = Properties
        self.PacketTypes = PacketTypes
        self.SubscribeOptions = SubscribeOptions


@functools.cache
def _paho() -> _Paho:
    return _Paho()


def _capabilities(prefix: str) -> Capabilities:
    return attrs.evolve(CAPABILITIES, max_topic_length=MAX_TOPIC_BYTES - len(prefix.encode()))


class MqttDriver:
    """The runa-message driver for MQTT brokers (MQTT 5 by default, or 3.1.1).

    ``settings`` defaults to :class:`MqttSettings` (the local broker); keyword ``options``
    are settings too (``MqttDriver(qos=0)``), over ``settings``. ``client``: a
    ``paho.mqtt.client.Client`` (``CallbackAPIVersion.VERSION2``) you configured yourself
    (TLS, credentials, will, websockets); the driver connects it when it is not connected
    (to ``client.host`` when set, else to the settings' url), drives its network I/O on the
    event loop while the driver runs, and never disconnects it: ``close()`` unsubscribes
    what the driver subscribed and hands the client back connected, with its callbacks
    restored. It must not run its own network loop (``loop_start()``) meanwhile.
    """

    def __init__(
        self,
        settings: MqttSettings | None = None,
        *,
        client: mqtt.Client | None = None,
        **options: Any,
    ) -> None:
        if options:  # keyword settings, over ``settings`` when both are given
            base = attrs.asdict(settings) if settings is not None else {}
            settings = MqttSettings.from_mapping({**base, **options}, path="MqttDriver()")
        self.settings = settings if settings is not None else MqttSettings()
        self.capabilities = _capabilities(self.settings.prefix)
        self._p = _paho()
        if client is not None:
            if client.callback_api_version != self._p.VERSION2:
                raise ConfigError(
                    "the injected paho client uses callback API VERSION1: create it with "
                    "mqtt.Client(CallbackAPIVersion.VERSION2, ...)"
                )
            if getattr(client, "_thread", None) is not None:
                raise ConfigError(
                    "the injected paho client runs its own network loop (loop_start()): call "
                    "client.loop_stop() first; the driver drives it on the asyncio loop"
                )
        self._client = client
        self._prefix = self.settings.prefix
        self._topics: dict[str, str] = {}
        self._connections: list[_Connection] = []
        self._entries: dict[str, _Entry] = {}
        self._placing = asyncio.Lock()
        self._base_id = self.settings.client_id or f"runa-message-{os.urandom(6).hex()}"
        self._state = "new"

    def __repr__(self) -> str:
        client = "injected client" if self._client is not None else f"client_id={self._base_id!r}"
        return (
            f"<MqttDriver {redact_url(self.settings.url)} prefix={self._prefix!r} "
            f"MQTT {self._version()} {client} {self._state}>"
        )

    def _version(self) -> str:
        if self._client is not None:
            return "5" if self._client.protocol == self._p.MQTTv5 else "3.1.1"
        return self.settings.version

    # -- the Driver protocol --------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the broker.

        Raises :class:`~runa_message.ConnectError` when the broker cannot be reached within
        ``timeout`` or refuses the connection (a wrong username or password, for example).
        """
        if self._state != "new":
            if self._state == "closed":
                raise ClosedError("the MQTT driver is closed: create a new one")
            return
        self._state = "starting"
        connection = self._new_connection(self._client)
        try:
            await connection.open()
        except BaseException:
            self._state = "new"
            raise
        self._connections.append(connection)
        self._state = "running"

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish ``envelope`` on ``prefix + topic`` (``.`` and ``:`` become ``/``).

        With QoS 1 or 2 this returns once the broker acknowledged the message. During an
        outage it waits for the connection up to ``publish_timeout``, then raises
        :class:`PublishError`.
        """
        mqtt_topic = self._topics.get(topic)
        if mqtt_topic is None:
            mqtt_topic = self._mqtt_topic(topic)
        if self._state != "running":
            self._require_running()
        await self._connections[0].publish(mqtt_topic, wire.encode(envelope))

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> MqttSubscription:
        """Subscribe ``handler`` to ``pattern``; returns once the broker granted it.

        ``group`` subscribes through the shared subscription ``$share/<group>/<filter>``.
        """
        self._require_running()
        body = self._prefix + translate(pattern, separator="/", one="+", many="#")
        if group is not None:
            if not group or _BAD_SHARE_NAME.search(group):
                raise UnsupportedFeatureError(
                    f"group {group!r} of consumer {consumer!r}: an MQTT shared subscription "
                    "name must be non-empty without '/', '+' or '#': choose e.g. 'workers'"
                )
            full = f"$share/{group}/{body}"
        else:
            full = body
        entry = self._entries.get(full)
        if entry is not None:
            entry.handlers.append(handler)
            try:
                await asyncio.shield(entry.granted)
            except BaseException:
                _discard(entry.handlers, handler)
                raise
            return MqttSubscription(self, entry, handler)
        entry = _Entry(full, body, group, pattern)
        entry.handlers.append(handler)
        self._entries[full] = entry
        try:
            # Choosing a connection and placing the entry on it is one step, so that two
            # subscribes at once cannot put overlapping MQTT 3.1.1 filters on one connection.
            async with self._placing:
                connection = await self._connection_for(entry)
                connection.place(entry)
            await connection.add(entry)
        except BaseException as exc:
            if self._entries.get(full) is entry:
                del self._entries[full]
            if not entry.granted.done():
                entry.granted.set_exception(exc)
                entry.granted.exception()  # retrieved: waiters re-raise it themselves
            raise
        entry.granted.set_result(None)
        return MqttSubscription(self, entry, handler)

    async def close(self) -> None:
        """Disconnect the connections the driver opened (not an injected client); idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        connections, self._connections = self._connections, []
        self._entries.clear()
        for connection in reversed(connections):
            await connection.close()

    # -- internals ------------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._state == "closed":
            raise ClosedError("the MQTT driver is closed: nothing more can be sent through it")
        if self._state != "running":
            raise MessageError("the MQTT driver is not started: call `await driver.start()` first")

    def _mqtt_topic(self, topic: str) -> str:
        mqtt_topic = self._prefix + topic.translate(_TO_MQTT)
        if len(self._topics) >= _TOPIC_CACHE:
            self._topics.clear()
        self._topics[topic] = mqtt_topic
        return mqtt_topic

    def _new_connection(self, client: mqtt.Client | None) -> _Connection:
        index = len(self._connections)
        client_id = self._base_id if index == 0 else f"{self._base_id}-{index}"
        return _Connection(self.settings, client_id, client)

    async def _connection_for(self, entry: _Entry) -> _Connection:
        for connection in self._connections:
            if connection.accepts(entry):
                return connection
        if self._client is not None:
            raise UnsupportedFeatureError(
                f"pattern {entry.pattern!r}: with an injected MQTT 3.1.1 client, group "
                "subscriptions and patterns that overlap others need a connection of their own, "
                "which the driver cannot make from your client: create the client with "
                "protocol=MQTTv5 (the broker then tells which subscription matched), or let the "
                "driver create its clients"
            )
        connection = self._new_connection(None)
        self._connections.append(connection)
        try:
            await connection.open()
        except BaseException:
            _discard(self._connections, connection)
            raise
        return connection

    async def _unsubscribe(self, entry: _Entry, handler: Handler) -> None:
        _discard(entry.handlers, handler)
        if entry.handlers or self._entries.get(entry.full) is not entry:
            return
        del self._entries[entry.full]
        connection = entry.connection
        if connection is not None:
            await connection.remove(entry)


class MqttSubscription:
    """One ``subscribe(...)`` on the MQTT driver; ``close()`` stops its deliveries."""

    __slots__ = ("_closed", "_driver", "_entry", "_handler")

    def __init__(self, driver: MqttDriver, entry: _Entry, handler: Handler) -> None:
        self._driver = driver
        self._entry = entry
        self._handler = handler
        self._closed = False

    def __repr__(self) -> str:
        return f"<MqttSubscription {self._entry.full!r}{' closed' if self._closed else ''}>"

    @property
    def filter(self) -> str:
        """The MQTT topic filter subscribed to (``$share/<group>/...`` for a group)."""
        return self._entry.full

    async def close(self) -> None:
        """Stop receiving; the MQTT subscription ends with its last user. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._driver._unsubscribe(self._entry, self._handler)


class _Entry:
    """One MQTT subscription (a filter), shared by every runa subscription using it."""

    __slots__ = (
        "body",
        "connection",
        "full",
        "granted",
        "group",
        "handlers",
        "ident",
        "matches",
        "next",
        "pattern",
        "subscribed",
    )

    def __init__(self, full: str, body: str, group: str | None, pattern: str) -> None:
        self.full = full
        self.body = body
        self.group = group
        self.pattern = pattern
        self.handlers: list[Handler] = []
        self.next = 0
        self.ident = 0
        self.connection: _Connection | None = None
        #: The connection generation on which the broker last granted this subscription.
        self.subscribed = -1
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.matches = _filter_matcher(body)

    async def deliver(self, frame: bytes) -> None:
        handlers = self.handlers
        if self.group is not None:
            if handlers:
                index = self.next % len(handlers)
                self.next = index + 1
                await _hand(handlers[index], frame)
        elif len(handlers) == 1:
            await _hand(handlers[0], frame)
        elif handlers:
            # Several subscriptions on one filter: decode once for all of them. A frame that
            # is not an envelope goes to each as it is, and each reports it.
            try:
                decoded: Envelope | bytes = wire.decode(frame)
            except DecodeError:
                decoded = frame
            for handler in tuple(handlers):
                await _hand(handler, decoded)


async def _hand(handler: Handler, frame: Envelope | bytes) -> None:
    try:
        await handler(frame)
    except MessageError:
        pass  # the registry reported it (a frame that is not an envelope) to on_error
    except Exception:
        log.exception("the handler of an MQTT subscription raised; the frame is dropped")


class _Connection:
    """One paho client, its socket on the event loop, and the subscriptions it holds."""

    def __init__(self, settings: MqttSettings, client_id: str, client: mqtt.Client | None) -> None:
        self._settings = settings
        self._where = settings.where
        self._loop = asyncio.get_running_loop()
        self._owned = client is None
        self._p = _paho()
        self._no_conn = self._p.NO_CONN
        self._client = client if client is not None else self._make_client(client_id)
        self._saved: dict[str, Any] = {}
        self._saved_manual_ack = False
        self._v5 = self._client.protocol == self._p.MQTTv5
        self._qos = settings.qos
        self._retain = settings.retained
        self._ack = settings.qos > 0
        self._sock: Any = None
        self._tls = False
        self._writing = False
        self._paused = False
        self._ready = False
        self._closing = False
        self._generation = 0
        self._ready_waiter: asyncio.Future[None] = self._loop.create_future()
        self._connack: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._confirm = settings.publisher_confirms
        #: Publishes waiting for their PUBACK/PUBCOMP: mid -> (waiting caller, deadline, topic).
        self._acks: dict[int, tuple[asyncio.Future[None] | None, float, str]] = {}
        self._window: asyncio.Future[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._requests: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._resubscribing: list[tuple[_Entry, asyncio.Future[list[ReasonCode]] | None]] = []
        self._by_ident: dict[int, _Entry] = {}
        self._entries: list[_Entry] = []
        self._literal: dict[str, _Entry] = {}
        self._wildcard: list[_Entry] = []
        self._next_ident = 0
        self._inbox: deque[tuple[bytes, bytes, int, int, list[int] | None, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    # -- setup ----------------------------------------------------------------------------

    def _make_client(self, client_id: str) -> mqtt.Client:
        settings = self._settings
        endpoint = settings.endpoint()
        v5 = settings.version == "5"
        paho = self._p
        client = paho.FastClient(
            paho.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else True,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            manual_ack=settings.qos > 0,
        )
        client.connect_timeout = settings.timeout
        client.sink = self._on_frame
        if endpoint.username is not None or endpoint.password is not None:
            client.username_pw_set(endpoint.username or "", endpoint.password)
        if endpoint.tls:
            context = ssl.create_default_context(cafile=settings.ca_file)
            if settings.cert_file:
                context.load_cert_chain(settings.cert_file, settings.key_file)
            if settings.tls_insecure:
                context.check_hostname = False
            client.tls_set_context(context)
        return client

    def _install_callbacks(self) -> None:
        client = self._client
        names = (
            "on_connect",
            "on_disconnect",
            "on_message",
            "on_publish",
            "on_subscribe",
            "on_unsubscribe",
            "on_socket_open",
            "on_socket_close",
            "on_socket_register_write",
            "on_socket_unregister_write",
        )
        if not self._owned:
            self._saved = {name: getattr(client, name) for name in names}
            # Acknowledge QoS 1/2 messages once their handler took them (flow control).
            self._saved_manual_ack = bool(getattr(client, "_manual_ack", False))
            client.manual_ack_set(self._ack)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # paho builds a reason code and properties per QoS 0 publish when on_publish is set.
        client.on_publish = self._on_publish if self._qos else None
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_close = self._on_socket_close
        # No write callbacks: paho then writes at once, and we watch for writability only
        # when its buffer did not fit into the socket.
        client.on_socket_open = None
        client.on_socket_register_write = None
        client.on_socket_unregister_write = None

    def _restore_callbacks(self) -> None:
        if self._owned:
            return
        for name, value in self._saved.items():
            setattr(self._client, name, value)
        self._client.manual_ack_set(self._saved_manual_ack)

    async def open(self) -> None:
        """Connect for the first time (no retries) and start serving."""
        self._install_callbacks()
        try:
            await self._connect()
        except BaseException:
            self._closing = True
            self._detach()
            self._restore_callbacks()
            raise
        self._dispatcher = self._loop.create_task(
            self._dispatch(), name=f"runa_message.mqtt:{self._where}:dispatch"
        )
        self._supervisor = self._loop.create_task(
            self._supervise(), name=f"runa_message.mqtt:{self._where}:connection"
        )

    async def _connect(self) -> None:
        """One connection attempt: TCP/TLS in a thread, CONNACK and re-subscribing here."""
        client = self._client
        self._connack = self._loop.create_future()
        if client.socket() is None:
            attempt = self._loop.run_in_executor(None, self._blocking_connect)
            try:
                await asyncio.shield(attempt)
            except asyncio.CancelledError:
                attempt.add_done_callback(self._abandon)
                raise
            except (OSError, ValueError) as exc:
                raise ConnectError(
                    f"cannot connect to MQTT broker {self._where}: {_describe(exc)}"
                ) from None
        self._attach()
        if client.is_connected():  # an injected client whose CONNACK was read already
            self._generation += 1
            self._queue_resubscribe()
            self._connack.set_result(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), self._settings.timeout)
        except asyncio.TimeoutError:
            self._drop_socket()
            raise ConnectError(
                f"MQTT broker {self._where} did not answer CONNECT within "
                f"{self._settings.timeout}s: is it an MQTT listener?"
            ) from None
        finally:
            self._connack = None
        lost = self._lost = self._loop.create_future()
        self._schedule_misc()
        await self._resubscribe()
        if lost.done():
            raise ConnectError(f"connection to MQTT broker {self._where} lost while subscribing")
        self._ready = True
        if not self._ready_waiter.done():
            self._ready_waiter.set_result(None)
        self._resume()

    def _blocking_connect(self) -> None:
        # Runs in a worker thread: socket.create_connection and the TLS handshake block.
        client = self._client
        if client.host:  # connected before (or an injected client told where to)
            client.reconnect()
            return
        endpoint = self._settings.endpoint()
        keepalive = self._settings.keepalive
        if self._v5:
            properties = self._p.Properties(self._p.PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.ReceiveMaximum = _HIGH_WATER
            client.connect(
                endpoint.host, endpoint.port, keepalive, clean_start=True, properties=properties
            )
        else:
            client.connect(endpoint.host, endpoint.port, keepalive)

    def _abandon(self, attempt: asyncio.Future[None]) -> None:
        # A connect cancelled while its thread ran: close what the thread opened.
        if not attempt.cancelled() and attempt.exception() is None:
            self._drop_socket()

    def _attach(self) -> None:
        sock = self._client.socket()
        if sock is None:
            raise ConnectError(f"connection to MQTT broker {self._where} closed while connecting")
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small MQTT packets must not wait for the peer's delayed ACK (Nagle).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.add_reader(sock, self._on_readable)
        self._paused = False
        self._writing = False
        if self._client.want_write():
            self._want_write()

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        self._writing = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _drop_socket(self) -> None:
        """Close the socket at once (no DISCONNECT), as after a failed attempt."""
        self._detach()
        sock = self._client.socket()
        if sock is not None:
            # paho has no public way to drop a socket without the DISCONNECT handshake.
            close = getattr(self._client, "_sock_close", None)
            if close is not None:
                close()
            else:  # pragma: no cover - other paho versions
                sock.close()

    def _is_closing(self) -> bool:
        return self._closing

    async def _supervise(self) -> None:
        while not self._closing:
            lost = self._lost
            if lost is not None:
                await lost
            if self._is_closing():
                return
            log.warning("connection to MQTT broker %s lost; reconnecting", self._where)
            backoff = Backoff(_BACKOFF_FIRST, 2.0, _BACKOFF_MAX, jitter=0.5)
            while not self._closing:
                try:
                    await self._connect()
                except Exception as exc:
                    self._drop_socket()
                    delay = backoff.delay()
                    expected = isinstance(exc, (OSError, MessageError, ValueError))
                    log.log(
                        logging.INFO if expected else logging.ERROR,
                        "reconnecting to MQTT broker %s failed (%s); next try in %.2fs",
                        self._where,
                        exc if expected else f"{type(exc).__name__}: {exc}",
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                log.warning("reconnected to MQTT broker %s", self._where)
                break

    # -- paho callbacks (on the event loop thread) ----------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        waiter = self._connack
        if reason.is_failure:
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    ConnectError(
                        f"MQTT broker {self._where} refused the connection: {reason.getName()}"
                        + (
                            " (check username and password)"
                            if reason.value in (0x86, 0x87, 4, 5)
                            else ""
                        )
                    )
                )
            return
        if self._v5 and properties is not None:
            # Send no more unacknowledged publishes than the broker accepts (MQTT 5 Receive
            # Maximum); paho's setter refuses to run on a live connection, hence the attribute.
            maximum = getattr(properties, "ReceiveMaximum", None)
            if maximum and hasattr(client, "_max_inflight_messages"):
                client._max_inflight_messages = int(maximum)
        if waiter is not None and not waiter.done():
            self._generation += 1
            self._queue_resubscribe()
            waiter.set_result(None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._lost_connection(reason.getName())

    def _lost_connection(self, why: str) -> None:
        self._detach()
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                ConnectError(
                    f"MQTT broker {self._where} closed the connection while connecting ({why})"
                )
            )
        self._ready = False
        if self._ready_waiter.done():
            self._ready_waiter = self._loop.create_future()
        for request in self._requests.values():
            if not request.done():
                request.set_exception(ConnectionError("the connection to the MQTT broker was lost"))
        self._requests.clear()
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_exception(ConnectionError("the connection to the MQTT broker was lost"))
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(None)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if sock is self._sock:
            self._detach()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho's own path (an injected client, QoS 2, or a packet FastClient left to paho).
        identifiers = None
        if self._v5 and message.properties is not None:
            identifiers = getattr(message.properties, "SubscriptionIdentifier", None)
        try:
            topic = message.topic.encode()
        except UnicodeDecodeError:
            topic = b""  # not a valid MQTT topic name: routed nowhere, acknowledged
        self._on_frame(topic, cast(bytes, message.payload), message.qos, message.mid, identifiers)

    def _on_frame(
        self, topic: bytes, payload: bytes, qos: int, mid: int, identifiers: list[int] | None
    ) -> None:
        inbox = self._inbox
        inbox.append((topic, payload, qos, mid, identifiers, self._generation))
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set_result(None)
        if len(inbox) >= _HIGH_WATER and not self._paused and self._sock is not None:
            self._paused = True
            self._loop.remove_reader(self._sock)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        acks = self._acks
        pending = acks.pop(mid, None)
        if pending is None:
            return
        if self._window is not None and len(acks) < self._client.max_inflight_messages:
            self._open_window()
        if not acks and self._idle is not None:
            idle, self._idle = self._idle, None
            idle.set_result(None)
        future, _deadline, topic = pending
        if future is None:
            if reason.is_failure:
                log.error(
                    "MQTT broker %s refused the publish to %r: %s",
                    self._where,
                    topic,
                    reason.getName(),
                )
            return
        if future.done():
            return
        if reason.is_failure:
            future.set_exception(
                PublishError(
                    f"MQTT broker {self._where} refused the publish to {topic!r}: {reason.getName()}"
                )
            )
        else:
            future.set_result(None)

    async def _settle(self) -> None:
        """Before closing: let the broker acknowledge what was published (publish_timeout)."""
        if not self._acks:
            return
        loop = self._loop
        deadline = loop.time() + self._settings.publish_timeout
        while self._acks and loop.time() < deadline:
            self._idle = self._idle or loop.create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), deadline - loop.time())
        if self._acks:
            log.warning(
                "closing the connection to MQTT broker %s with %d publishes not acknowledged",
                self._where,
                len(self._acks),
            )

    def _open_window(self) -> None:
        window, self._window = self._window, None
        if window is not None and not window.done():
            window.set_result(None)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        request = self._requests.pop(mid, None)
        if request is not None and not request.done():
            request.set_result(reasons)

    _on_unsubscribe = _on_subscribe

    # -- socket events --------------------------------------------------------------------

    def _on_readable(self) -> None:
        client = self._client
        try:
            client.loop_read()
            # FastClient reads 64 KiB at once: parse every packet already read before waiting.
            buffered = getattr(client, "buffered", None)
            if buffered is not None:
                while not self._paused and buffered():
                    client.loop_read()
            if self._tls:
                # Decrypted bytes can wait inside the SSL object, unseen by the selector.
                sock = self._sock
                while (
                    not self._paused and sock is not None and sock is self._sock and sock.pending()
                ):
                    client.loop_read()
        except Exception as exc:
            self._abort(exc)
            return
        if client.want_write() and not self._writing:
            self._want_write()

    def _abort(self, exc: Exception) -> None:
        # paho raised (a packet it could not handle): start over on a new connection.
        log.error(
            "MQTT connection to %s failed (%s: %s); reconnecting",
            self._where,
            type(exc).__name__,
            exc,
        )
        self._drop_socket()
        self._lost_connection(type(exc).__name__)

    def _want_write(self) -> None:
        if self._sock is not None and not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock, self._on_writable)

    def _on_writable(self) -> None:
        client = self._client
        try:
            client.loop_write()
        except Exception as exc:
            self._abort(exc)
            return
        if not client.want_write() and self._writing:
            self._writing = False
            if self._sock is not None:
                self._loop.remove_writer(self._sock)
            drained, self._drained = self._drained, None
            if drained is not None and not drained.done():
                drained.set_result(None)

    def _schedule_misc(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
        self._misc = self._loop.call_later(_MISC_INTERVAL, self._on_misc)

    def _on_misc(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        client = self._client
        try:
            client.loop_misc()
        except Exception as exc:
            self._abort(exc)
            return
        if self._sock is not None:
            if client.want_write():
                self._want_write()
            self._schedule_misc()

    def _resume(self) -> None:
        if self._paused and self._sock is not None:
            self._paused = False
            self._loop.add_reader(self._sock, self._on_readable)
            # Bytes may wait in FastClient's buffer or the SSL object, unseen by the selector.
            self._loop.call_soon(self._on_readable)

    # -- delivery -------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        inbox = self._inbox
        client = self._client
        by_ident = self._by_ident
        v5 = self._v5
        manual = self._ack
        while True:
            if not inbox:
                if self._paused:
                    self._resume()
                waiter = self._waiter = self._loop.create_future()
                await waiter
                continue
            topic, payload, qos, mid, identifiers, generation = inbox.popleft()
            if v5:
                if identifiers:
                    for ident in identifiers:
                        entry = by_ident.get(ident)
                        if entry is not None:
                            await entry.deliver(payload)
            else:
                entry = self._route(topic)
                if entry is not None:
                    await entry.deliver(payload)
            if manual and qos and generation == self._generation and self._sock is not None:
                client.ack(mid, qos)
                if not self._writing and client.want_write():
                    self._want_write()
            if self._paused and len(inbox) <= _LOW_WATER:
                self._resume()

    def _route(self, raw_topic: bytes) -> _Entry | None:
        # MQTT 3.1.1: the filters on one connection never overlap, so at most one matches.
        try:
            topic = raw_topic.decode()
        except UnicodeDecodeError:
            return None
        entry = self._literal.get(topic)
        if entry is not None:
            return entry
        for entry in self._wildcard:
            if entry.matches(topic):
                return entry
        return None

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        loop = self._loop
        deadline = loop.time() + self._settings.publish_timeout
        while True:
            if not self._ready:
                await self._wait_ready(deadline, topic)
            info = self._client.publish(topic, data, self._qos, self._retain)
            if self._qos:
                break
            if info.rc == self._no_conn:  # dropped between the check and the send: wait again
                continue
            if info.rc:
                raise PublishError(
                    f"publish to {topic!r} on {self._where} failed: {self._p.error_string(info.rc)}"
                )
            if self._writing:
                await self._wait_drained(deadline, topic)
            return
        if info.rc and info.rc != self._no_conn:
            raise PublishError(
                f"publish to {topic!r} on {self._where} failed: {self._p.error_string(info.rc)}"
            )
        # QoS 1/2: paho keeps the message and sends it again after a reconnect.
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_INTERVAL, self._sweep)
        if not self._confirm:
            self._acks[info.mid] = (None, deadline, topic)
            # As many as the broker takes unacknowledged (its Receive Maximum): beyond, paho
            # would only queue them, and the loop would not get to the subscriptions.
            if len(self._acks) >= self._client.max_inflight_messages:
                await self._wait_window(deadline, topic)
            return
        future: asyncio.Future[None] = loop.create_future()
        self._acks[info.mid] = (future, deadline, topic)
        await future

    async def _wait_window(self, deadline: float, topic: str) -> None:
        while len(self._acks) >= self._client.max_inflight_messages:
            if self._window is None:
                self._window = self._loop.create_future()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise self._timeout_error(topic)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._window), remaining)

    def _sweep(self) -> None:
        self._sweeper = None
        acks = self._acks
        if not acks:
            return
        now = self._loop.time()
        expired = [mid for mid, (_f, deadline, _t) in acks.items() if deadline <= now]
        for mid in expired:
            future, _deadline, topic = acks.pop(mid)
            if future is None:
                log.warning("%s; it is sent again after a reconnect", self._timeout_error(topic))
            elif not future.done():
                future.set_exception(self._timeout_error(topic))
        if expired:
            self._open_window()
            if not acks and self._idle is not None:
                idle, self._idle = self._idle, None
                idle.set_result(None)
        if acks:
            self._sweeper = self._loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def _timeout_error(self, topic: str) -> PublishError:
        state = "not connected" if not self._ready else "connected, no acknowledgement"
        return PublishError(
            f"publish to {topic!r} on MQTT broker {self._where} not confirmed within "
            f"{self._settings.publish_timeout}s ({state}): the broker is unreachable or "
            "overloaded; publish again later (raise publish_timeout to wait longer)"
        )

    async def _wait_ready(self, deadline: float, topic: str) -> None:
        while not self._ready:
            if self._closing:
                raise ClosedError("the MQTT driver is closed: nothing more can be sent through it")
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise self._timeout_error(topic)
            try:
                await asyncio.wait_for(asyncio.shield(self._ready_waiter), remaining)
            except asyncio.TimeoutError:
                raise self._timeout_error(topic) from None

    async def _wait_drained(self, deadline: float, topic: str) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()
        remaining = max(deadline - self._loop.time(), 0.0)
        try:
            await asyncio.wait_for(asyncio.shield(self._drained), remaining)
        except (asyncio.TimeoutError, ConnectionError):
            raise self._timeout_error(topic) from None

    # -- subscriptions --------------------------------------------------------------------

    def accepts(self, entry: _Entry) -> bool:
        """Whether ``entry`` can share this connection and still be routed exactly."""
        if self._closing:
            return False
        if self._v5:
            return True
        return not any(_overlap(entry.body, other.body) for other in self._entries)

    def place(self, entry: _Entry) -> None:
        """Hold ``entry`` on this connection (before its SUBSCRIBE: see :meth:`add`)."""
        entry.connection = self
        self._entries.append(entry)
        if self._v5:
            self._next_ident += 1
            entry.ident = self._next_ident
            self._by_ident[entry.ident] = entry
        elif "+" in entry.body or "#" in entry.body:
            self._wildcard.append(entry)
        else:
            self._literal[entry.body] = entry

    async def add(self, entry: _Entry) -> None:
        """Subscribe ``entry`` (placed here already); return once the broker granted it."""
        try:
            deadline = self._loop.time() + self._settings.timeout
            while entry.subscribed != self._generation or not self._ready:
                if self._closing:
                    raise ClosedError("the MQTT driver is closed")
                if self._ready:
                    await self._subscribe(entry)
                    continue
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    raise ConnectError(
                        f"cannot subscribe to {entry.full!r}: not connected to MQTT broker "
                        f"{self._where} within {self._settings.timeout}s"
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._ready_waiter), remaining)
        except BaseException:
            self._forget(entry)
            raise

    def _send_subscribe(self, entry: _Entry) -> asyncio.Future[list[ReasonCode]] | None:
        """Queue a SUBSCRIBE for ``entry``; the future gets the SUBACK (None: not connected)."""
        if self._v5:
            paho = self._p
            properties = paho.Properties(paho.PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            properties.SubscriptionIdentifier = entry.ident
            rc, mid = self._client.subscribe(
                entry.full, options=paho.SubscribeOptions(qos=self._qos), properties=properties
            )
        else:
            rc, mid = self._client.subscribe(entry.full, qos=self._qos)
        return self._expect(rc, mid, f"subscribe to {entry.full!r}")

    def _expect(
        self, rc: int, mid: int | None, what: str
    ) -> asyncio.Future[list[ReasonCode]] | None:
        if rc == self._no_conn or mid is None:
            return None
        if rc:
            raise MessageError(f"{what} on {self._where} failed: {self._p.error_string(rc)}")
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        future.add_done_callback(_retrieve)
        self._requests[mid] = future
        if self._sock is not None and self._client.want_write():
            self._want_write()
        return future

    async def _answer(
        self, future: asyncio.Future[list[ReasonCode]] | None, what: str
    ) -> list[ReasonCode] | None:
        """The broker's answer to a request; None when the connection dropped meanwhile."""
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._settings.timeout)
        except asyncio.TimeoutError:
            raise ConnectError(
                f"{what}: MQTT broker {self._where} did not answer within {self._settings.timeout}s"
            ) from None
        except ConnectionError:
            return None

    async def _subscribe(self, entry: _Entry) -> None:
        generation = self._generation
        future = self._send_subscribe(entry)
        reasons = await self._answer(future, f"subscribe to {entry.full!r}")
        self._granted(entry, reasons, generation)

    def _granted(self, entry: _Entry, reasons: list[ReasonCode] | None, generation: int) -> None:
        if reasons is None:
            return  # the connection dropped: the caller waits for the next one
        reason = reasons[0] if reasons else None
        if reason is None or reason.is_failure:
            name = reason.getName() if reason is not None else "no reason given"
            hint = ""
            if reason is not None and reason.value == 0x9E:
                hint = ": the broker does not support shared subscriptions (groups)"
            elif reason is not None and reason.value == 0xA1:
                hint = (
                    ': the broker does not support subscription identifiers; use version = "3.1.1"'
                )
            elif reason is not None and reason.value == 0x87:
                hint = ": the broker's access control forbids it"
            raise UnsupportedFeatureError(
                f"MQTT broker {self._where} refused the subscription {entry.full!r}: {name}{hint}"
            )
        if generation == self._generation:
            entry.subscribed = generation

    def _queue_resubscribe(self) -> None:
        # Called from on_connect, before paho sends again the publishes that were in flight:
        # the broker then restores our subscriptions before it routes those.
        self._resubscribing = [(entry, self._send_subscribe(entry)) for entry in self._entries]

    async def _resubscribe(self) -> None:
        pending, self._resubscribing = self._resubscribing, []
        generation = self._generation
        for entry, future in pending:
            try:
                reasons = await self._answer(future, f"subscribe to {entry.full!r}")
                self._granted(entry, reasons, generation)
            except MessageError as exc:
                log.error("after reconnecting, %s", exc)
                for handler in list(entry.handlers):
                    with contextlib.suppress(Exception):
                        await handler.report(exc)

    async def remove(self, entry: _Entry) -> None:
        """Unsubscribe ``entry`` (best effort when the connection is down)."""
        self._forget(entry)
        if self._ready and not self._closing:
            rc, mid = self._client.unsubscribe(entry.full)
            what = f"unsubscribe from {entry.full!r}"
            try:
                await self._answer(self._expect(rc, mid, what), what)
            except (ConnectionError, MessageError) as exc:
                log.warning("%s", exc)

    def _forget(self, entry: _Entry) -> None:
        _discard(self._entries, entry)
        if self._by_ident.get(entry.ident) is entry:
            del self._by_ident[entry.ident]
        if self._literal.get(entry.body) is entry:
            del self._literal[entry.body]
        _discard(self._wildcard, entry)

    # -- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closing:
            return
        await self._settle()
        self._closing = True
        for task in (self._supervisor, self._dispatcher):
            if task is not None:
                task.cancel()
        for task in (self._supervisor, self._dispatcher):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        closed = ClosedError("the MQTT driver was closed before the broker confirmed the publish")
        for future, _deadline, _topic in self._acks.values():
            if future is not None and not future.done():
                future.set_exception(closed)
        self._open_window()
        self._acks.clear()
        if not self._ready_waiter.done():
            self._ready_waiter.set_result(None)
        if self._owned:
            await self._disconnect()
        else:
            await self._release()

    async def _disconnect(self) -> None:
        client = self._client
        if client.socket() is None:
            self._detach()
            return
        lost = self._lost = self._loop.create_future()
        client.disconnect()
        if client.socket() is not None:
            self._want_write()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost, 1.0)
        if client.socket() is not None:
            self._drop_socket()
        self._detach()

    async def _release(self) -> None:
        # An injected client: take our subscriptions back, stay connected, hand it back.
        if self._ready and self._entries:
            self._closing = False  # let remove() talk to the broker once more
            try:
                for entry in list(self._entries):
                    await self.remove(entry)
            finally:
                self._closing = True
        self._detach()
        self._restore_callbacks()


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A request whose answer nobody awaits any more (connection lost, driver closed) must not
    # log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _discard(items: list[Any], value: Any) -> None:
    for index, item in enumerate(items):
        if item is value:
            del items[index]
            return


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}): set ca_file, or tls_insecure for a name mismatch"
    return describe_error(exc)


def _filter_matcher(mqtt_filter: str) -> Callable[[str], bool]:
    """Whether an MQTT topic name matches ``mqtt_filter`` (MQTT rules, levels split on ``/``)."""
    levels = mqtt_filter.split("/")
    if "+" not in levels and "#" not in levels:
        return mqtt_filter.__eq__
    regex = ""
    for index, level in enumerate(levels):
        if level == "#":
            # 'a/#' also matches 'a' itself.
            regex += "(?:/.*)?" if index else ".*"
            break
        if index:
            regex += "/"
        regex += "[^/]*" if level == "+" else re.escape(level)
    fullmatch = re.compile(regex, re.DOTALL).fullmatch

    def matches(topic: str) -> bool:
        return fullmatch(topic) is not None

    return matches


def _overlap(first: str, second: str) -> bool:
    """Whether some topic name matches both MQTT filters."""
    a = first.split("/")
    b = second.split("/")
    index = 0
    while True:
        end_a = index == len(a)
        end_b = index == len(b)
        if end_a and end_b:
            return True
        if end_a:
            return b[index] == "#"
        if end_b:
            return a[index] == "#"
        x, y = a[index], b[index]
        if x == "#" or y == "#":
            return True
        if x != y and x != "+" and y != "+":
            return False
        index += 1
