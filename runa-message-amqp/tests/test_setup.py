"""Settings, the plugin entry point, and setup through driver() and provider()."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

import runa_message as message
import runa_message_amqp
from runa_message import ConfigError
from runa_message.plugins import create_driver, describe_driver, installed_drivers
from runa_message_amqp import AmqpDriver, AmqpSettings, driver, provider
from runa_message_amqp.settings import CAPABILITIES

# -- settings ---------------------------------------------------------------------------


def test_defaults_point_at_the_local_broker() -> None:
    settings = AmqpSettings()
    assert settings.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.exchange == "runa.message"
    assert settings.prefix == ""
    assert settings.publisher_confirms is True
    assert settings.max_retries == 3
    assert settings.dead_letter_exchange == "runa.message.dlx"
    assert settings.dead_letter_queue == "runa.message.dead-letter"
    assert settings.publish_timeout == 5.0


def test_dead_letter_names_follow_the_exchange() -> None:
    settings = AmqpSettings.from_mapping({"exchange": "billing"})
    assert settings.dead_letter_exchange == "billing.dlx"
    assert settings.dead_letter_queue == "billing.dead-letter"


def test_repr_redacts_the_url() -> None:
    settings = AmqpSettings(url="amqps://app:pa55word@rabbit.example:5671/prod")
    assert "pa55word" not in repr(settings)
    assert "app:***@rabbit.example" in repr(settings)


def test_unknown_key_names_the_path_and_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"message\.amqp\.exchang: unknown .*'exchange'"):
        AmqpSettings.from_mapping({"exchang": "x"})


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"message\.amqp\.prefetch"):
        AmqpSettings.from_mapping({"prefetch": "ten"})


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("url", "redis://127.0.0.1:6379", "not an AMQP URL"),
        ("url", "amqp://user:hunter2@:5672/", "names no host"),
        ("exchange", "", "empty"),
        ("exchange", "amq.topic", "reserved"),
        ("exchange", "has space", "letters, digits"),
        ("prefix", "a b", "whitespace"),
        ("prefix", "a.#", "wildcard"),
        ("prefetch", 0, "between 1 and 65535"),
        ("max_retries", -1, "at least 0"),
        ("publish_timeout", 0, "must be a number of seconds above zero, got 0"),
    ],
)
def test_bad_values_are_explained(key: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        AmqpSettings.from_mapping({key: value})
    assert words in str(raised.value)
    assert key in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_amqps_is_accepted() -> None:
    assert AmqpSettings(url="amqps://rabbit.example:5671/").url.startswith("amqps://")


# -- plugin -----------------------------------------------------------------------------


def test_plugin_imports_no_client_library() -> None:
    code = (
        "import sys, runa_message_amqp.plugin as p\n"
        "from runa_message import plugins\n"
        "plugins.installed_drivers(); plugins.describe_driver('amqp')\n"
        "d = p.runa_message_driver_description('amqp')\n"
        "assert d.capabilities.ack and d.settings is p.AmqpSettings\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('aio_pika', 'aiormq', 'pamqp')]\n"
        "assert not heavy, heavy\n"
        "import runa_message_amqp as r\n"
        "r.driver()\n"
        "assert 'aio_pika' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_entry_point_is_installed() -> None:
    entries = {entry.name: entry for entry in installed_drivers()}
    assert entries["amqp"].module == "runa_message_amqp.plugin"
    assert entries["amqp"].distribution == "runa-message-amqp"


def test_hook_creates_the_driver_from_settings() -> None:
    created = create_driver("amqp", {"exchange": "hooked", "prefetch": 7})
    assert isinstance(created, AmqpDriver)
    assert created.settings.exchange == "hooked"
    assert created.settings.prefetch == 7
    described = describe_driver("amqp")
    assert described is not None
    assert described.capabilities == CAPABILITIES


def test_hook_reports_bad_settings() -> None:
    with pytest.raises(ConfigError, match="prefetchh"):
        create_driver("amqp", {"prefetchh": 7})


# -- driver() and provider() ------------------------------------------------------------


def test_driver_takes_keyword_settings() -> None:
    made = driver(exchange="manual", max_retries=1)
    assert made.settings.exchange == "manual"
    assert made.settings.max_retries == 1


def test_driver_is_the_function_once_the_module_is_imported() -> None:
    from runa_message_amqp.driver import AmqpDriver as from_module

    assert from_module is AmqpDriver
    assert callable(runa_message_amqp.driver)
    assert not isinstance(runa_message_amqp.driver, type(sys))  # not the submodule
    assert isinstance(runa_message_amqp.driver(prefix="x."), AmqpDriver)
    assert runa_message_amqp.AmqpDriver is AmqpDriver


@pytest.mark.broker
async def test_provider_sets_up_the_app(admin: Any) -> None:
    exchange = "runa.test.provider"
    app = message.App()
    app.install(provider("default", "audit", exchange=exchange, dead_letter=False))
    received: asyncio.Queue[message.Message[Any]] = asyncio.Queue()

    def module(registry: message.Registry) -> None:
        registry.subscribe("audit", "audit.*", received.put, payload=dict)

    app.module(module)
    await app.freeze()
    try:
        registry = message.default()
        assert {info.name: info.driver for info in registry.info()} == {
            "default": "amqp",
            "audit": "amqp",
        }
        await registry.publish("audit", "audit.login", {"user": "ada"})
        got = await asyncio.wait_for(received.get(), 10)
        assert got.payload == {"user": "ada"}
    finally:
        await app.shutdown()
        channel = await admin.channel()
        await channel.exchange_delete(exchange)
        await channel.close()


def test_message_amqp_wins_over_amqp() -> None:
    config = message.Config.from_mapping(
        {
            "amqp": {"exchange": "shared", "prefetch": 5},
            "message": {"amqp": {"exchange": "own"}},
        }
    )
    settings, path = config.driver_settings("amqp")
    created = create_driver("amqp", settings)
    assert isinstance(created, AmqpDriver)
    assert (created.settings.exchange, created.settings.prefetch) == ("own", 5)
    assert path.endswith("message.amqp")


def test_registry_reports_bad_settings_from_config(tmp_path: Any) -> None:
    file = tmp_path / "runa-message.toml"
    file.write_text(
        '[message.brokers.default]\ndriver = "amqp"\n[message.amqp]\nprefetch = "many"\n'
    )
    registry = message.Registry(file)
    with pytest.raises(ConfigError, match=r"message\.amqp\.prefetch"):
        registry.validate()
