"""A loopback TCP proxy that tests use to cut a driver off its broker and let it back.

.. code-block:: python

    async with TcpProxy("127.0.0.1", 6379) as proxy:
        driver = RedisDriver(RedisSettings(url=f"redis://127.0.0.1:{proxy.port}"))
        ...
        async with proxy.down():      # every connection aborted, new ones refused
            ...                       # the broker is unreachable in here
        ...                           # reachable again: the driver reconnects

The proxy listens on loopback only. Leaving the ``async with`` block (or :meth:`TcpProxy.close`)
stops the listener, aborts every connection and ends every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import AsyncIterator
from types import TracebackType

__all__ = ["TcpProxy"]

log = logging.getLogger("runa_message.testing.proxy")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_CHUNK = 65536
#: How long :meth:`TcpProxy.restore` keeps trying to listen on its port again.
_REBIND_SECONDS = 2.0


class TcpProxy:
    """Forward loopback TCP connections to ``target_host:target_port``, with faults on demand.

    - :meth:`cut` aborts every open connection (both sides see a reset), as a broker crash does.
    - :meth:`refuse` stops listening, so new connections are refused, as a broker that is down;
      with ``seconds`` it restores by itself after that long.
    - :meth:`restore` listens again on the same port.
    - :meth:`down` is ``cut`` + ``refuse`` for the body of an ``async with``, then ``restore``.

    ``port`` is the proxy's own port (chosen by the system unless given); connect the driver
    under test to ``address`` instead of the broker's.
    """

    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if host not in _LOOPBACK:
            raise ValueError(f"TcpProxy listens on loopback only, not {host!r}: use 127.0.0.1")
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._port = port
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._restore_timer: asyncio.TimerHandle | None = None
        self._started = False
        self._closed = False
        #: How many connections the proxy has accepted so far (a reconnect adds one).
        self.accepted = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "refusing" if self.refusing else "open"
        return (
            f"<TcpProxy {self.host}:{self._port} -> {self.target_host}:{self.target_port} "
            f"{state}, {len(self._connections)} connections>"
        )

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if not self._started:
            raise RuntimeError("TcpProxy is not started: use `async with TcpProxy(...) as proxy`")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the proxy, for the driver under test."""
        return (self.host, self.port)

    @property
    def refusing(self) -> bool:
        """Whether new connections are refused right now."""
        return self._started and self._listener is None

    @property
    def connections(self) -> int:
        """How many proxied connections are open."""
        return len(self._connections)

    async def start(self) -> None:
        """Start listening; ``async with`` does this."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("TcpProxy is closed; make a new one")
        self._listen()
        self._started = True

    async def close(self) -> None:
        """Stop listening, abort every connection and end every task; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        await self._stop_listening()
        await self.cut()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def cut(self) -> None:
        """Abort every open connection; new connections are still accepted unless refused."""
        connections = list(self._connections)
        self._connections.clear()
        for connection in connections:
            connection.abort()
        for connection in connections:
            await connection.wait_closed()

    def refuse(self, seconds: float | None = None) -> None:
        """Refuse new connections (open ones stay); after ``seconds``, restore by itself."""
        self._require_open()
        self._cancel_timer()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            if self._accepting is not None:
                self._accepting.cancel()
                self._accepting = None
            listener.close()
        if seconds is not None:
            self._restore_timer = asyncio.get_running_loop().call_later(seconds, self.restore)

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        if self._closed:
            return
        self._cancel_timer()
        if self._listener is None:
            self._listen()

    @contextlib.asynccontextmanager
    async def down(self) -> AsyncIterator[TcpProxy]:
        """Cut every connection and refuse new ones for the body of the block, then restore."""
        self.refuse()
        await self.cut()
        try:
            yield self
        finally:
            self.restore()

    def _require_open(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("TcpProxy is not running: use `async with TcpProxy(...) as proxy`")

    def _cancel_timer(self) -> None:
        if self._restore_timer is not None:
            self._restore_timer.cancel()
            self._restore_timer = None

    def _listen(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        host = "127.0.0.1" if self.host == "localhost" else self.host
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _REBIND_SECONDS
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, self._port))
            except OSError as exc:
                sock.close()
                # Rebinding the same port right after closing it can race with the kernel.
                if exc.errno != errno.EADDRINUSE or not self._port or loop.time() > deadline:
                    raise
                continue
            break
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._accepting = loop.create_task(self._accept(sock), name=f"TcpProxy:{self._port}")

    async def _stop_listening(self) -> None:
        task, self._accepting = self._accepting, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except OSError:
                if self._listener is not listener:
                    return
                raise
            self.accepted += 1
            connection = _Connection(self, client)
            self._connections.add(connection)
            connection.start()


class _Connection:
    """One client connection and its connection to the target, pumped both ways."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.writers: list[asyncio.StreamWriter] = []
        self.task: asyncio.Task[None] | None = None
        self.aborted = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def abort(self) -> None:
        self.aborted = True
        for writer in self.writers:
            _abort(writer)
        if not self.writers:
            _reset(self.client)
        if self.task is not None:
            self.task.cancel()

    async def wait_closed(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        try:
            client_reader, client_writer = await asyncio.open_connection(sock=self.client)
            self.writers.append(client_writer)
            try:
                target_reader, target_writer = await asyncio.open_connection(
                    self.proxy.target_host, self.proxy.target_port
                )
            except OSError as exc:
                log.debug("TcpProxy: target unreachable: %s", exc)
                client_writer.transport.abort()
                return
            self.writers.append(target_writer)
            if self.aborted:
                self.abort()
                return
            pumps = [
                asyncio.ensure_future(_pump(client_reader, target_writer)),
                asyncio.ensure_future(_pump(target_reader, client_writer)),
            ]
            try:
                await asyncio.gather(*pumps)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for writer in self.writers:
                writer.transport.abort()
            self.proxy._connections.discard(self)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        # One side went away: end both, as a real peer would see.
        writer.transport.abort()


_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0 makes close() send a reset instead of a graceful FIN, as a crash does.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()
