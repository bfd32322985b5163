"""Fixtures for the NATS driver tests: the shared broker, private servers, log waiting."""

from __future__ import annotations

import logging
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The helpers module sits next to this file (tests are imported with importlib mode).
sys.path.insert(0, str(Path(__file__).parent))

from nats_testkit import NATS_HOST, NATS_PORT, NATS_URL, LogWaiter, PrivateServer


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The shared broker; a test that needs it fails (never skips) when it is down."""
    try:
        with socket.create_connection((NATS_HOST, NATS_PORT), timeout=2):
            pass
    except OSError as exc:
        pytest.fail(f"NATS is not running on {NATS_HOST}:{NATS_PORT} ({exc}): start nats-server")
    return NATS_URL


@pytest.fixture
def prefix() -> str:
    """A subject prefix of this test alone, so parallel runs on the shared broker never mix."""
    return f"t{uuid.uuid4().hex[:12]}."


@pytest.fixture
async def private_server() -> AsyncIterator[Callable[..., Any]]:
    """``await private_server(*args)``: start a nats-server of this test (killed afterwards)."""
    servers: list[PrivateServer] = []

    async def start(*args: str, port: int | None = None) -> PrivateServer:
        server = PrivateServer(*args, port=port)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.kill()


@pytest.fixture
def driver_log() -> Iterator[LogWaiter]:
    """Every record of ``runa_message.nats``, and futures that wake on a given text."""
    logger = logging.getLogger("runa_message.nats")
    waiter = LogWaiter()
    level = logger.level
    logger.addHandler(waiter)
    logger.setLevel(logging.DEBUG)
    yield waiter
    logger.removeHandler(waiter)
    logger.setLevel(level)
