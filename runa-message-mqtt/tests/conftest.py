"""Fixtures of the MQTT driver's tests (helpers are in ``mqtt_testkit``).

The shared broker is Mosquitto on 127.0.0.1:1883; a test that needs it fails (never skips)
when it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

# The helpers module sits next to this file (tests are imported with importlib mode).
sys.path.insert(0, str(Path(__file__).parent))

from mqtt_testkit import TIMEOUT, Mosquitto, RawClient


@pytest.fixture
def raw() -> Iterator[RawClient]:
    """A raw paho client connected to the shared broker."""
    client = RawClient()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private, started mosquitto (stopped at the end of the test)."""
    server = Mosquitto(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Things with an async ``close()`` to close at the end of the test, in reverse order."""
    things: list[Any] = []
    try:
        yield things
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(thing.close(), TIMEOUT)
