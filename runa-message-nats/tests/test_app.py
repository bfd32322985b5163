"""Config-driven setup: provider(...) in an App, settings from [message.nats] over [nats]."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import runa_message as message
from runa_message_nats import NatsDriver, provider

pytestmark = pytest.mark.broker


async def test_provider_builds_brokers_on_nats_from_config(nats_url: str, prefix: str) -> None:
    config = message.Config.from_mapping(
        {
            "nats": {"url": "nats://127.0.0.1:1", "prefix": "not.this."},
            "message": {"nats": {"url": nats_url}},
        }
    )
    app = message.App(config)
    app.install(provider("default", "audit", prefix=prefix))
    got: asyncio.Queue[message.Message[Any]] = asyncio.Queue()

    def subscribe(registry: message.Registry) -> None:
        registry.subscribe("audit", "notice.*", got.put, payload=dict)

    app.module(subscribe)
    await app.freeze()
    try:
        registry = message.default()
        assert {info.name: info.driver for info in registry.info()} == {
            "audit": "nats",
            "default": "nats",
        }
        await registry.publish("audit", "notice.created", {"text": "hello"})
        msg = await asyncio.wait_for(got.get(), 10)
        assert msg.payload == {"text": "hello"}
        runtime = registry._runtime["audit"]
        assert isinstance(runtime.driver, NatsDriver)
        assert runtime.driver.settings.prefix == prefix  # code wins over config
        assert runtime.driver.settings.url == (nats_url,)  # [message.nats] over [nats]
    finally:
        await app.shutdown()


async def test_config_error_names_the_key(nats_url: str) -> None:
    config = message.Config.from_mapping({"message": {"nats": {"publish_timeout": "soon"}}})
    registry = message.Registry(config)
    registry.broker("default", driver="nats")
    with pytest.raises(message.ConfigError, match=r"message\.nats.*publish_timeout"):
        await registry.start()
