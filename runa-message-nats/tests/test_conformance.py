"""The runa-message conformance suite, run against NatsDriver on the shared nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import nats
import pytest
from nats_testkit import NATS_HOST, NATS_PORT

from runa_message.driver import Capabilities
from runa_message.testing import DriverConformance
from runa_message_nats import NatsDriver, driver
from runa_message_nats.driver import subject_of
from runa_message_nats.settings import CAPABILITIES

pytestmark = pytest.mark.broker


class TestNatsConformance(DriverConformance):
    capabilities: ClassVar[Capabilities | None] = CAPABILITIES
    network: ClassVar[bool] = True
    max_deliveries: ClassVar[int | None] = None

    @pytest.fixture
    def driver_factory(self, nats_url: str) -> Any:
        def make(
            *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
        ) -> NatsDriver:
            url = f"nats://{address[0]}:{address[1]}" if address else nats_url
            settings: dict[str, Any] = {"url": url, "reconnect_time_wait": 0.1}
            if publish_timeout is not None:
                settings["publish_timeout"] = publish_timeout
            return driver(**settings)

        return make

    @pytest.fixture
    def broker_address(self) -> tuple[str, int]:
        return (NATS_HOST, NATS_PORT)

    @pytest.fixture
    async def send_frame(self, nats_url: str) -> AsyncIterator[Any]:
        nc = await nats.connect(nats_url)

        async def send(topic: str, data: bytes) -> None:
            await nc.publish(subject_of("runa.message.", topic), data)
            await nc.flush()

        yield send
        await nc.close()
