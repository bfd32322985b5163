"""The memory driver runs the conformance suite, like every network driver does."""

from __future__ import annotations

import pytest

from runa_message import Capabilities, MemoryDriver
from runa_message.testing import DriverConformance
from runa_message.testing.conformance import DriverFactory, SendFrame


class TestMemoryConformance(DriverConformance):
    capabilities = Capabilities(wildcards=True, groups=True)
    network = False

    @pytest.fixture
    def memory_driver(self) -> MemoryDriver:
        # One MemoryDriver is one broker: every "process" of a case shares it.
        return MemoryDriver()

    @pytest.fixture
    def driver_factory(self, memory_driver: MemoryDriver) -> DriverFactory:
        def make(
            *, address: tuple[str, int] | None = None, publish_timeout: float | None = None
        ) -> MemoryDriver:
            return memory_driver

        return make

    @pytest.fixture
    def send_frame(self, memory_driver: MemoryDriver) -> SendFrame:
        return memory_driver.publish_frame
