"""Config-driven setup: provider(), [message.redis] over [redis], driver creation by name."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import runa_message as message
import runa_message_redis
from runa_message.errors import UnsupportedFeatureError
from runa_message_redis import RedisDriver

TIMEOUT = 5.0

pytestmark = pytest.mark.broker


def _driver_of(registry: message.Registry, broker: str) -> RedisDriver:
    runtime = registry._runtime[broker]
    assert isinstance(runtime.driver, RedisDriver)
    return runtime.driver


async def test_provider_reads_config_and_code_settings_win() -> None:
    topic = f"app{uuid.uuid4().hex[:8]}.created"
    config = message.Config.from_mapping(
        {
            "redis": {"url": "redis://127.0.0.1:6379/0", "prefix": "shared:"},
            "message": {"redis": {"prefix": "runa:app:", "publish_timeout": 3.0}},
        }
    )
    got: asyncio.Queue[message.Message[Any]] = asyncio.Queue()

    def module(registry: message.Registry) -> None:
        @registry.subscribe("audit", topic)
        async def handler(msg: message.Message[dict[str, Any]]) -> None:
            await got.put(msg)

    app = message.App(config)
    app.install(runa_message_redis.provider("default", "audit", publish_timeout=2.0))
    app.module(module)
    await app.freeze()
    try:
        registry = app.invoke(message.Registry)
        audit = _driver_of(registry, "audit")
        assert audit.settings.prefix == "runa:app:"  # [message.redis] over [redis]
        assert audit.settings.publish_timeout == 2.0  # code over config
        assert audit.settings.url == "redis://127.0.0.1:6379/0"  # from [redis]
        assert _driver_of(registry, "default").settings == audit.settings
        await registry.publish("audit", topic, {"ok": True})
        received = await asyncio.wait_for(got.get(), TIMEOUT)
        assert received.payload == {"ok": True}
        info = {b.name: b.driver for b in registry.info()}
        assert info == {"audit": "redis", "default": "redis"}
    finally:
        await app.shutdown()


async def test_group_fails_start_by_name() -> None:
    registry = message.Registry(
        message.Config.from_mapping({"message": {"brokers": {"default": {"driver": "redis"}}}})
    )
    registry.subscribe("default", "jobs.run", lambda m: None, group="workers")
    with pytest.raises(UnsupportedFeatureError):
        await registry.start()
    await registry.close()


async def test_info_and_errors_do_not_show_the_password() -> None:
    secret = "pa55-" + uuid.uuid4().hex[:6]
    registry = message.Registry(
        message.Config.from_mapping(
            {
                "message": {
                    "brokers": {"default": {"driver": "redis"}},
                    "redis": {"url": f"redis://u:{secret}@127.0.0.1:1/0", "publish_timeout": 0.2},
                }
            }
        )
    )
    infos = registry.validate()
    assert secret not in repr(infos)
    with pytest.raises(message.ConnectError) as info:
        await registry.start()
    assert secret not in str(info.value)
    await registry.close()
