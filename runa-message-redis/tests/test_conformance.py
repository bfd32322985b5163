"""The runa-message conformance suite, run against the real Redis server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from runa_message.driver import Driver
from runa_message.testing import DriverConformance
from runa_message.testing.conformance import DriverFactory, SendFrame
from runa_message_redis import RedisDriver, driver
from runa_message_redis.settings import CAPABILITIES

HOST, PORT = "127.0.0.1", 6379


@pytest.mark.broker
class TestRedisConformance(DriverConformance):
    capabilities = CAPABILITIES
    network = True
    max_deliveries = None

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        def make(
            *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
        ) -> Driver:
            host, port = address or (HOST, PORT)
            settings: dict[str, Any] = {"url": f"redis://{host}:{port}/0"}
            if publish_timeout is not None:
                settings["publish_timeout"] = publish_timeout
            made: RedisDriver = driver(**settings)
            return made

        return make

    @pytest.fixture
    def broker_address(self) -> tuple[str, int]:
        return (HOST, PORT)

    @pytest.fixture
    async def send_frame(self) -> AsyncIterator[SendFrame]:
        client = aioredis.Redis(host=HOST, port=PORT)

        async def send(topic: str, data: bytes) -> None:
            await client.publish(f"runa:message:{topic}", data)

        yield send
        await client.aclose()
