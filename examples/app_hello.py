"""The application lifecycle: a provider wires the registry into an App; prints ``hello``.

Run it with ``python examples/app_hello.py``.
"""

from __future__ import annotations

import asyncio

import attrs

import runa_message as message


@attrs.frozen
class Notice:
    text: str


def notices(registry: message.Registry) -> None:
    """A module: its parameters are filled by type from the app."""

    @registry.subscribe("default", "notice.created")
    async def on_notice(msg: message.Message[Notice]) -> None:
        print(msg.payload.text)


async def main() -> None:
    app = message.App()
    app.install(
        message.provider(
            message.register_driver("memory", message.MemoryDriver()),
            message.register_broker("default", driver="memory"),
        )
    )
    app.module(notices)
    await app.freeze()
    await message.default().publish("default", "notice.created", Notice(text="hello"))
    await app.shutdown()  # drains the handler before closing


if __name__ == "__main__":
    asyncio.run(main())
