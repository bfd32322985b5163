"""The conformance suite against Mosquitto on 127.0.0.1:1883, over MQTT 5 and MQTT 3.1.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import ClassVar

import pytest
from mqtt_testkit import HOST, PORT, RawClient

from runa_message.driver import Capabilities
from runa_message.testing import DriverConformance
from runa_message.testing.conformance import DriverFactory, SendFrame
from runa_message_mqtt import MqttDriver, MqttSettings

pytestmark = pytest.mark.broker

CAPABILITIES = Capabilities(
    wildcards=True,
    groups=True,
    ack=False,
    persistent=False,
    max_topic_length=65535 - len("runa/message/"),
)


class TestMqttConformance(DriverConformance):
    """MQTT 5 (the default): one connection, subscription identifiers route every frame."""

    capabilities = CAPABILITIES
    network = True
    max_deliveries = None
    timeout: ClassVar[float] = 15.0
    version: ClassVar[str] = "5"

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        version = self.version

        def make(
            *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
        ) -> MqttDriver:
            host, port = address or (HOST, PORT)
            settings = MqttSettings(
                url=f"mqtt://{host}:{port}",
                version=version,
                publish_timeout=publish_timeout if publish_timeout is not None else 5.0,
            )
            return MqttDriver(settings)

        return make

    @pytest.fixture
    def broker_address(self) -> tuple[str, int]:
        return (HOST, PORT)

    @pytest.fixture
    def send_frame(self) -> Iterator[SendFrame]:
        client = RawClient()

        async def send(topic: str, data: bytes) -> None:
            mqtt_topic = "runa/message/" + topic.replace(".", "/").replace(":", "/")
            await asyncio.to_thread(client.publish, mqtt_topic, data)

        try:
            yield send
        finally:
            client.close()


class TestMqtt311Conformance(TestMqttConformance):
    """MQTT 3.1.1: overlapping filters get connections of their own."""

    version: ClassVar[str] = "3.1.1"
