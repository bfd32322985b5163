"""Topics, patterns and matching: one meaning on every driver.

A topic is split into segments on ``.``, ``/`` and ``:``; ``user.created``, ``user/created``
and ``user:created`` name the same segments. In a pattern, ``*`` or ``+`` stands for exactly
one segment, and ``#`` or ``**`` for zero or more segments, only as the last one:

============== ===================== =========
pattern        topic                 matches
============== ===================== =========
``user.*``     ``user.created``      yes
``user.*``     ``user.created.x``    no
``user.#``     ``user``              yes
``user.#``     ``user.created.x``    yes
``*.created``  ``order/created``     yes
============== ===================== =========

Drivers translate patterns into their broker's wildcards with :func:`translate` and leave
the exact filtering to the registry, which drops what :func:`match_topic` does not select.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Generic, TypeVar

from .errors import TopicError

__all__ = [
    "MANY",
    "ONE",
    "TopicIndex",
    "compile_pattern",
    "is_pattern",
    "match_topic",
    "segments",
    "translate",
    "validate_pattern",
    "validate_topic",
]

#: The spellings of the one-segment wildcard.
ONE = frozenset({"*", "+"})
#: The spellings of the zero-or-more-segments wildcard (only as the last segment).
MANY = frozenset({"#", "**"})

_SPLIT = re.compile(r"[./:]")
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")
_WILDCARD_CHAR = re.compile(r"[*+#]")
_SEP = "[./:]"

V = TypeVar("V")


def segments(topic: str) -> list[str]:
    """Split a topic or pattern into its segments."""
    return _SPLIT.split(topic)


def is_pattern(pattern: str) -> bool:
    """Return whether ``pattern`` holds a wildcard segment."""
    return any(seg in ONE or seg in MANY for seg in segments(pattern))


def validate_topic(topic: str, max_length: int | None = None) -> None:
    """Raise :class:`TopicError` unless ``topic`` can be published.

    A published topic is non-empty, has no empty segment, no whitespace or control
    character, no wildcard, and is at most ``max_length`` bytes (UTF-8) when given.
    """
    if not isinstance(topic, str):
        raise TopicError(f"topic must be a string, got {type(topic).__name__}")
    if not topic:
        raise TopicError("topic is empty: publish to a name such as 'user.created'")
    _check_common(topic, "topic")
    if _WILDCARD_CHAR.search(topic) or ">" in segments(topic):
        raise TopicError(
            f"topic {topic!r} holds a wildcard (*, +, #, > are only for subscriptions): "
            "publish to a concrete topic"
        )
    if max_length is not None and len(topic.encode()) > max_length:
        raise TopicError(
            f"topic {topic[:40]!r}... is {len(topic.encode())} bytes, over this driver's limit "
            f"of {max_length}: use a shorter topic"
        )


def validate_pattern(pattern: str) -> None:
    """Raise :class:`TopicError` unless ``pattern`` can be subscribed to."""
    if not isinstance(pattern, str):
        raise TopicError(f"topic pattern must be a string, got {type(pattern).__name__}")
    if not pattern:
        raise TopicError("topic pattern is empty: subscribe to a topic, or '#' for every topic")
    _check_common(pattern, "topic pattern")
    parts = segments(pattern)
    for index, seg in enumerate(parts):
        if seg in MANY:
            if index != len(parts) - 1:
                raise TopicError(
                    f"topic pattern {pattern!r}: {seg!r} (zero or more segments) may only be "
                    "the last segment; use '*' for exactly one segment in the middle"
                )
        elif seg == ">":
            raise TopicError(
                f"topic pattern {pattern!r}: use '#' for 'zero or more segments' (it becomes "
                "NATS '>' on NATS)"
            )
        elif seg not in ONE and _WILDCARD_CHAR.search(seg):
            raise TopicError(
                f"topic pattern {pattern!r}: a wildcard must be a whole segment, "
                f"{seg!r} is not; write e.g. 'user.*'"
            )


def _check_common(text: str, what: str) -> None:
    bad = _BAD_CHAR.search(text)
    if bad:
        raise TopicError(
            f"{what} {text!r} holds whitespace or a control character ({bad.group()!r} at "
            f"{bad.start()}): remove it"
        )
    if "" in segments(text):
        raise TopicError(
            f"{what} {text!r} has an empty segment: separators '.', '/' and ':' must stand "
            "between names, not at the ends or twice in a row"
        )


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """Return a function that tells whether a topic matches ``pattern`` (validated first)."""
    validate_pattern(pattern)
    parts = segments(pattern)
    if not any(seg in ONE or seg in MANY for seg in parts):

        def exact(topic: str) -> bool:
            return topic == pattern or (len(topic) == len(pattern) and segments(topic) == parts)

        return exact
    tail = ""
    if parts[-1] in MANY:
        parts = parts[:-1]
        tail = f"(?:{_SEP}.+)?" if parts else ".+"
    body = _SEP.join("[^./:]+" if seg in ONE else re.escape(seg) for seg in parts)
    fullmatch = re.compile(body + tail, re.DOTALL).fullmatch

    def wildcard(topic: str) -> bool:
        return fullmatch(topic) is not None

    return wildcard


def match_topic(pattern: str, topic: str) -> bool:
    """Return whether ``topic`` is selected by ``pattern`` (see the module docs for the rules)."""
    return compile_pattern(pattern)(topic)


def translate(pattern: str, *, separator: str, one: str, many: str) -> str:
    """Spell ``pattern`` in a broker's own wildcard syntax.

    ``translate("user/*:#", separator=".", one="*", many=">")`` gives ``"user.*.>"``.
    The result may select more than the pattern (NATS ``>`` needs a segment, Redis globs
    cross separators); the registry filters with :func:`match_topic`, so drivers need not.
    """
    return separator.join(
        one if seg in ONE else many if seg in MANY else seg for seg in segments(pattern)
    )


class TopicIndex(Generic[V]):
    """Patterns to values, looked up by topic without scanning every pattern.

    A segment trie: literal segments by name, one branch for ``*`` and a list for a
    trailing ``#``. Lookups of topics already seen come from a bounded cache.
    """

    __slots__ = ("_cache_size", "_root", "cache")

    def __init__(self, cache_size: int = 4096) -> None:
        self._root = _Node[V]()
        #: What :meth:`match` returned for topics looked up since the index last changed
        #: (the same dict for the index's life): a hot path may look here first.
        self.cache: dict[str, tuple[V, ...]] = {}
        self._cache_size = cache_size

    def add(self, pattern: str, value: V) -> None:
        """Add ``value`` under ``pattern``."""
        validate_pattern(pattern)
        node = self._root
        for seg in segments(pattern):
            if seg in MANY:
                node.many.append(value)
                break
            node = node.child(seg)
        else:
            node.values.append(value)
        self.cache.clear()

    def remove(self, pattern: str, value: V) -> None:
        """Remove ``value`` from under ``pattern`` (no error when it is not there)."""
        node: _Node[V] | None = self._root
        for seg in segments(pattern):
            if node is None:
                return
            if seg in MANY:
                _discard(node.many, value)
                break
            node = node.one if seg in ONE else node.children.get(seg)
        else:
            if node is not None:
                _discard(node.values, value)
        self.cache.clear()

    def match(self, topic: str) -> tuple[V, ...]:
        """Return the values whose pattern selects ``topic``."""
        found = self.cache.get(topic)
        if found is None:
            hits: list[V] = []
            _walk(self._root, segments(topic), 0, hits)
            found = tuple(hits)
            if len(self.cache) >= self._cache_size:
                self.cache.clear()
            self.cache[topic] = found
        return found

    def values(self) -> Iterable[V]:
        """Every value in the index."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield from node.values
            yield from node.many
            stack.extend(node.children.values())
            if node.one is not None:
                stack.append(node.one)


class _Node(Generic[V]):
    __slots__ = ("children", "many", "one", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.one: _Node[V] | None = None
        self.values: list[V] = []
        self.many: list[V] = []

    def child(self, seg: str) -> _Node[V]:
        if seg in ONE:
            if self.one is None:
                self.one = _Node()
            return self.one
        node = self.children.get(seg)
        if node is None:
            node = self.children[seg] = _Node()
        return node


def _walk(node: _Node[V], parts: list[str], index: int, hits: list[V]) -> None:
    hits.extend(node.many)
    if index == len(parts):
        hits.extend(node.values)
        return
    literal = node.children.get(parts[index])
    if literal is not None:
        _walk(literal, parts, index + 1, hits)
    if node.one is not None:
        _walk(node.one, parts, index + 1, hits)


def _discard(items: list[V], value: V) -> None:
    for i, item in enumerate(items):
        if item is value or item == value:
            del items[i]
            return
