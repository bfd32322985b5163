"""Codecs turn payloads into bytes and back; the codec's name is the ``content-type`` header.

:class:`JSONCodec` (the default) structures JSON into attrs classes, dataclasses, TypedDicts,
primitives and containers with cattrs, and into pydantic models when pydantic is installed.
:class:`RawCodec` passes ``bytes`` and ``str`` through unchanged.
"""

from __future__ import annotations

import decimal
import functools
import sys
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from . import roundtrip
from .errors import DecodeError, EncodeError
from .roundtrip import Reusable

__all__ = ["CODECS", "JSON", "RAW", "Codec", "JSONCodec", "RawCodec", "converter", "type_name"]

Decoder = Callable[[bytes], Any]


@runtime_checkable
class Codec(Protocol):
    """Encodes payloads to bytes and decodes them into a requested type.

    ``name`` is the content type written into the ``content-type`` header. ``decode`` raises
    :class:`DecodeError` when the bytes do not fit ``type_``; ``encode`` raises
    :class:`EncodeError` for a value it cannot encode.
    """

    @property
    def name(self) -> str:
        """The content type, written into the ``content-type`` header."""
        ...

    def encode(self, value: Any) -> bytes:
        """Return the bytes of ``value``."""
        ...

    def decode(self, data: bytes, type_: Any) -> Any:
        """Return ``data`` decoded into ``type_`` (``Any`` for the codec's plain form)."""
        ...


def _is_pydantic_model(type_: Any) -> bool:
    # A pydantic model can only reach us if pydantic was imported by the user: no import here.
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None and isinstance(type_, type) and issubclass(type_, pydantic.BaseModel)
    )


def _make_converter() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False)
    conv.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(value))
    conv.register_structure_hook(decimal.Decimal, lambda value, _: decimal.Decimal(value))
    conv.register_unstructure_hook(decimal.Decimal, str)
    conv.register_structure_hook_func(
        _is_pydantic_model, lambda value, type_: type_.model_validate(value)
    )
    conv.register_unstructure_hook_func(
        _is_pydantic_model, lambda value: value.model_dump(mode="json")
    )
    return conv


# A converter with the library's hooks only, made once, to tell a user's hooks from them.
_reference = functools.cache(_make_converter)

#: The cattrs converter the JSON codec uses; register hooks on it for your own types.
converter: cattrs.Converter = _make_converter()


def type_name(type_: Any) -> str:
    """A readable name for a payload type, as ``subscriptions()`` shows it."""
    if type_ is Any:
        return "Any"
    if isinstance(type_, type):
        return type_.__qualname__
    return repr(type_).replace("typing.", "")


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        details = "; ".join(cattrs.transform_error(exc, path=type_name(type_)))
    elif hasattr(exc, "errors") and callable(exc.errors):  # pydantic.ValidationError
        details = "; ".join(
            f"{e.get('msg')} @ {type_name(type_)}.{'.'.join(map(str, e.get('loc', ())))}"
            for e in exc.errors()
        )
    else:
        details = f"{type(exc).__name__}: {exc}"
    return f"payload does not fit {type_name(type_)}: {details}"


