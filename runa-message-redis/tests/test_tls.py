"""rediss:// against a private redis-server with a self-signed CA made for the test.

Needs ``openssl`` and a redis-server built with TLS (Debian's is); without them these
tests fail, saying so.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from runa_message import wire
from runa_message.errors import ConnectError
from runa_message.message import Envelope
from runa_message_redis import driver

TIMEOUT = 5.0
PASSWORD = "tls-secret-" + uuid.uuid4().hex[:8]

pytestmark = pytest.mark.broker


@attrs.frozen
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("openssl is not installed (it makes the test certificates)")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=runa-message test CA",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, extra in (
        ("server", "/CN=localhost", ["-extfile", "server.ext"]),
        ("client", "/CN=runa-message test client", []),
    ):
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", subject,
            cwd=folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", *extra,
            cwd=folder,
        )  # fmt: skip
    return Certs(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Certificates made once for this module's tests."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def tls_server(certs: Certs, private_redis_factory: Any) -> AsyncIterator[tuple[Any, Certs]]:
    """A redis-server with TLS only (no plain port), a password, and optional client certs."""
    server = private_redis_factory(
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "optional",
        "--requirepass", PASSWORD,
        tls=True,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(certs.ca))

    async def tls_ping() -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
        writer.close()

    try:
        await server.start(tls_ping)
    except BaseException:
        log = server.log.read_text() if server.log.exists() else ""
        pytest.fail(f"a TLS redis-server did not start (built without TLS?): {log[-300:]}")
    yield server, certs
    await server.stop()


async def _round_trip(**settings: Any) -> None:
    d = driver(**settings)
    await d.start()
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Handler:
            async def __call__(self, frame: Any, /, **_: Any) -> None:
                await got.put(frame)

            async def report(self, error: BaseException, data: bytes | None = None) -> None:
                raise AssertionError(error)

        await d.subscribe("secure.*", "c", None, Handler())
        sent = Envelope(uuid.uuid4().hex, "secure.hello", b"over TLS")
        await d.publish(sent.topic, sent)
        assert wire.decode(await asyncio.wait_for(got.get(), TIMEOUT)) == sent
    finally:
        await d.close()


async def test_rediss_with_the_ca(tls_server: tuple[Any, Certs]) -> None:
    server, certs = tls_server
    await _round_trip(
        url=f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0", tls_ca_file=str(certs.ca)
    )


async def test_rediss_with_a_client_certificate(tls_server: tuple[Any, Certs]) -> None:
    server, certs = tls_server
    await _round_trip(
        url=f"rediss://:{PASSWORD}@localhost:{server.port}/0",
        tls_ca_file=str(certs.ca),
        tls_cert_file=str(certs.client_cert),
        tls_key_file=str(certs.client_key),
    )


async def test_rediss_without_verification(tls_server: tuple[Any, Certs]) -> None:
    server, _certs = tls_server
    await _round_trip(url=f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0", tls_verify=False)


async def test_untrusted_certificate_is_refused_without_leaking_the_password(
    tls_server: tuple[Any, Certs],
) -> None:
    server, _certs = tls_server
    d = driver(url=f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0", publish_timeout=0.5)
    with pytest.raises(ConnectError, match="cannot connect") as info:
        await d.start()
    assert PASSWORD not in str(info.value)
    await d.close()


async def test_plain_redis_url_does_not_speak_to_a_tls_port(
    tls_server: tuple[Any, Certs],
) -> None:
    server, _certs = tls_server
    d = driver(url=f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", publish_timeout=0.5)
    with pytest.raises(ConnectError) as info:
        await d.start()
    assert PASSWORD not in str(info.value)
    await d.close()


async def test_a_refused_login_fails_start_at_once(tls_server: tuple[Any, Certs]) -> None:
    server, _certs = tls_server
    d = driver(url=f"rediss://:n0tit@127.0.0.1:{server.port}/0", tls_verify=False)
    with pytest.raises(ConnectError) as info:
        # Well before publish_timeout (5 s): a refusal is not retried.
        await asyncio.wait_for(d.start(), 3)
    assert "n0tit" not in str(info.value)
    await d.close()
