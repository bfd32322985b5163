"""The machine, the interpreter, library versions and broker server versions of a run."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

from .contenders import ENDPOINTS, reachable, url

__all__ = ["collect"]

DISTRIBUTIONS = (
    "runa-message-core",
    "runa-message-redis",
    "runa-message-nats",
    "runa-message-amqp",
    "runa-message-mqtt",
    "faststream",
    "broadcaster",
    "redis",
    "nats-py",
    "aio-pika",
    "aiormq",
    "paho-mqtt",
    "aiomqtt",
    "zmqtt",
    "pydantic",
    "fast-depends",
    "attrs",
    "cattrs",
    "orjson",
    "hiredis",
    "uvloop",
)


def _cpu() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory() -> int | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


async def _server_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = dict.fromkeys(ENDPOINTS)

    async def redis() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url("redis"))
        try:
            versions["redis"] = "Redis " + str((await client.info("server"))["redis_version"])
        finally:
            await client.aclose()

    async def nats() -> None:
        import nats as nats_py

        client = await nats_py.connect(url("nats"))
        try:
            versions["nats"] = f"nats-server {client._server_info.get('version')}"
        finally:
            await client.close()

    async def amqp() -> None:
        import aio_pika

        connection = await aio_pika.connect(url("amqp"))
        try:
            props = connection.transport.connection.server_properties  # type: ignore[union-attr]
            product, version = (
                value.decode() if isinstance(value, bytes) else str(value)
                for value in (props.get("product"), props.get("version"))
            )
            versions["amqp"] = f"{product} {version}"
        finally:
            await connection.close()

    def mqtt() -> None:
        with contextlib.suppress(Exception):
            out = subprocess.run(
                ["mosquitto", "-h"], capture_output=True, text=True, timeout=5, check=False
            )
            first = (out.stdout or out.stderr).splitlines()[0]
            versions["mqtt"] = first.strip()

    for name, probe in (("redis", redis), ("nats", nats), ("amqp", amqp)):
        if reachable(name):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(probe(), 5)
    if reachable("mqtt"):
        mqtt()
    return versions


async def collect() -> dict[str, Any]:
    """Everything a reader needs to place the numbers."""
    loop = asyncio.get_running_loop()
    return {
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "memory_bytes": _memory(),
            "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "event_loop": f"{type(loop).__module__}.{type(loop).__name__}",
        "versions": _versions(),
        "servers": await _server_versions(),
    }
