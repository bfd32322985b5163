"""Which values come back from their own JSON as themselves: the in-process shortcut.

The memory driver hands a subscription the value that was published, with its bytes. When
decoding those bytes would only rebuild an equal, immutable value of the very type the
subscription asks for, the subscription takes the value as it is. :func:`reusable` says,
once per type, whether that can be so and returns the per-value test; anything it cannot
vouch for is decoded as on every other driver, so handlers see the same thing everywhere.

A type qualifies when it is ``str``, ``int``, ``bool`` or ``float``, or a frozen attrs class
or frozen dataclass whose fields are all of those (or ``X | None``), with no converters, no
post-init hook, and only the hooks cattrs generates for it. A value qualifies when its type
and the type of every field are exactly the declared ones (a ``bool`` in an ``int`` field, a
``str`` subclass or a NaN would decode into something else) and the JSON encoder takes it
as it is (ints of 64 bits, finite floats, strings without lone surrogates), so that its
bytes, made later if a subscription needs them, cannot fail.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs
import cattrs

__all__ = ["Reusable", "reusable"]

#: Whether one value decodes from its own JSON back into itself.
Reusable = Callable[[Any], bool]

_SCALARS = (str, int, bool, float)


def reusable(conv: cattrs.Converter, reference: cattrs.Converter, type_: Any) -> Reusable | None:
    """The per-value test for ``type_`` under ``conv``, or None when no value can qualify.

    ``reference`` has the library's own hooks only: it tells hooks a user registered on
    ``conv`` for a scalar type (which may change values on the way in) from the defaults.
    """
    if not isinstance(type_, type):
        return None
    if type_ in _SCALARS:
        if not _kept(conv, reference, type_):
            return None
        return _compile(type_, [], {})
    fields = _plain_fields(type_)
    if fields is None or not _frozen(type_, fields[0]):
        return None
    if not (
        _generated(conv.get_structure_hook(type_)) and _generated(conv.get_unstructure_hook(type_))
    ):
        return None
    try:
        hints = typing.get_type_hints(type_)
    except Exception:  # an annotation that does not resolve: decode as usual
        return None
    kinds: dict[str, tuple[type, ...]] = {}
    for name in fields:
        allowed = _allowed(hints.get(name), conv, reference)
        if allowed is None:
            return None
        kinds[name] = allowed
    return _compile(type_, fields, kinds)


def _kept(conv: cattrs.Converter, reference: cattrs.Converter, type_: type) -> bool:
    """Whether ``conv`` still has the library's own hooks for the scalar ``type_``."""
    return bool(
        conv.get_structure_hook(type_) == reference.get_structure_hook(type_)
        and conv.get_unstructure_hook(type_) == reference.get_unstructure_hook(type_)
    )


def _plain_fields(type_: type) -> list[str] | None:
    """Field names of an attrs class or dataclass that cattrs rebuilds as they are."""
    if attrs.has(type_):
        if hasattr(type_, "__attrs_post_init__"):
            return None
        fields = attrs.fields(type_)
        if not all(f.init and f.converter is None for f in fields):
            return None
        names = [f.name for f in fields]
    elif dataclasses.is_dataclass(type_):
        if hasattr(type_, "__post_init__"):
            return None
        found = dataclasses.fields(type_)
        if not all(f.init for f in found):
            return None
        names = [f.name for f in found]
    else:
        return None
    return names or None


def _frozen(type_: type, field: str) -> bool:
    params = getattr(type_, "__dataclass_params__", None)
    if params is not None:
        return bool(params.frozen)
    try:  # a frozen attrs class refuses any assignment, even on a bare instance
        setattr(object.__new__(type_), field, None)
    except attrs.exceptions.FrozenInstanceError:
        return True
    except Exception:
        return False
    return False


def _generated(hook: Any) -> bool:
    """Whether ``hook`` is the one cattrs generated (not one a user registered)."""
    code = getattr(hook, "__code__", None)
    return code is not None and code.co_filename.startswith("<cattrs generated")


def _allowed(
    hint: Any, conv: cattrs.Converter, reference: cattrs.Converter
) -> tuple[type, ...] | None:
    """The exact types a field of type ``hint`` may hold for its value to come back as is."""
    if hint in _SCALARS:
        return (hint,) if _kept(conv, reference, hint) else None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = typing.get_args(hint)
        if len(parts) == 2 and type(None) in parts:
            inner = _allowed(next(p for p in parts if p is not type(None)), conv, reference)
            return None if inner is None else (*inner, type(None))
    return None


def _utf8(text: str) -> bool:
    """Whether JSON can carry ``text`` (no lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# What the JSON encoder accepts of each scalar, as an expression over `{}` (the value).
_ENCODABLE = {
    int: "-9223372036854775808 <= {} <= 18446744073709551615",
    str: "({}.isascii() or _utf8({}))",
    float: "_finite({})",
    bool: "",
}


def _compile(type_: type, fields: list[str], kinds: dict[str, tuple[type, ...]]) -> Reusable:
    """One expression per type, generated as attrs and cattrs do: the exact type of the value
    and of each field, and what the encoder accepts (64-bit ints, finite floats, UTF-8)."""
    names: dict[str, Any] = {"_type": type_, "_finite": math.isfinite, "_utf8": _utf8}

    def check(get: str, kind: type, label: str) -> str:
        names[label] = kind
        encodable = _ENCODABLE[kind].format(get, get)
        return (
            f"(type({get}) is {label} and {encodable})" if encodable else f"type({get}) is {label}"
        )

    # A scalar is checked as a whole; a class by its exact type, then field by field.
    terms = ["type(value) is _type"] if fields else [check("value", type_, "_type")]
    for field in fields:  # attrs and dataclass field names are identifiers
        get = f"value.{field}"
        choices = [
            f"{get} is None" if kind is type(None) else check(get, kind, f"_{field}_{index}")
            for index, kind in enumerate(kinds[field])
        ]
        terms.append(choices[0] if len(choices) == 1 else "(" + " or ".join(choices) + ")")
    source = f"def fits(value):\n    return {' and '.join(terms)}\n"
    code = compile(source, f"<runa_message reusable {type_.__qualname__}>", "exec")
    exec(code, names)
    fits: Reusable = names["fits"]
    return fits
