"""The AMQP driver runs the conformance suite against the local RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from runa_message.testing import DriverConformance
from runa_message.testing.conformance import DriverFactory, SendFrame
from runa_message_amqp import AmqpDriver
from runa_message_amqp.settings import CAPABILITIES

pytestmark = pytest.mark.broker

HOST, PORT = "127.0.0.1", 5672


class TestAmqpConformance(DriverConformance):
    capabilities = CAPABILITIES
    network = True
    max_deliveries = 4  # the first delivery and max_retries=3 more

    @pytest.fixture
    def driver_factory(self, topology: Any) -> DriverFactory:
        def make(
            *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
        ) -> AmqpDriver:
            host, port = address or (HOST, PORT)
            options: dict[str, object] = {"url": f"amqp://guest:guest@{host}:{port}/"}
            if publish_timeout is not None:
                options["publish_timeout"] = publish_timeout
            return topology.driver(**options)

        return make

    @pytest.fixture
    def broker_address(self) -> tuple[str, int]:
        return (HOST, PORT)

    @pytest.fixture
    async def send_frame(
        self, topology: Any, admin: AbstractConnection
    ) -> AsyncIterator[SendFrame]:
        channel = await admin.channel()
        exchange = await channel.declare_exchange(
            topology.exchange,
            aio_pika.ExchangeType.TOPIC,
            durable=True,
        )

        async def send(topic: str, data: bytes) -> None:
            routing_key = topic.replace("/", ".").replace(":", ".")
            await exchange.publish(aio_pika.Message(data), routing_key=routing_key)

        yield send
        await channel.close()
