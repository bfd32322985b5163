"""Connection faults, authentication, TLS and cluster URLs (TcpProxy and private nats-servers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats_testkit import (
    NATS_HOST,
    NATS_PORT,
    LogWaiter,
    Recorder,
    envelope,
    make_certificates,
)

from runa_message import wire
from runa_message.errors import ConfigError, ConnectError, MessageError, PublishError
from runa_message.testing import TcpProxy
from runa_message_nats import NatsDriver, driver

pytestmark = pytest.mark.broker

FAST = {"reconnect_time_wait": 0.1, "connect_timeout": 5.0}


@pytest.fixture
async def proxy(nats_url: str) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(NATS_HOST, NATS_PORT) as running:
        yield running


@pytest.fixture
async def make(prefix: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[NatsDriver] = []

    async def build(url: Any, **settings: Any) -> NatsDriver:
        settings.setdefault("prefix", prefix)
        for key, value in FAST.items():
            settings.setdefault(key, value)
        instance = driver(url=url, **settings)
        made.append(instance)
        await instance.start()
        return instance

    yield build
    for instance in made:
        await instance.close()


def via(proxy: TcpProxy) -> str:
    return f"nats://{proxy.host}:{proxy.port}"


async def test_subscriptions_are_restored_after_a_cut(
    make: Callable[..., Any], proxy: TcpProxy, nats_url: str, driver_log: LogWaiter
) -> None:
    subscriber = await make(via(proxy))
    publisher = await make(nats_url)
    rec = Recorder()
    await subscriber.subscribe("user.#", "c", None, rec)
    await subscriber.subscribe("job", "w", "workers", rec)
    reconnected = driver_log.expect("reconnected to NATS")
    await proxy.cut()
    await asyncio.wait_for(reconnected, 10)
    for topic in ("user", "user.a.b", "job"):
        sent = envelope(topic)
        await publisher.publish(topic, sent)
        assert (await rec.envelope()).id == sent.id
    assert proxy.accepted == 2


async def test_publish_during_an_outage_raises_after_publish_timeout(
    make: Callable[..., Any], proxy: TcpProxy, driver_log: LogWaiter
) -> None:
    publisher = await make(via(proxy), publish_timeout=0.3)
    lost = driver_log.expect("connection lost")
    async with proxy.down():
        await asyncio.wait_for(lost, 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PublishError, match=r"unreachable.*within 0.3s.*not sent"):
            await publisher.publish("a", envelope("a"))
        assert 0.25 <= loop.time() - started < 3


async def test_publish_waits_for_a_short_outage_then_goes_out(
    make: Callable[..., Any], proxy: TcpProxy, nats_url: str, driver_log: LogWaiter
) -> None:
    publisher = await make(via(proxy), publish_timeout=10.0)
    subscriber = await make(nats_url)
    rec = Recorder()
    await subscriber.subscribe("a", "c", None, rec)
    lost = driver_log.expect("connection lost")
    proxy.refuse()
    await proxy.cut()
    await asyncio.wait_for(lost, 10)
    sent = envelope("a")
    publishing = asyncio.ensure_future(publisher.publish("a", sent))
    await asyncio.sleep(0)  # let the publish start waiting while the broker is unreachable
    assert not publishing.done()
    proxy.restore()
    await asyncio.wait_for(publishing, 10)
    assert (await rec.envelope()).id == sent.id


async def test_injected_client_publish_waits_at_most_publish_timeout(
    proxy: TcpProxy, prefix: str
) -> None:
    lost, back = asyncio.Event(), asyncio.Event()

    async def disconnected() -> None:
        lost.set()

    async def reconnected() -> None:
        back.set()

    nc = await nats.connect(
        via(proxy),
        reconnect_time_wait=0.1,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
    )
    try:
        d = NatsDriver(driver(prefix=prefix, publish_timeout=0.3).settings, client=nc)
        await d.start()
        async with proxy.down():
            await asyncio.wait_for(lost.wait(), 10)
            with pytest.raises(PublishError):
                await d.publish("a", envelope("a"))
        await asyncio.wait_for(back.wait(), 10)
        await d.publish("a", envelope("a"))
        await d.close()
        assert nc.is_connected
    finally:
        await nc.close()


async def test_start_fails_when_nats_is_unreachable(prefix: str) -> None:
    async with TcpProxy(NATS_HOST, NATS_PORT) as down:
        down.refuse()
        d = driver(url=via(down), connect_timeout=0.5, reconnect_time_wait=0.1, prefix=prefix)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectError, match=r"cannot connect to NATS .* within 0.5s"):
            await d.start()
        assert loop.time() - started < 3
        await d.close()


async def test_user_password_auth_and_no_secret_leaks(
    private_server: Callable[..., Any],
    make: Callable[..., Any],
    driver_log: LogWaiter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await private_server("--user", "alice", "--pass", "s3cret-pw")
    good = await make(server.url(), user="alice", password="s3cret-pw")
    rec = Recorder()
    await good.subscribe("a", "c", None, rec)
    await good.publish("a", envelope("a"))
    await rec.next()
    assert "s3cret-pw" not in repr(good)
    in_url = await make(server.url(credentials="alice:s3cret-pw@"))
    assert "s3cret-pw" not in repr(in_url)

    bad = driver(url=server.url(), user="alice", password="wrong-pw-123", connect_timeout=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectError, match=r"(?i)authorization") as info:
        await bad.start()
    assert loop.time() - started < 3  # refused at once, no waiting for connect_timeout
    assert "wrong-pw-123" not in str(info.value)
    bad_url = driver(url=server.url(credentials="alice:wrong-pw-456@"), connect_timeout=5.0)
    with pytest.raises(ConnectError) as info:
        await bad_url.start()
    assert "wrong-pw-456" not in str(info.value)
    assert "alice:***@" in str(info.value)
    logged = driver_log.text() + caplog.text
    for secret in ("s3cret-pw", "wrong-pw-123", "wrong-pw-456"):
        assert secret not in logged


async def test_token_auth(private_server: Callable[..., Any], make: Callable[..., Any]) -> None:
    server = await private_server("--auth", "tok-123456")
    d = await make(server.url(), token="tok-123456")
    rec = Recorder()
    await d.subscribe("a", "c", None, rec)
    await d.publish("a", envelope("a"))
    await rec.next()
    assert "tok-123456" not in repr(d)
    with pytest.raises(ConnectError):
        await driver(url=server.url(), token="nope", connect_timeout=2.0).start()


async def test_missing_creds_file_is_a_config_error(tmp_path: Path) -> None:
    d = driver(creds_file=str(tmp_path / "missing.creds"))
    with pytest.raises(ConfigError, match="creds_file"):
        await d.start()


async def test_refused_subscription_raises(
    private_server: Callable[..., Any], make: Callable[..., Any], tmp_path: Path
) -> None:
    config = tmp_path / "nats.conf"
    config.write_text(
        'authorization { users = [ { user: "u", password: "p", permissions: { '
        'subscribe: { deny: ["runa.message.secret.>"] } } } ] }\n'
    )
    server = await private_server("-c", str(config))
    d = await make(server.url(), user="u", password="p", prefix="runa.message.")
    await d.subscribe("open.*", "c", None, Recorder())
    with pytest.raises(MessageError, match="refused the subscription"):
        await d.subscribe("secret.x", "c", None, Recorder())


async def test_tls_with_a_self_signed_certificate(
    private_server: Callable[..., Any], make: Callable[..., Any], tmp_path: Path
) -> None:
    files = make_certificates(tmp_path)
    server = await private_server(
        "--tls", "--tlscert", str(files["cert"]), "--tlskey", str(files["key"])
    )
    d = await make(server.url("tls"), tls_ca_file=str(files["ca"]))
    rec = Recorder()
    await d.subscribe("secure.*", "c", None, rec)
    sent = envelope("secure.x")
    await d.publish("secure.x", sent)
    assert (await rec.envelope()).id == sent.id
    assert d._nc is not None
    assert d._nc._transport is not None

    untrusted = driver(url=server.url("tls"), connect_timeout=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectError, match=r"(?i)certificate"):
        await untrusted.start()
    assert loop.time() - started < 3  # a TLS failure does not wait for connect_timeout


async def test_cluster_urls_fail_over_to_the_next_server(
    private_server: Callable[..., Any], make: Callable[..., Any], driver_log: LogWaiter
) -> None:
    first, second = await private_server(), await private_server()
    d = await make([first.url(), second.url()])
    rec = Recorder()
    await d.subscribe("a.#", "c", None, rec)
    assert d._nc is not None
    assert d._nc.connected_url is not None
    current = first if d._nc.connected_url.port == first.port else second
    reconnected = driver_log.expect("reconnected to NATS")
    await current.kill()
    await asyncio.wait_for(reconnected, 10)
    assert d._nc.connected_url is not None
    assert d._nc.connected_url.port != current.port
    sent = envelope("a.b")
    await d.publish("a.b", sent)  # through the other server, to the restored subscription
    assert (await rec.envelope()).id == sent.id


async def test_server_restart_on_the_same_port(
    private_server: Callable[..., Any], make: Callable[..., Any], driver_log: LogWaiter
) -> None:
    server = await private_server()
    d = await make(server.url(), publish_timeout=10.0)
    rec = Recorder()
    await d.subscribe("a", "c", None, rec)
    lost = driver_log.expect("connection lost")
    await server.kill()
    await asyncio.wait_for(lost, 10)
    sent = envelope("a")
    publishing = asyncio.ensure_future(d.publish("a", sent))
    await server.start()
    await asyncio.wait_for(publishing, 10)
    frame = await rec.next()
    assert isinstance(frame, bytes)
    assert wire.decode(frame).id == sent.id


async def test_connection_closed_for_good_is_reported(
    private_server: Callable[..., Any], make: Callable[..., Any], driver_log: LogWaiter
) -> None:
    server = await private_server()
    d = await make(server.url(), max_reconnect_attempts=0)
    rec = Recorder()
    await d.subscribe("a", "c", None, rec)
    await server.kill()
    error, _ = await rec.next_report()
    assert "closed for good" in str(error)
    with pytest.raises(PublishError, match="closed"):
        await d.publish("a", envelope("a"))
