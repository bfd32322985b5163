"""Codecs: typed JSON payloads with cattrs, pydantic when installed, and raw bytes."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, TypedDict

import attrs
import pydantic
import pytest

from runa_message import DecodeError, EncodeError, JSONCodec, RawCodec


@attrs.frozen
class Address:
    city: str


@attrs.frozen
class User:
    id: int
    name: str
    address: Address
    tags: list[str] = attrs.field(factory=list)
    seen: datetime | None = None


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Movie(TypedDict):
    title: str
    year: int


class Order(pydantic.BaseModel):
    id: int
    items: list[str]


CODEC = JSONCodec()


@pytest.mark.parametrize(
    ("value", "type_"),
    [
        (User(1, "ann", Address("Oslo"), ["a"], datetime(2026, 1, 1, tzinfo=timezone.utc)), User),
        (Point(1.5, -2.0), Point),
        (Movie(title="Heat", year=1995), Movie),
        (Order(id=3, items=["x"]), Order),
        ({"k": [1, 2, {"n": None}]}, dict[str, Any]),
        ([1, 2, 3], list[int]),
        ("text", str),
        (42, int),
        (2.5, float),
        (True, bool),
        (None, None),
    ],
)
def test_json_round_trip(value: Any, type_: Any) -> None:
    data = CODEC.encode(value)
    assert CODEC.decode(data, type_) == value


def test_json_without_a_type_gives_plain_json() -> None:
    assert CODEC.decode(b'{"a": [1]}', Any) == {"a": [1]}


def test_json_bytes_type_gives_the_payload_itself() -> None:
    assert CODEC.decode(b'{"a": 1}', bytes) == b'{"a": 1}'


@pytest.mark.parametrize(
    ("data", "type_", "says"),
    [
        (b'{"id": "x", "name": "a", "address": {"city": "c"}}', User, "User.id"),
        (b'{"id": 1, "name": "a", "address": {}}', User, "User.address.city"),
        (b'{"id": 1, "name": "a"}', User, "required field missing"),
        (b'{"x": "nope", "y": 1}', Point, "Point.x"),
        (b'{"title": "t"}', Movie, "year"),
        (b'{"id": 1, "items": "x"}', Order, "Order.items"),
        (b"not json", User, "not JSON"),
    ],
)
def test_payload_that_does_not_fit_names_the_field(data: bytes, type_: Any, says: str) -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data, type_)
    assert says in str(info.value)


def test_unencodable_value_raises_encode_error_with_advice() -> None:
    with pytest.raises(EncodeError, match="register an unstructure hook"):
        CODEC.encode(object())


def test_raw_codec() -> None:
    raw = RawCodec()
    assert raw.name == "application/octet-stream"
    assert raw.encode(b"\x00\xff") == b"\x00\xff"
    assert raw.encode("é") == "é".encode()
    assert raw.encode(bytearray(b"ab")) == b"ab"
    assert raw.decode(b"\x00", bytes) == b"\x00"
    assert raw.decode("é".encode(), str) == "é"
    with pytest.raises(EncodeError, match="bytes or str"):
        raw.encode(3)
    with pytest.raises(DecodeError, match="not UTF-8"):
        raw.decode(b"\xff", str)
    with pytest.raises(DecodeError, match="Message\\[bytes\\]"):
        raw.decode(b"x", User)
