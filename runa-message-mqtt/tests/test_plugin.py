"""The entry point: by-name creation, description, lazy imports, config and App setup."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass

import pytest
from mqtt_testkit import URL, unique

import runa_message as message
from runa_message import plugins
from runa_message.errors import ConfigError
from runa_message_mqtt import MqttDriver, MqttSettings, driver, plugin, provider


def test_the_hook_answers_for_mqtt_only() -> None:
    assert plugin.runa_message_driver(name="redis", settings={}) is None
    created = plugin.runa_message_driver(name="mqtt", settings={"qos": 0})
    assert isinstance(created, MqttDriver)
    assert created.settings.qos == 0
    assert plugin.runa_message_driver_description(name="nats") is None
    description = plugin.runa_message_driver_description(name="mqtt")
    assert description is not None
    assert description.settings is MqttSettings
    assert description.capabilities.groups


def test_the_entry_point_is_installed_and_resolves_by_name() -> None:
    entries = {entry.name: entry for entry in plugins.installed_drivers()}
    assert entries["mqtt"].module == "runa_message_mqtt.plugin"
    assert entries["mqtt"].distribution == "runa-message-mqtt"
    created = plugins.create_driver("mqtt", {"url": "mqtt://broker:1884"})
    assert isinstance(created, MqttDriver)
    assert plugins.describe_driver("mqtt") is not None


def test_bad_settings_are_config_errors_with_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"message\.mqtt\.qoss"):
        plugins.create_driver("mqtt", {"qoss": 1})
    with pytest.raises(ConfigError, match=r"^mqtt\.qoss"):
        driver(qoss=1)


def test_the_plugin_module_imports_no_client_library() -> None:
    """paho-mqtt is imported only when a driver is created, not to list or describe drivers."""
    code = (
        "import sys, runa_message_mqtt.plugin as p; p.runa_message_driver_description('mqtt');"
        "from runa_message import plugins; plugins.installed_drivers();"
        "plugins.describe_driver('mqtt');"
        "print(any(m == 'paho' or m.startswith('paho.') for m in sys.modules));"
        "import runa_message_mqtt as r; r.driver();"
        "print(any(m == 'paho' or m.startswith('paho.') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "True"]


def test_driver_is_the_function_once_the_module_is_imported() -> None:
    import runa_message_mqtt
    from runa_message_mqtt.driver import MqttDriver as from_module

    assert from_module is MqttDriver
    assert runa_message_mqtt.MqttDriver is MqttDriver
    assert not isinstance(runa_message_mqtt.driver, type(sys))  # the function, not the module
    assert isinstance(runa_message_mqtt.driver(qos=0), MqttDriver)


@dataclass
class Notice:
    text: str


@pytest.mark.broker
async def test_config_over_the_shared_table_and_the_registry() -> None:
    base = unique()
    config = message.Config.from_mapping(
        {
            "mqtt": {"url": "mqtt://127.0.0.1:1", "prefix": "ignored/"},
            "message": {
                "brokers": {"default": {"driver": "mqtt"}},
                "mqtt": {"url": URL, "prefix": f"{base}/"},
            },
        }
    )
    registry = message.Registry(config)
    registry.broker("default")
    got: list[message.Message[Notice]] = []
    arrived = asyncio.Event()

    @registry.subscribe("default", "notice.*")
    async def on_notice(msg: message.Message[Notice]) -> None:
        got.append(msg)
        arrived.set()

    async with registry:
        info = registry.info()
        assert [(b.name, b.driver) for b in info] == [("default", "mqtt")]
        await registry.publish("default", "notice.created", Notice("hello"))
        await asyncio.wait_for(arrived.wait(), 10)
    assert got[0].payload == Notice("hello")


@pytest.mark.broker
async def test_provider_sets_up_an_app() -> None:
    app = message.App()
    app.install(provider("default", "audit", url=URL, prefix=f"{unique()}/"))
    got: asyncio.Queue[message.Message[str]] = asyncio.Queue()

    def notices(registry: message.Registry) -> None:
        registry.subscribe("audit", "events.#", got.put, consumer="audit", payload=str)

    app.module(notices)
    await app.freeze()
    try:
        registry = app.invoke(message.Registry)
        assert {b.name: b.driver for b in registry.info()} == {"default": "mqtt", "audit": "mqtt"}
        await registry.publish("audit", "events.x", "hello")
        received = await asyncio.wait_for(got.get(), 10)
        assert received.payload == "hello"
    finally:
        await app.shutdown()
