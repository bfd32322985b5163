"""Helpers of the MQTT driver's tests: a raw paho client, private Mosquitto servers.

The shared broker is Mosquitto on 127.0.0.1:1883; a test that needs it fails (never skips)
when it is down. Tests that stop a broker, or need TLS, start a private ``mosquitto`` on a
free port with a small config in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from runa_message.driver import Handler
from runa_message.message import Envelope
from runa_message.testing import free_port

HOST = "127.0.0.1"
PORT = 1883
URL = f"mqtt://{HOST}:{PORT}"
TIMEOUT = 10.0


def unique(label: str = "t") -> str:
    """A topic segment no other test run uses."""
    return f"{label}{uuid.uuid4().hex[:10]}"


class FrameHandler:
    """A tiny object implementing the driver's Handler protocol: records raw frames."""

    def __init__(self) -> None:
        self.frames: list[Envelope | bytes] = []
        self.reports: list[BaseException] = []
        self._changed = asyncio.Event()

    async def __call__(
        self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        self.frames.append(frame)
        self._changed.set()

    async def report(
        self, error: BaseException, data: bytes | None = None, *, outcome: str = "dropped"
    ) -> None:
        self.reports.append(error)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Envelope | bytes]:
        """Wait until ``count`` frames arrived; fail with what did arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.frames) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out waiting for {count} frames; got {len(self.frames)}: "
                    f"{self.frames[:5]!r}"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.frames


async def wait_total(handlers: list[FrameHandler], count: int, timeout: float = TIMEOUT) -> None:
    """Wait until ``handlers`` received ``count`` frames between them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum(len(h.frames) for h in handlers) < count:
        remaining = deadline - loop.time()
        if remaining <= 0:
            got = [len(h.frames) for h in handlers]
            raise AssertionError(f"timed out waiting for {count} frames; got {got}")
        for handler in handlers:
            handler._changed.clear()
        waits = [asyncio.ensure_future(h._changed.wait()) for h in handlers]
        await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()


def _is_handler(handler: Handler) -> Handler:
    return handler


_is_handler(FrameHandler())  # FrameHandler implements the protocol (checked by mypy)


class RawClient:
    """A plain paho client on its own network thread, for what the driver must interoperate
    with: publishing raw bytes, and reading what the driver published."""

    def __init__(self, host: str = HOST, port: int = PORT, **options: Any) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, protocol=options.pop("protocol", mqtt.MQTTv5), **options
        )
        self.received: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not connected.wait(TIMEOUT):
            raise AssertionError(f"raw paho client could not connect to {host}:{port}")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._arrived:
            self.received.append(message)
            self._arrived.notify_all()

    def publish(self, topic: str, data: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, data, qos=qos)
        info.wait_for_publish(TIMEOUT)

    def subscribe(self, mqtt_filter: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(mqtt_filter, qos)
        if not done.wait(TIMEOUT):
            raise AssertionError(f"SUBACK for {mqtt_filter!r} did not arrive")

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"raw client got {len(self.received)} of {count}")
                self._arrived.wait(remaining)
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Mosquitto:
    """A private mosquitto on a free loopback port; ``stop()``/``start()`` to make outages."""

    def __init__(self, directory: Path, extra: str = "", port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.config = directory / f"mosquitto-{self.port}.conf"
        # As root, mosquitto would switch to its own user, which cannot read the test's files.
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"{user}{extra}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise AssertionError(f"private mosquitto exited: {error}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"private mosquitto did not listen on {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT)
        if process is not None and process.stderr is not None:
            process.stderr.close()


def envelope(topic: str, payload: bytes = b"x", **headers: Any) -> Envelope:
    """An envelope for publishing through a driver directly."""
    return Envelope(uuid.uuid4().hex, topic, payload, headers)
