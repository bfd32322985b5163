"""Resident size of N subscriptions, in a fresh interpreter: ``python -m bench.memprobe FAMILY N``.

Prints ``{"before": bytes, "after": bytes}``: the resident set size once the library is
imported and warmed up with one subscription, and again with N more subscriptions
active (started and listening), after a garbage collection.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from typing import Any


def rss() -> int:
    """The resident set size of this process, in bytes."""
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def main(family: str, count: int) -> dict[str, int]:
    """Measure ``family`` (``runa`` or ``broadcaster``) holding ``count`` subscriptions."""
    if family == "runa":
        from .contenders.runa import hold_subscriptions
    elif family == "broadcaster":
        from .contenders.broadcaster_ import hold_subscriptions
    else:
        raise SystemExit(f"unknown family {family!r}: runa or broadcaster")
    warm: Any = await hold_subscriptions(1)  # imports and first-use allocations
    gc.collect()
    before = rss()
    held = await hold_subscriptions(count)
    await asyncio.sleep(0)
    gc.collect()
    after = rss()
    del held, warm
    return {"before": before, "after": after}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    print(json.dumps(result))
