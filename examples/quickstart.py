"""Quick start: a typed handler on the in-memory broker.

Run it with ``python examples/quickstart.py``; it prints ``hello from runa-message``.
Put ``[message.brokers.default] driver = "redis"`` (or nats, amqp, mqtt) in a config file
and pass it to ``Registry(config=...)`` to run the same code on a real broker.
"""

from __future__ import annotations

import asyncio

import attrs

import runa_message as message


@attrs.frozen
class Notice:
    text: str


registry = message.Registry()


@registry.subscribe("default", "notice.*")
async def on_notice(msg: message.Message[Notice]) -> None:
    print(msg.payload.text)


async def main() -> None:
    async with registry:  # start: subscriptions are live; exit: drain handlers and close
        await registry.publish("default", "notice.created", Notice(text="hello from runa-message"))


if __name__ == "__main__":
    asyncio.run(main())
