"""Which values come back from their own JSON as themselves (JSONCodec.reusable).

The memory driver hands a subscription the published value instead of decoding its bytes
only when this says yes; every "yes" here is checked against a real round trip.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import attrs
import pydantic
import pytest

from runa_message.codec import JSON, JSONCodec, converter


@attrs.frozen
class Order:
    id: int
    text: str
    amount: float | None = None
    paid: bool = False


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    label: Optional[str] = None  # noqa: UP045 - the typing spelling is checked too


@attrs.define
class Mutable:
    id: int


@dataclasses.dataclass
class MutablePoint:
    x: int


def _strip(text: str) -> str:
    return text.strip()


@attrs.frozen
class Converted:
    text: str = attrs.field(converter=_strip)


@attrs.frozen
class PostInit:
    id: int

    def __attrs_post_init__(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class DataPostInit:
    x: int

    def __post_init__(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class NotInit:
    x: int
    y: int = dataclasses.field(init=False, default=0)


@attrs.frozen
class Nested:
    order: Order


@attrs.frozen
class WithList:
    tags: list[str]


@attrs.frozen
class WithTuple:
    tags: tuple[str, ...]


@attrs.frozen
class WithUnion:
    value: int | str


@attrs.frozen
class Empty:
    pass


class Model(pydantic.BaseModel):
    id: int


class Text(str):
    pass


@pytest.mark.parametrize(
    "type_",
    [Order, Point, str, int, bool, float],
    ids=lambda t: t.__name__,
)
def test_immutable_types_of_scalars_are_reusable(type_: Any) -> None:
    assert JSON.reusable(type_) is not None


@pytest.mark.parametrize(
    "type_",
    [
        Mutable,  # a handler could change what others receive
        MutablePoint,
        Converted,  # the converter runs again on decoding
        PostInit,  # so does the post-init hook
        DataPostInit,
        NotInit,  # a field decoding does not set
        Nested,  # only scalar fields
        WithList,
        WithTuple,
        WithUnion,  # int | str: decoding picks by the union's rules
        Empty,
        Model,  # pydantic models are mutable
        dict,
        list,
        Any,
        Optional[int],  # noqa: UP045 - not a class
        Text,
    ],
    ids=repr,
)
def test_everything_else_is_decoded(type_: Any) -> None:
    assert JSON.reusable(type_) is None


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        (Order(1, "hello"), True),
        (Order(1, "héllo, 世界"), True),
        (Order(-(2**63), "x", 1.5, True), True),
        (Order(2**64 - 1, "x", None), True),
        (Order(2**64, "x"), False),  # JSON ints are 64 bits: encoding would fail
        (Order(-(2**63) - 1, "x"), False),
        (Order(True, "x"), False),  # a bool in an int field decodes as 1
        (Order(1, Text("x")), False),  # a str subclass decodes as str
        (Order(1, "\ud800"), False),  # a lone surrogate cannot be encoded
        (Order(1, "x", math.nan), False),
        (Order(1, "x", math.inf), False),
        (Order(1, "x", 2), False),  # an int in a float field decodes as 2.0
        (Order(1, "x", paid=1), False),  # type: ignore[arg-type]
        (Point(1), True),
        (Point(1, "a"), True),
        (Point(1, 2), False),  # type: ignore[arg-type]
        ("text", True),
        (Text("text"), False),
        (7, True),
        (True, True),
        (2.5, True),
        (math.nan, False),
    ],
    ids=repr,
)
def test_each_value_is_checked(value: Any, fits: bool) -> None:
    test = JSON.reusable(type(value) if type(value) is not Text else str)
    assert test is not None
    assert test(value) is fits


@pytest.mark.parametrize(
    "value",
    [
        Order(1, "hello"),
        Order(2**64 - 1, "héllo", -0.0, True),
        Order(0, "", 1e308),
        Point(3, None),
        Point(-1, "ü"),
        "",
        "ünïcode",
        0,
        -(2**63),
        False,
        1.0000000000000002,
        5e-324,
    ],
    ids=repr,
)
def test_a_reusable_value_decodes_back_into_an_equal_value_of_its_type(value: Any) -> None:
    test = JSON.reusable(type(value))
    assert test is not None
    assert test(value)
    back = JSON.decode(JSON.encode(value), type(value))
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


def test_a_structure_hook_for_the_class_turns_it_off() -> None:
    own = converter.copy()
    own.register_structure_hook(Order, lambda data, _: Order(data["id"], data["text"].upper()))
    assert JSONCodec(converter=own).reusable(Order) is None


def test_a_hook_for_a_field_type_turns_it_off() -> None:
    own = converter.copy()
    own.register_structure_hook(str, lambda data, _: str(data).strip())
    codec = JSONCodec(converter=own)
    assert codec.reusable(Order) is None
    assert codec.reusable(str) is None
    assert codec.reusable(int) is not None
