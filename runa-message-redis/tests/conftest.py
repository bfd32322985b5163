"""Fixtures of the Redis driver tests.

Tests need the Redis server on 127.0.0.1:6379 and fail (never skip) when it is down. Each
test uses its own topics, so tests can share the server with other users.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from runa_message.message import Envelope
from runa_message.testing import free_port

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
TIMEOUT = 5.0


class Recorder:
    """A handler (the ``runa_message.driver.Handler`` protocol) that records every frame."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.frames: list[Envelope | bytes] = []
        self.reports: list[tuple[BaseException, bytes | None]] = []
        self.fail = fail
        self._changed = asyncio.Event()

    async def __call__(
        self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        self.frames.append(frame)
        self._changed.set()
        if self.fail is not None:
            raise self.fail

    async def report(self, error: BaseException, data: bytes | None = None) -> None:
        self.reports.append((error, data))

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Envelope | bytes]:
        """Wait until ``count`` frames arrived; return them."""

        async def wait() -> None:
            while len(self.frames) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.frames


@pytest.fixture
def recorder() -> type[Recorder]:
    """The :class:`Recorder` class."""
    return Recorder


@pytest.fixture
def topic() -> str:
    """A topic root no other test uses."""
    return f"test{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the shared server (the test fails if it is down)."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), TIMEOUT)
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"Redis is not running on {REDIS_HOST}:{REDIS_PORT}: {exc}")
    yield client
    await client.aclose()


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test may stop and restart."""

    def __init__(self, workdir: Path, *extra: str, tls: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{REDIS_HOST}:{self.port}/0"

    def args(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (it is needed for reconnect tests)")
        ports = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        return [
            binary,
            *ports,
            "--bind", REDIS_HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.log),
            *self.extra,
        ]  # fmt: skip

    async def start(self, ping: Any = None) -> None:
        """Start the server and wait until it answers."""
        self.process = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL)  # noqa: ASYNC220
        await self.wait_ready(ping)

    async def wait_ready(self, ping: Any = None) -> None:
        async def attempt() -> None:
            while True:
                if ping is not None:
                    with contextlib.suppress(OSError, Exception):
                        await ping()
                        return
                else:
                    with contextlib.suppress(OSError):
                        _reader, writer = await asyncio.open_connection(REDIS_HOST, self.port)
                        writer.close()
                        return
                assert self.process is not None
                if self.process.poll() is not None:
                    log = self.log.read_text() if self.log.exists() else ""
                    pytest.fail(f"redis-server exited: {log[-2000:]}")
                await asyncio.sleep(0.02)

        await asyncio.wait_for(attempt(), TIMEOUT)

    async def stop(self) -> None:
        """Stop the server (SIGTERM) and wait until it is gone."""
        if self.process is None:
            return
        self.process.terminate()
        await asyncio.wait_for(asyncio.to_thread(self.process.wait), TIMEOUT)
        self.process = None


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, stopped after the test."""
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def private_redis_factory(tmp_path: Path) -> Iterator[Any]:
    """Make :class:`PrivateRedis` servers with extra arguments; all are stopped after the test."""
    servers: list[PrivateRedis] = []

    def make(*extra: str, tls: bool = False) -> PrivateRedis:
        server = PrivateRedis(tmp_path, *extra, tls=tls)
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.process is not None:
            server.process.kill()
            server.process.wait(TIMEOUT)
