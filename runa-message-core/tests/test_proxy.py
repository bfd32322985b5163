"""TcpProxy: forwarding, cut, refuse, restore, and everything stopping by itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from runa_message.testing import TcpProxy

TIMEOUT = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield ("127.0.0.1", server.sockets[0].getsockname()[1])


async def _roundtrip(port: int, data: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)
    finally:
        writer.close()


async def _is_closed(reader: asyncio.StreamReader) -> bool:
    """True when the peer closed or reset the connection."""
    try:
        return await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
    except (ConnectionError, OSError):
        return True


async def test_forwards_both_ways(echo_server: tuple[str, int]) -> None:
    async with TcpProxy(*echo_server) as proxy:
        assert proxy.address == ("127.0.0.1", proxy.port)
        assert proxy.port != echo_server[1]
        assert await _roundtrip(proxy.port) == b"ping"
        big = bytes(range(256)) * 4096  # 1 MiB, several reads and writes each way
        assert await _roundtrip(proxy.port, big) == big
        assert proxy.accepted == 2


async def test_cut_aborts_open_connections_and_accepts_new_ones(
    echo_server: tuple[str, int],
) -> None:
    async with TcpProxy(*echo_server) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"x"
        assert proxy.connections == 1
        await proxy.cut()
        assert proxy.connections == 0
        assert await _is_closed(reader)
        writer.close()
        assert await _roundtrip(proxy.port) == b"ping"


async def test_refuse_then_restore_on_the_same_port(echo_server: tuple[str, int]) -> None:
    async with TcpProxy(*echo_server) as proxy:
        port = proxy.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        proxy.refuse()
        assert proxy.refusing
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        # Refusing new connections leaves the open ones alone.
        writer.write(b"still")
        assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"still"
        writer.close()
        proxy.restore()
        assert not proxy.refusing
        assert proxy.port == port
        assert await _roundtrip(port) == b"ping"


async def test_refuse_for_a_while_restores_by_itself(echo_server: tuple[str, int]) -> None:
    async with TcpProxy(*echo_server) as proxy:
        proxy.refuse(seconds=0.05)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while proxy.refusing:
            assert loop.time() < deadline, "the proxy did not restore by itself"
            await asyncio.sleep(0.01)  # polling a state flag, not synchronising a message
        assert await _roundtrip(proxy.port) == b"ping"


async def test_down_cuts_refuses_and_restores(echo_server: tuple[str, int]) -> None:
    async with TcpProxy(*echo_server) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        async with proxy.down():
            assert await _is_closed(reader)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.close()
        assert not proxy.refusing
        assert await _roundtrip(proxy.port) == b"ping"


async def test_close_stops_everything(echo_server: tuple[str, int]) -> None:
    before = asyncio.all_tasks()
    proxy = TcpProxy(*echo_server)
    async with proxy:
        port = proxy.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), TIMEOUT)
        proxy.refuse(seconds=60)  # a pending restore is cancelled by close
    assert await _is_closed(reader)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert asyncio.all_tasks() <= before
    await proxy.close()  # idempotent
    proxy.restore()  # harmless once closed
    assert "closed" in repr(proxy)


async def test_unreachable_target_closes_the_client() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    async with TcpProxy("127.0.0.1", free_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _is_closed(reader)
        writer.close()


async def test_loopback_only_and_started_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        TcpProxy("127.0.0.1", 1, host="0.0.0.0")
    proxy = TcpProxy("127.0.0.1", 1)
    with pytest.raises(RuntimeError, match="not started"):
        _ = proxy.port
    with pytest.raises(RuntimeError, match="not running"):
        proxy.refuse()
