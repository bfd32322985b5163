"""TLS (mqtts://) and credentials, against private mosquitto servers made for each test.

The certificates are made with openssl in the test's temporary directory: a CA, and a
server certificate for 127.0.0.1 signed by it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_testkit import HOST, TIMEOUT, FrameHandler, Mosquitto, envelope, unique

from runa_message import wire
from runa_message.errors import ConfigError, ConnectError
from runa_message_mqtt import driver

pytestmark = pytest.mark.broker


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl") or "/usr/bin/openssl"
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path, *, host: str = HOST) -> dict[str, Path]:
    """A CA and a server certificate for ``host`` (an IP address or a name)."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=runa-message test CA",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={host}",
        cwd=directory,
    )  # fmt: skip
    kind = "IP" if host.replace(".", "").isdigit() else "DNS"
    (directory / "san.ext").write_text(f"subjectAltName = {kind}:{host}\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
        cwd=directory,
    )  # fmt: skip
    return {name: directory / f"{name}" for name in ("ca.crt", "server.crt", "server.key")}


@pytest.fixture
def tls_mosquitto(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    files = make_certificates(tmp_path)
    server = Mosquitto(
        tmp_path,
        f"cafile {files['ca.crt']}\ncertfile {files['server.crt']}\nkeyfile {files['server.key']}\n",
    )
    server.start()
    try:
        yield server, files["ca.crt"]
    finally:
        server.stop()


async def test_mqtts_with_a_private_ca(
    closing: list[object], tls_mosquitto: tuple[Mosquitto, Path]
) -> None:
    server, ca_file = tls_mosquitto
    instance = driver(url=f"mqtts://{HOST}:{server.port}", ca_file=str(ca_file))
    closing.append(instance)
    await instance.start()
    assert instance._connections[0]._tls
    topic = f"{unique()}.secure"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    for n in range(200):
        await instance.publish(topic, envelope(topic, str(n).encode()))
    frames = await handler.wait_for(200)
    payloads = [wire.decode(f).payload for f in frames if isinstance(f, bytes)]
    assert payloads == [str(n).encode() for n in range(200)]


async def test_mqtts_reconnects(
    closing: list[object], tls_mosquitto: tuple[Mosquitto, Path]
) -> None:
    server, ca_file = tls_mosquitto
    url = f"mqtts://{HOST}:{server.port}"
    instance = driver(url=url, ca_file=str(ca_file))
    closing.append(instance)
    await instance.start()
    topic = f"{unique()}.secure"
    handler = FrameHandler()
    await instance.subscribe(topic, "c", None, handler)
    server.stop()
    server.start()
    await instance.publish(topic, envelope(topic, b"after"))
    await handler.wait_for(1)


async def test_an_untrusted_certificate_is_refused_clearly(
    tls_mosquitto: tuple[Mosquitto, Path],
) -> None:
    server, _ca_file = tls_mosquitto
    instance = driver(url=f"mqtts://{HOST}:{server.port}", timeout=5.0)
    with pytest.raises(ConnectError, match=r"certificate not trusted.*ca_file"):
        await asyncio.wait_for(instance.start(), TIMEOUT)
    await instance.close()


async def test_a_certificate_for_another_name_needs_tls_insecure(
    closing: list[object], tmp_path: Path
) -> None:
    files = make_certificates(tmp_path, host="broker.example")
    server = Mosquitto(
        tmp_path,
        f"cafile {files['ca.crt']}\ncertfile {files['server.crt']}\nkeyfile {files['server.key']}\n",
    )
    server.start()
    try:
        url = f"mqtts://{HOST}:{server.port}"
        strict = driver(url=url, ca_file=str(files["ca.crt"]))
        with pytest.raises(ConnectError, match="certificate"):
            await asyncio.wait_for(strict.start(), TIMEOUT)
        relaxed = driver(url=url, ca_file=str(files["ca.crt"]), tls_insecure=True)
        closing.append(relaxed)
        await relaxed.start()
        topic = unique()
        handler = FrameHandler()
        await relaxed.subscribe(topic, "c", None, handler)
        await relaxed.publish(topic, envelope(topic))
        await handler.wait_for(1)
        await relaxed.close()
    finally:
        server.stop()


@pytest.fixture
def auth_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    passwords = tmp_path / "passwords"
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([binary, "-b", "-c", str(passwords), "alice", "s3cr3t"], check=True, timeout=30)
    server = Mosquitto(tmp_path, f"password_file {passwords}\n")
    server.config.write_text(
        server.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_credentials_from_the_url_or_the_settings(
    closing: list[object], auth_mosquitto: Mosquitto, version: str
) -> None:
    port = auth_mosquitto.port
    options: tuple[dict[str, Any], ...] = (
        {"url": f"mqtt://alice:s3cr3t@{HOST}:{port}"},
        {"url": f"mqtt://{HOST}:{port}", "username": "alice", "password": "s3cr3t"},
        {"url": f"mqtt://bob:wrong@{HOST}:{port}", "username": "alice", "password": "s3cr3t"},
    )
    for settings in options:
        instance = driver(version=version, **settings)
        closing.append(instance)
        await instance.start()
        await instance.close()
    wrong = driver(url=f"mqtt://alice:n0tit@{HOST}:{port}", version=version)
    with pytest.raises(ConnectError, match="refused") as info:
        await asyncio.wait_for(wrong.start(), TIMEOUT)
    assert "n0tit" not in str(info.value)
    await wrong.close()


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="url"):
        driver(url="mqtt+ws://127.0.0.1")
