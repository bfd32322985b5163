"""Helpers of the NATS driver tests: a recording handler, private servers, certificates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from runa_message import wire
from runa_message.errors import DecodeError
from runa_message.message import Envelope
from runa_message.testing import free_port

NATS_HOST = "127.0.0.1"
NATS_PORT = 4222
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"
WAIT = 10.0


class Recorder:
    """A Handler (the registry's side of the contract) that records frames and reports.

    With ``decode=True`` it decodes frames and raises DecodeError for non-envelopes, as the
    registry does.
    """

    def __init__(self, *, decode: bool = False) -> None:
        self.frames: asyncio.Queue[Envelope | bytes] = asyncio.Queue()
        self.reports: asyncio.Queue[tuple[BaseException, bytes | None]] = asyncio.Queue()
        self.decode = decode
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def __call__(
        self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.decode and isinstance(frame, bytes):
            try:
                wire.decode(frame)
            except DecodeError as exc:
                await self.reports.put((exc, frame))
                raise
        await self.frames.put(frame)

    async def report(self, error: BaseException, data: bytes | None = None) -> None:
        await self.reports.put((error, data))

    async def next(self, timeout: float = WAIT) -> Envelope | bytes:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def envelope(self, timeout: float = WAIT) -> Envelope:
        frame = await self.next(timeout)
        assert isinstance(frame, bytes), f"a network driver hands over bytes, got {frame!r}"
        return wire.decode(frame)

    async def next_report(self, timeout: float = WAIT) -> tuple[BaseException, bytes | None]:
        return await asyncio.wait_for(self.reports.get(), timeout)

    async def topics_until(self, *ids: str, timeout: float = WAIT) -> list[str]:
        """Collect envelopes until every one of ``ids`` came; return every topic seen."""
        wanted = set(ids)
        topics = []

        async def collect() -> None:
            while wanted:
                envelope = await self.envelope(timeout)
                wanted.discard(envelope.id)
                topics.append(envelope.topic)

        await asyncio.wait_for(collect(), timeout)
        return topics


def envelope(topic: str, payload: bytes = b"{}", id_: str | None = None) -> Envelope:
    return Envelope(id_ or uuid.uuid4().hex, topic, payload, {"content-type": "application/json"})


class PrivateServer:
    """A nats-server of one test on a free port; ``kill()`` and ``start()`` again on that port."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        if shutil.which("nats-server") is None:
            pytest.fail("nats-server is not on PATH: install it to run the NATS driver tests")
        self.args = args
        self.port = port or free_port()
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (NATS_HOST, self.port)

    def url(self, scheme: str = "nats", credentials: str = "") -> str:
        return f"{scheme}://{credentials}{NATS_HOST}:{self.port}"

    async def start(self) -> None:
        process = await asyncio.create_subprocess_exec(
            "nats-server",
            "-a",
            NATS_HOST,
            "-p",
            str(self.port),
            *self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.process = process
        assert process.stderr is not None
        ready = asyncio.get_running_loop().create_future()
        lines: list[bytes] = []

        async def read(stream: asyncio.StreamReader) -> None:
            # Reads the log to its end, so the server never blocks on a full pipe.
            async for line in stream:
                lines.append(line)
                if b"Server is ready" in line and not ready.done():
                    ready.set_result(None)
            if not ready.done():
                ready.set_exception(RuntimeError(b"".join(lines[-5:]).decode()))

        self._reader = asyncio.ensure_future(read(process.stderr))
        try:
            await asyncio.wait_for(ready, WAIT)
        except BaseException:
            await self.kill()
            raise

    async def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, WAIT)
            self._reader = None


class LogWaiter(logging.Handler):
    """Wakes a test when the driver logs a line holding some text (no sleeping)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        text = record.getMessage()
        for needle, future in list(self._waiters):
            if needle in text and not future.done():
                future.set_result(None)

    def expect(self, needle: str) -> asyncio.Future[None]:
        """A future done at the next record holding ``needle`` (call before causing it)."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((needle, future))
        return future

    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not on PATH: install it to run the TLS test")
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=runa test CA",
        "-keyout", ca_key, "-out", ca_cert)  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key,
        "-out", csr)  # fmt: skip
    run("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "1", "-extfile", ext, "-out", cert)  # fmt: skip
    return {"ca": ca_cert, "cert": cert, "key": key}
