"""Quick start: a typed handler on the in-memory broker.

Run it with ``python examples/quickstart.py``; it prints ``notice.created hello``. The same
program runs on a real broker when the environment (or a config file) names its driver:
``RUNA_MESSAGE__BROKERS__DEFAULT__DRIVER=nats python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio

import attrs

import runa_message as message


@attrs.frozen
class Notice:
    text: str


registry = message.Registry()
received = asyncio.Event()


@registry.subscribe("default", "notice.*")
async def on_notice(msg: message.Message[Notice]) -> None:
    print(msg.topic, msg.payload.text)
    received.set()


async def main() -> None:
    async with registry:  # start: subscriptions are live; exit: drain handlers and close
        await registry.publish("default", "notice.created", Notice(text="hello"))
        await asyncio.wait_for(received.wait(), timeout=5)


if __name__ == "__main__":
    asyncio.run(main())
