"""A paho-mqtt client with a lean path for the packets that come once per message.

paho builds a ``Properties`` object (a few dozen dictionary operations) for every MQTT 5
PUBLISH and for every PUBACK, an ``MQTTMessage`` per PUBLISH, and reads the socket one
to three times per packet. :class:`FastClient` keeps paho for everything else (connect,
subscribe, keepalive, QoS 2, retransmission) and changes three steps:

- the socket is read in 64 KiB chunks that paho's packet reader then takes bytes from;
- a QoS 0/1 PUBLISH goes straight to ``sink(topic, payload, qos, mid, identifiers)``,
  with only the Subscription Identifiers parsed out of its MQTT 5 properties;
- a PUBACK without properties completes the publish without building any.

Each step falls back to paho's own code for anything unusual, so a packet this module does
not understand is handled exactly as paho handles it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["FastClient", "Sink", "subscription_identifiers"]

#: ``sink(topic, payload, qos, mid, subscription_identifiers)`` for each PUBLISH received.
Sink = Callable[[bytes, bytes, int, int, "list[int] | None"], None]

_READ_SIZE = 65536
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_V5 = MQTTProtocolVersion.MQTTv5
_SUBSCRIPTION_IDENTIFIER = 11
# MQTT 5 property identifiers by the size of their value (section 2.2.2.2).
_FIXED = {
    1: 1, 23: 1, 25: 1, 36: 1, 37: 1, 40: 1, 41: 1, 42: 1,
    19: 2, 33: 2, 35: 2,
    2: 4, 17: 4, 24: 4, 39: 4,
}  # fmt: skip
_PREFIXED = frozenset({3, 8, 9, 18, 21, 22, 26, 28, 31})  # two-byte length, then data
_PAIR = 38  # User Property: two length-prefixed strings
#: PUBACK reason codes and empty properties, shared: the driver's on_publish only reads them.
_PUBACK_REASONS: dict[int, ReasonCode] = {}
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


def _puback_reason(value: int) -> ReasonCode:
    reason = _PUBACK_REASONS.get(value)
    if reason is None:
        reason = _PUBACK_REASONS[value] = ReasonCode(PacketTypes.PUBACK, identifier=value)
    return reason


class _Malformed(Exception):
    pass


def _varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise _Malformed


def subscription_identifiers(data: bytes | bytearray, pos: int, end: int) -> list[int] | None:
    """The Subscription Identifiers in the MQTT 5 properties ``data[pos:end]``.

    Raises ``ValueError`` on a property this parser does not know or a truncated one.
    """
    found: list[int] | None = None
    try:
        while pos < end:
            ident = data[pos]
            pos += 1
            if ident == _SUBSCRIPTION_IDENTIFIER:
                value, pos = _varint(data, pos)
                if found is None:
                    found = [value]
                else:
                    found.append(value)
            elif ident in _FIXED:
                pos += _FIXED[ident]
            elif ident in _PREFIXED:
                pos += 2 + ((data[pos] << 8) | data[pos + 1])
            elif ident == _PAIR:
                pos += 2 + ((data[pos] << 8) | data[pos + 1])
                pos += 2 + ((data[pos] << 8) | data[pos + 1])
            else:
                raise _Malformed
    except (_Malformed, IndexError):
        raise ValueError("unexpected MQTT 5 property") from None
    if pos != end:
        raise ValueError("truncated MQTT 5 properties")
    return found


class FastClient(mqtt.Client):
    """A paho ``Client`` (callback API version 2) with the lean per-message path above.

    Set :attr:`sink` to receive QoS 0 and 1 messages there instead of ``on_message``.
    """

    sink: Sink | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runa_buffer = b""
        self._runa_offset = 0
        self._runa_sock: Any = None

    # -- reading: one recv() for many packets -------------------------------------------

    def buffered(self) -> bool:
        """Whether bytes already read from the socket wait to be parsed."""
        return self._runa_offset < len(self._runa_buffer) and self._runa_sock is self._sock

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is not self._runa_sock:  # a new connection: forget what the old one left
            self._runa_sock = sock
            self._runa_buffer = b""
            self._runa_offset = 0
        buffer = self._runa_buffer
        offset = self._runa_offset
        if offset >= len(buffer):
            data = super()._sock_recv(_READ_SIZE)
            if len(data) <= bufsize:
                return data
            self._runa_buffer = buffer = data
            offset = 0
        end = offset + bufsize
        self._runa_offset = end
        if end >= len(buffer):
            self._runa_buffer = b""
            self._runa_offset = 0
        return buffer[offset:end]

    # -- PUBLISH received ---------------------------------------------------------------

    def _handle_publish(self) -> MQTTErrorCode:
        sink = self.sink
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if sink is None or qos > 1:
            return super()._handle_publish()
        data = self._in_packet["packet"]
        try:
            pos = 2 + ((data[0] << 8) | data[1])
            topic = bytes(data[2:pos])
            mid = 0
            if qos:
                mid = (data[pos] << 8) | data[pos + 1]
                pos += 2
            identifiers = None
            if self._protocol == _V5:
                length, pos = _varint(data, pos)
                if length:
                    identifiers = subscription_identifiers(data, pos, pos + length)
                pos += length
            if pos > len(data):
                raise ValueError("truncated PUBLISH")
        except (ValueError, IndexError, _Malformed):
            return super()._handle_publish()
        sink(topic, bytes(data[pos:]), qos, mid, identifiers)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return _SUCCESS

    # -- PUBACK received ----------------------------------------------------------------

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        data = self._in_packet["packet"]
        size = len(data)
        # mid, then (MQTT 5) an optional reason code and an optional, here empty, property length
        if cmd != "PUBACK" or not 2 <= size <= 4 or (size == 4 and data[3] != 0):
            return super()._handle_pubackcomp(cmd)
        mid = (data[0] << 8) | data[1]
        try:
            reason = _puback_reason(data[2] if size > 2 else 0)
        except Exception:
            return super()._handle_pubackcomp(cmd)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, _PUBACK_PROPERTIES)
        return _SUCCESS
