"""Growing pauses between attempts: reconnects, retried publishes, restored consumers."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with jitter.

    Each :meth:`delay` returns the current pause and grows the next one by ``factor``, up
    to ``maximum``: ``first``, ``first * factor``, ... ``maximum``, ``maximum``, ...
    (``first`` itself is capped at ``maximum``). ``jitter`` is a fraction: each returned
    delay is the pause times a random factor between ``1 - jitter`` and ``1 + jitter``
    (0 for exact pauses). :meth:`reset` starts again from ``first``, after a success.
    ``rng``: the random source of the jitter (a seeded :class:`random.Random` in tests).
    """

    __slots__ = ("_first", "_next", "_rng", "factor", "jitter", "maximum")

    def __init__(
        self,
        first: float = 0.05,
        factor: float = 2.0,
        maximum: float = 2.0,
        jitter: float = 0.2,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not first > 0 or not maximum > 0:
            raise ValueError(f"first and maximum must be above zero, got {first!r}, {maximum!r}")
        if not factor >= 1:
            raise ValueError(f"factor must be 1 or more, got {factor!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be a fraction from 0 to below 1, got {jitter!r}")
        self.factor = factor
        self.maximum = maximum
        self.jitter = jitter
        self._first = min(first, maximum)
        self._next = self._first
        self._rng = rng if rng is not None else random.Random()

    @property
    def first(self) -> float:
        """The first pause (capped at ``maximum``)."""
        return self._first

    def delay(self) -> float:
        """The next pause in seconds, jittered; the one after grows by ``factor``."""
        delay = self._next
        self._next = min(delay * self.factor, self.maximum)
        if self.jitter:
            delay *= self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        return delay

    def reset(self) -> None:
        """Start again from ``first`` (call it after a success)."""
        self._next = self._first

    def __repr__(self) -> str:
        return (
            f"Backoff(first={self._first!r}, factor={self.factor!r}, "
            f"maximum={self.maximum!r}, jitter={self.jitter!r})"
        )
