"""The wire format against the envelopes a Go runa service writes."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from runa_message import DecodeError, Envelope, wire

VECTORS = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "go-envelopes.jsonl").read_text().splitlines()
    if line.strip()
]


def _unix_nano(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_every_go_envelope_decodes(vector: dict) -> None:
    expect = vector["expect"]
    envelope = wire.decode(vector["wire"].encode())
    assert envelope.id == expect["id"]
    assert envelope.topic == expect["topic"]
    assert envelope.payload == base64.b64decode(expect["payload_base64"])
    assert dict(envelope.headers) == (expect["headers"] or {})
    # Nanoseconds are kept to the microsecond (truncated); the offset is kept.
    assert _unix_nano(envelope.created_at) == expect["created_at_unix_nano"] // 1000 * 1000
    offset = envelope.created_at.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == expect["created_at_utc_offset_seconds"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_python_frames_carry_the_go_fields_and_types(vector: dict) -> None:
    go = json.loads(vector["wire"])
    ours = json.loads(wire.encode(wire.decode(vector["wire"])))
    assert ours.keys() == go.keys()
    for key, value in go.items():
        assert type(ours[key]) is type(value), key
    assert ours["payload"] == go["payload"]
    assert ours.get("headers") == go.get("headers")
    assert wire.parse_time(ours["created_at"]) == wire.parse_time(go["created_at"])


def test_encode_matches_go_conventions() -> None:
    created = datetime(2026, 11, 27, 17, 0, 0, 120000, tzinfo=timezone(timedelta(hours=8)))
    frame = orjson.loads(wire.encode(Envelope("m", "a.b", b"", {}, created)))
    assert list(frame) == ["id", "topic", "payload", "created_at"]  # headers omitted when empty
    assert frame["payload"] is None  # a nil []byte
    assert wire.parse_time(frame["created_at"]) == created
    assert wire.format_time(created) == "2026-11-27T17:00:00.12+08:00"
    assert wire.format_time(created.astimezone(timezone.utc)) == "2026-11-27T09:00:00.12Z"


def test_round_trip_keeps_everything() -> None:
    envelope = Envelope(
        "id-1",
        "device/1:status",
        bytes(range(256)),
        {"ключ": {"nested": [1, "x", None, True]}, "n": 2},
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    )
    assert wire.decode(wire.encode(envelope)) == envelope


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"topic": "a", "created_at": "2026-01-01T00:00:00Z"}', "'id'"),
        (b'{"id": "x", "topic": "", "created_at": "2026-01-01T00:00:00Z"}', "'topic'"),
        (
            b'{"id": "x", "topic": "a", "payload": "%%%", "created_at": "2026-01-01T00:00:00Z"}',
            "base64",
        ),
        (
            b'{"id": "x", "topic": "a", "payload": 3, "created_at": "2026-01-01T00:00:00Z"}',
            "'payload'",
        ),
        (
            b'{"id": "x", "topic": "a", "headers": [], "created_at": "2026-01-01T00:00:00Z"}',
            "'headers'",
        ),
        (b'{"id": "x", "topic": "a", "created_at": "yesterday"}', "RFC 3339"),
        (b'{"id": "x", "topic": "a", "created_at": "2026-01-01T00:00:00"}', "RFC 3339"),
        (b'{"id": "x", "topic": "a", "created_at": "2026-02-30T00:00:00Z"}', "calendar"),
        (b'{"id": "x", "topic": "a"}', "'created_at'"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_garbage_raises_decode_error_naming_the_problem(frame: bytes, says: str) -> None:
    with pytest.raises(DecodeError, match="not a runa envelope") as info:
        wire.decode(frame)
    assert says in str(info.value)
