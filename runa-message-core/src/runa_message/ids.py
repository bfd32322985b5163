"""Message ids and timestamps: unique across processes and cheap to make.

An id is 32 lowercase hex digits: 80 random bits drawn once per process (drawn again in a
forked child) followed by a 48-bit counter. Two processes share a prefix with a chance of
about one in 2**40 even among a million of them. Making an id costs a counter step and
joining two strings (the hex digits of the counter's upper bits are remade once in 256
ids), not a call into the operating system's random source.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from datetime import datetime, timezone

__all__ = ["new_id", "now"]

_UTC = timezone.utc
_LIMIT = 1 << 48
_LAST_DIGITS = tuple(f"{n:02x}" for n in range(256))

_prefix: str
_counter: itertools.count[int]
_block: str  # the prefix and the counter's hex digits but the last two


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(10).hex()
    start = int.from_bytes(os.urandom(2), "big")
    _counter = itertools.count(start)
    _new_block(start)


def _new_block(count: int) -> None:
    global _block
    _block = "%s%010x" % (_prefix, count >> 8)  # noqa: UP031 - the fixed-width form


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """Return a new message id, unique across processes."""
    count = next(_counter)
    last = count & 0xFF
    if not last:
        if count >= _LIMIT:  # 2**48 ids later: a new prefix keeps ids unique and of one width
            _reseed()
            return new_id()
        _new_block(count)
    return _block + _LAST_DIGITS[last]


#: Return the current time in UTC, as envelopes carry it (``datetime.now(timezone.utc)``,
#: bound once: one is made per message, and a partial adds no Python call to it).
now: Callable[[], datetime] = functools.partial(datetime.now, _UTC)
