"""Configuration: TOML files, environment overrides, and typed driver settings.

.. code-block:: toml

    [message.brokers.default]
    driver = "nats"                 # default "memory"
    codec = "json"                  # or "raw", or a content type
    [message.brokers.default.meta]
    role = "audit"
    [message.nats]                  # driver settings; falls back to [nats]
    url = "nats://127.0.0.1:4222"

Environment variables ``RUNA_MESSAGE__A__B=value`` set ``message.a.b`` after the files are
read; the value is read as a TOML value when it is one (``3``, ``true``, ``["a", "b"]``) and
as a string otherwise.
"""

from __future__ import annotations

import difflib
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["BrokerConfig", "Config", "load_config", "positive", "structure_settings"]

ENV_PREFIX = "RUNA_MESSAGE__"
BROKER_KEYS = ("driver", "codec", "meta")

S = TypeVar("S")


@attrs.frozen
class BrokerConfig:
    """A ``[message.brokers.<name>]`` table; None means "not set here"."""

    driver: str | None = None
    codec: str | None = None
    meta: Mapping[str, Any] | None = None


@attrs.frozen
class Config:
    """The merged configuration tree and where it came from (for error messages)."""

    data: Mapping[str, Any] = attrs.field(factory=dict)
    source: str = "<config>"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<config>") -> Config:
        """Wrap an already parsed tree (the whole document, with its ``message`` table)."""
        return cls(dict(data), source)

    @property
    def message(self) -> Mapping[str, Any]:
        """The ``[message]`` table."""
        table = self.data.get("message", {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{self.source}: message: expected a table, got {_kind(table)}")
        return table

    def brokers(self) -> dict[str, BrokerConfig]:
        """Every ``[message.brokers.<name>]`` table, checked."""
        tables = self.message.get("brokers", {})
        if not isinstance(tables, Mapping):
            raise ConfigError(
                f"{self.source}: message.brokers: expected a table, got {_kind(tables)}"
            )
        return {name: self._broker(name, table) for name, table in tables.items()}

    def _broker(self, name: str, table: Any) -> BrokerConfig:
        path = f"message.brokers.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{self.source}: {path}: expected a table, got {_kind(table)}")
        for key in table:
            if key not in BROKER_KEYS:
                raise ConfigError(
                    f"{self.source}: {path}.{key}: unknown key{_did_you_mean(key, BROKER_KEYS)}; "
                    f"valid keys: {', '.join(BROKER_KEYS)}"
                )
        for key in ("driver", "codec"):
            if key in table and not isinstance(table[key], str):
                raise ConfigError(
                    f"{self.source}: {path}.{key}: expected a string, got {_kind(table[key])}"
                )
        meta = table.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise ConfigError(f"{self.source}: {path}.meta: expected a table, got {_kind(meta)}")
        return BrokerConfig(table.get("driver"), table.get("codec"), meta)

    def driver_settings(self, driver: str) -> tuple[dict[str, Any], str]:
        """The settings of ``driver`` (``[message.<driver>]`` over ``[<driver>]``) and their path."""
        merged: dict[str, Any] = {}
        for path, table in (
            (driver, self.data.get(driver)),
            (f"message.{driver}", self.message.get(driver)),
        ):
            if table is None:
                continue
            if not isinstance(table, Mapping):
                raise ConfigError(f"{self.source}: {path}: expected a table, got {_kind(table)}")
            merged.update(table)
        return merged, f"{self.source}: message.{driver}"


def load_config(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read a TOML file, or every ``*.toml`` of a folder in name order, then the environment.

    Later files override earlier ones table by table. ``path`` None reads only the environment.
    Raises :class:`ConfigError` naming the file, line and column of a syntax error.
    """
    data: dict[str, Any] = {}
    source = "<environment>"
    if path is not None:
        target = Path(path)
        if target.is_dir():
            files = sorted(target.glob("*.toml"))
            if not files:
                raise ConfigError(f"{target}: no *.toml files in this folder")
        elif target.is_file():
            files = [target]
        else:
            raise ConfigError(f"{target}: no such file or folder; pass the path of a TOML file")
        for file in files:
            _merge(data, _read(file))
        source = str(target)
    _apply_environment(data, os.environ if environ is None else environ)
    return Config(data, source)


def _read(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as handle:
            return dict(tomllib.load(handle))
    except tomllib.TOMLDecodeError as exc:
        # The message ends with "(at line L, column C)".
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            raise ConfigError(f"environment {name}: empty key between '__' separators")
        table = data.setdefault("message", {})
        for depth, key in enumerate(keys[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                where = ".".join(["message", *keys[: depth + 1]])
                raise ConfigError(f"environment {name}: {where} is not a table")
        table[keys[-1]] = _env_value(environ[name])


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _strict(kind: type, *accepted: type) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return kind(value)

    return hook


# Settings are strict: cattrs would otherwise turn 3 into "3" for a string setting.
_settings_converter = cattrs.Converter(forbid_extra_keys=True)
_settings_converter.register_structure_hook(str, _strict(str, str))
_settings_converter.register_structure_hook(int, _strict(int, int))
_settings_converter.register_structure_hook(float, _strict(float, int, float))
_settings_converter.register_structure_hook(bool, _strict(bool, bool))


def structure_settings(cls: type[S], settings: Mapping[str, Any], path: str) -> S:
    """Structure a driver's settings table into its attrs class ``cls``.

    ``path`` prefixes every error (e.g. ``"config.toml: message.nats"``). Unknown keys name
    the valid ones; wrong types name the key, the expected type and what was given.
    """
    fields = [field.name for field in attrs.fields(cls)]  # type: ignore[arg-type]
    for key in settings:
        if key not in fields:
            raise ConfigError(
                f"{path}.{key}: unknown setting{_did_you_mean(key, fields)}; "
                + (f"valid settings: {', '.join(fields)}" if fields else "this driver takes none")
            )
    types = attrs.resolve_types(cls)  # type: ignore[type-var]
    for field in attrs.fields(types):  # type: ignore[arg-type]
        value = settings.get(field.name)
        if (
            typing.get_origin(field.type) is list
            and value is not None
            and not isinstance(value, list)
        ):
            raise ConfigError(f"{path}.{field.name}: expected an array, got {_kind(value)}")
    try:
        return _settings_converter.structure(dict(settings), cls)
    except cattrs.ClassValidationError as exc:
        raise ConfigError(_describe_settings_error(exc, settings, path)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def positive(what: str = "a number of seconds", *, zero: bool = False) -> Any:
    """An attrs validator: the setting must be a number above zero (or zero, with ``zero``).

    ``what`` names the kind of number in the message, e.g. ``"a count"``. A bool or a
    non-number raises :class:`TypeError` (``"name: expected a number of seconds, got str"``),
    anything else out of range (NaN too) :class:`ValueError`
    (``"name: must be a number of seconds above zero, got -1"``). The messages start with
    the setting's name, so :func:`structure_settings` puts them on the key path:
    ``message.redis.publish_timeout: must be ...``.
    """
    least = "above zero (or zero)" if zero else "above zero"

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{attribute.name}: expected {what}, got {type(value).__name__}")
        if not (value > 0 or (zero and value == 0)):
            raise ValueError(f"{attribute.name}: must be {what} {least}, got {value!r}")

    return check


def _describe_settings_error(
    exc: cattrs.ClassValidationError, settings: Mapping[str, Any], path: str
) -> str:
    problems = []
    with_notes, without_notes = exc.group_exceptions()
    for error, note in with_notes:
        name = getattr(note, "name", "?")
        expected = getattr(note, "type", None)
        got = settings.get(name)
        want = getattr(expected, "__name__", None) or str(expected).replace("typing.", "")
        reason = str(error) if isinstance(error, ValueError) and str(error) else ""
        problem = f"{path}.{name}: expected {_article(want)}, got {_kind(got)}"
        if reason and "invalid literal" not in reason:
            problem = f"{path}.{name}: {reason}"
        problems.append(problem)
    names = {field.name for field in attrs.fields(exc.cl)}
    for error in without_notes:
        # A validator's message may start with its setting's name: put it on the key path.
        name, sep, rest = str(error).partition(": ")
        problems.append(f"{path}.{name}: {rest}" if sep and name in names else f"{path}: {error}")
    return "; ".join(problems) or f"{path}: {exc}"


def _article(name: str) -> str:
    words = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}
    return words.get(name, name)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) < 40 else "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _did_you_mean(key: str, options: Any) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