@attrs.frozen
class JSONCodec:
    """JSON payloads, structured with cattrs (``application/json``, the default codec)."""

    name: str = "application/json"
    converter: cattrs.Converter = attrs.field(default=converter, repr=False)
    # type -> its unstructure hook, or None where orjson serializes the value itself.
    _encoders: dict[type, Callable[[Any], Any] | None] = attrs.field(
        factory=dict, init=False, repr=False, eq=False
    )
    # Decoders by payload type, and the fast converter they use, both made on first need:
    # ten thousand subscriptions of one type share one decoder.
    _decoders: dict[Any, Decoder] = attrs.field(factory=dict, init=False, repr=False, eq=False)
    _fast: list[cattrs.Converter] = attrs.field(factory=list, init=False, repr=False, eq=False)
    #: The :meth:`reusable` tests made so far, by type: a hot path may look here first.
    reusable_tests: dict[Any, Reusable | None] = attrs.field(
        factory=dict, init=False, repr=False, eq=False
    )

    def encode(self, value: Any) -> bytes:
        """Return ``value`` as JSON; attrs, dataclasses and pydantic models are unstructured."""
        kind = type(value)
        try:
            hook = self._encoders[kind]
        except KeyError:
            hook = self._encoders[kind] = (
                self.converter.get_unstructure_hook(kind)
                if attrs.has(kind) or _is_pydantic_model(kind)
                else None
            )
        try:
            return orjson.dumps(value if hook is None else hook(value), default=self._unstructure)
        except TypeError as exc:
            raise EncodeError(
                f"cannot encode a {type(value).__name__} as JSON ({exc}): publish an attrs "
                "class, dataclass, pydantic model or JSON value, register an unstructure hook "
                "on runa_message.codec.converter, or use publish_raw for bytes"
            ) from None

    def _unstructure(self, value: Any) -> Any:
        result = self.converter.unstructure(value)
        if result is value:
            raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
        return result

    def reusable(self, type_: Any) -> Reusable | None:
        """A test of whether a value decodes from its own JSON into itself, or None.

        The memory driver hands such a value to subscriptions of ``type_`` as it is instead
        of decoding its bytes; :mod:`runa_message.roundtrip` says which types and values
        qualify (immutable ones that come back equal).
        """
        try:
            return self.reusable_tests[type_]
        except KeyError:
            made = self.reusable_tests[type_] = roundtrip.reusable(
                self.converter, _reference(), type_
            )
            return made
        except TypeError:  # an unhashable type annotation
            return None

    def decode(self, data: bytes, type_: Any) -> Any:
        """Return ``data`` parsed as JSON and structured into ``type_``."""
        return self.decoder(type_)(data)

    def decoder(self, type_: Any) -> Decoder:
        """Return a function that decodes bytes into ``type_``, resolved once per type.

        Hooks must be registered on the converter before the first decoder of a type is made.
        """
        try:
            return self._decoders[type_]
        except KeyError:
            made = self._decoders[type_] = self._make_decoder(type_)
            return made
        except TypeError:  # an unhashable type annotation
            return self._make_decoder(type_)

    def _make_decoder(self, type_: Any) -> Decoder:
        if type_ is bytes:
            return bytes
        loads = orjson.loads
        if type_ is Any or type_ is object:

            def plain(data: bytes) -> Any:
                try:
                    return loads(data)
                except orjson.JSONDecodeError as exc:
                    raise DecodeError(f"payload is not JSON: {exc}") from None

            return plain
        # Structure without collecting every field error (much faster); when that fails, run
        # the detailed converter once more for an error that names each bad field.
        if not self._fast:
            self._fast.append(self.converter.copy(detailed_validation=False))
        hook = self._fast[0].get_structure_hook(type_)
        detailed = self.converter.get_structure_hook(type_)

        def typed(data: bytes) -> Any:
            try:
                value = loads(data)
            except orjson.JSONDecodeError as exc:
                raise DecodeError(f"payload is not JSON: {exc}") from None
            try:
                return hook(value, type_)
            except Exception as error:
                try:
                    detailed(value, type_)
                except Exception as exc:
                    raise DecodeError(_describe(exc, type_)) from exc
                raise DecodeError(_describe(error, type_)) from error

        return typed


@attrs.frozen
class RawCodec:
    """Payloads as they are: ``bytes`` (or UTF-8 ``str``) in and out, ``application/octet-stream``."""

    name: str = "application/octet-stream"

    def encode(self, value: Any) -> bytes:
        """Return ``value`` as bytes; only ``bytes``, ``bytearray``, ``memoryview`` and ``str``."""
        if isinstance(value, bytes):
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        raise EncodeError(
            f"RawCodec encodes bytes or str, got {type(value).__name__}: encode it first, "
            "or publish it with the JSON codec"
        )

    def decode(self, data: bytes, type_: Any) -> Any:
        """Return ``data`` as ``bytes``, or as ``str`` when ``type_`` is ``str``."""
        return self.decoder(type_)(data)

    def decoder(self, type_: Any) -> Decoder:
        """Return a function that decodes bytes into ``type_`` (``bytes`` or ``str``)."""
        if type_ is str:

            def text(data: bytes) -> str:
                try:
                    return data.decode()
                except UnicodeDecodeError as exc:
                    raise DecodeError(f"payload is not UTF-8 text: {exc}") from None

            return text
        if type_ in (bytes, Any, object):
            return bytes
        message = (
            f"RawCodec decodes into bytes or str, not {type_name(type_)}: annotate the handler "
            "with Message[bytes] or use the JSON codec"
        )

        def unfit(data: bytes) -> Any:
            raise DecodeError(message)

        return unfit


def decoder_for(codec: Codec, type_: Any) -> Decoder:
    """Return ``codec``'s decoder for ``type_``, pre-resolved when the codec offers one."""
    make = getattr(codec, "decoder", None)
    if make is not None:
        return make(type_)  # type: ignore[no-any-return]
    return lambda data: codec.decode(data, type_)


#: The JSON codec every broker uses unless configured otherwise.
JSON = JSONCodec()
#: The raw codec of ``publish_raw``.
RAW = RawCodec()
#: The built-in codecs by short name (as config and ``codec=`` spell them) and content type.
CODECS: dict[str, Codec] = {"json": JSON, "raw": RAW, JSON.name: JSON, RAW.name: RAW}
