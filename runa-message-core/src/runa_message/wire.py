"""The envelope on the wire, exactly as Go runa services write and read it.

A frame is the JSON that Go's ``encoding/json`` makes of runa's ``Envelope``::

    {"id": "...", "topic": "...", "payload": "<base64>", "headers": {...},
     "created_at": "2026-11-27T09:00:00.123456789Z"}

``payload`` is standard base64 with padding, or ``null`` for an empty payload; ``headers`` is
left out when empty; ``created_at`` is RFC 3339 with its offset. Times from Go carry
nanoseconds: they are kept to the microsecond (truncated), and the offset is kept.

Every driver uses this one module; nothing else parses frames.
"""

from __future__ import annotations

import binascii
import re
import sys
from base64 import b64decode, b64encode
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from .errors import DecodeError
from .message import Envelope

__all__ = ["decode", "encode", "format_time", "parse_time"]

_UTC = timezone.utc
_DUMPS_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_PREVIEW = 80
_ZONE_END = frozenset("Z0123456789")
_FROMISOFORMAT_RFC3339 = sys.version_info >= (3, 11)

if sys.version_info >= (3, 11):

    def _b64decode(text: str) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)

else:  # pragma: no cover

    def _b64decode(text: str) -> bytes:
        return b64decode(text, validate=True)


def encode(envelope: Envelope) -> bytes:
    """Return the frame for ``envelope``: JSON bytes a Go runa service decodes."""
    frame: dict[str, Any] = {
        "id": envelope.id,
        "topic": envelope.topic,
        "payload": b64encode(envelope.payload).decode("ascii") if envelope.payload else None,
        "created_at": envelope.created_at,
    }
    if envelope.headers:
        frame["headers"] = envelope.headers
    return orjson.dumps(frame, option=_DUMPS_OPTIONS)


def decode(data: bytes | bytearray | memoryview | str) -> Envelope:
    """Parse a frame into an :class:`Envelope`.

    Raises :class:`DecodeError` for anything that is not an envelope: not JSON, not an
    object, a missing or mistyped field, bad base64, or a time that is not RFC 3339.
    """
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(
            f"frame is not a runa envelope: not JSON ({exc}): {_preview(data)}"
        ) from None
    if not isinstance(frame, dict):
        raise DecodeError(
            f"frame is not a runa envelope: expected a JSON object, got {type(frame).__name__}: "
            f"{_preview(data)}"
        )
    id_ = frame.get("id")
    topic = frame.get("topic")
    payload = frame.get("payload")
    headers = frame.get("headers")
    created_at = frame.get("created_at")
    if not isinstance(id_, str) or not id_:
        raise _field_error("id", "a non-empty string", id_)
    if not isinstance(topic, str) or not topic:
        raise _field_error("topic", "a non-empty string", topic)
    if payload is None:
        body = b""
    elif isinstance(payload, str):
        try:
            body = _b64decode(payload)
        except (binascii.Error, ValueError):
            raise _field_error("payload", "standard base64", payload) from None
    else:
        raise _field_error("payload", "a base64 string or null", payload)
    if headers is None:
        headers = {}
    elif not isinstance(headers, dict):
        raise _field_error("headers", "an object or null", headers)
    if not isinstance(created_at, str):
        raise _field_error("created_at", "an RFC 3339 time string", created_at)
    return Envelope(id_, topic, body, headers, parse_time(created_at))


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time as Go writes it; nanoseconds are truncated to microseconds."""
    if _FROMISOFORMAT_RFC3339 and len(text) > 19 and text[10] == "T" and text[-1] in _ZONE_END:
        # Python 3.11's C parser reads every RFC 3339 form (and truncates nanoseconds); the
        # checks above leave it only strings that end in a zone.
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if value.tzinfo is not None:
                return value
    match = _RFC3339.match(text)
    if match is None:
        raise _field_error("created_at", "an RFC 3339 time with an offset", text)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    if offset in ("Z", "z"):
        tz = _UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        tz = _UTC if not delta else timezone(sign * delta)
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
    except ValueError:
        raise _field_error("created_at", "a valid calendar time", text) from None


def format_time(value: datetime) -> str:
    """Format ``value`` as RFC 3339 the way Go's ``time.RFC3339Nano`` does (a naive time is UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    offset = value.utcoffset() or timedelta(0)
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def _field_error(field: str, expected: str, got: object) -> DecodeError:
    return DecodeError(
        f"frame is not a runa envelope: field {field!r} must be {expected}, got {_preview(got)}"
    )


def _preview(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = repr(bytes(value[:_PREVIEW]))
        return text + ("..." if len(value) > _PREVIEW else "")
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."
