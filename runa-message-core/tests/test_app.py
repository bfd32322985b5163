"""The application lifecycle, the ASGI lifespan helper and the examples."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import httpx
import pytest

import runa_message as message
from runa_message import App, Message, MessageError, Registry
from runa_message.asgi import lifespan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@attrs.frozen
class Notice:
    text: str


def _run_example(name: str, driver: str = "memory") -> str:
    env = {**os.environ, "RUNA_MESSAGE__BROKERS__DEFAULT__DRIVER": driver}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_seed_example_prints_hello() -> None:
    assert _run_example("app_hello.py") == "hello\n"


@pytest.mark.parametrize("driver", ["memory", "redis", "nats", "amqp", "mqtt"])
def test_the_quickstart_example_on_every_driver(driver: str) -> None:
    assert _run_example("quickstart.py", driver) == "notice.created hello\n"


async def test_app_freeze_modules_default_and_shutdown() -> None:
    got: list[str] = []
    order: list[str] = []

    class Audit(message.Module):
        def setup(self, app: App) -> None:
            order.append("setup")
            app.invoke(Registry).subscribe("default", "n", self.handle)

        async def handle(self, msg: Message[Notice]) -> None:
            got.append(msg.payload.text)

        async def start(self) -> None:
            order.append("start")

        async def stop(self) -> None:
            order.append("stop")

    app = App()
    app.install(message.provider(message.register_broker("default")))
    app.module(Audit())
    with pytest.raises(MessageError, match="no application is running"):
        message.default()
    await app.freeze()
    registry = message.default()
    assert registry is app.invoke(Registry)
    assert registry.started
    await registry.publish("default", "n", Notice("x"))
    await app.shutdown()
    await app.shutdown()  # idempotent
    assert got == ["x"]
    assert order == ["setup", "start", "stop"]
    assert not registry.started
    with pytest.raises(MessageError, match="no application is running"):
        message.default()


async def test_invoke_unknown_type_and_module_without_annotations() -> None:
    app = App()
    with pytest.raises(MessageError, match="provides no Registry"):
        app.invoke(Registry)

    def module(registry) -> None:  # type: ignore[no-untyped-def]
        pass

    app.install(message.provider())
    app.module(module)
    with pytest.raises(MessageError, match="annotate parameter 'registry'"):
        await app.freeze()


async def test_providers_share_one_registry_and_configure_drivers(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text('[message.brokers.audit]\ndriver = "memory"\n')
    app = App(config)
    app.install(message.provider(message.register_broker("audit")))
    app.install(message.provider(message.configure_driver("memory")))
    await app.freeze()
    try:
        assert [info.name for info in app.invoke(Registry).info()] == ["audit", "default"]
    finally:
        await app.shutdown()


async def test_app_run_stops_on_the_stop_event() -> None:
    app = App()
    app.install(message.provider())
    running = asyncio.Event()

    async def started() -> None:
        running.set()

    app.on_start(started)
    stop = asyncio.Event()
    task = asyncio.ensure_future(app.run(stop))
    await asyncio.wait_for(running.wait(), 5)
    registry = app.invoke(Registry)
    assert registry.started
    stop.set()
    await asyncio.wait_for(task, 5)
    assert not registry.started


def test_app_run_shuts_down_gracefully_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(
        "import asyncio, sys\n"
        "import runa_message as message\n"
        "def module(registry: message.Registry) -> None:\n"
        "    pass\n"
        "async def main():\n"
        "    app = message.App()\n"
        "    app.install(message.provider())\n"
        "    app.module(module)\n"
        "    app.on_start(lambda: _say('started'))\n"
        "    app.on_stop(lambda: _say('stopped'))\n"
        "    await app.run()\n"
        "async def _say(text):\n"
        "    print(text, flush=True)\n"
        "asyncio.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "started\n"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out == "stopped\n"


async def test_asgi_lifespan_starts_and_closes_the_registry() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from examples import asgi_app
    finally:
        sys.path.remove(str(ROOT))
    from asgi_lifespan import LifespanManager

    async with LifespanManager(asgi_app.app) as manager:
        assert asgi_app.registry.started
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/notices", json={"text": "from http"})
            assert response.status_code == 202
            await asgi_app.registry.join(5)
            assert (await client.get("/notices")).json() == ["from http"]
    assert not asgi_app.registry.started


async def test_asgi_lifespan_with_an_app() -> None:
    app = App()
    app.install(message.provider())
    async with lifespan(app)(None):
        assert app.invoke(Registry).started
    assert not app.invoke(Registry).started
