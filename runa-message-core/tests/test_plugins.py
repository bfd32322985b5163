"""Drivers as plugins: entry points resolved by name, lazily, with helpful errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import runa_message as message
from runa_message import DriverNotFoundError, Message, Registry, plugins

CLIENT_LIBRARIES = ["redis", "nats", "aio_pika", "aiormq", "paho", "aiomqtt"]


def _modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    script = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_resolving_memory_imports_no_client_library() -> None:
    roots = _roots(
        _modules_after("from runa_message import plugins; plugins.create_driver('memory', {})")
    )
    assert not roots & set(CLIENT_LIBRARIES)
    assert not {r for r in roots if r.startswith("runa_message_")}


@pytest.mark.parametrize(
    ("driver", "library"),
    [("redis", "redis"), ("nats", "nats"), ("amqp", "aio_pika"), ("mqtt", "paho")],
)
def test_resolving_one_driver_imports_no_other_drivers_library(driver: str, library: str) -> None:
    roots = _roots(
        _modules_after(f"from runa_message import plugins; plugins.create_driver({driver!r}, {{}})")
    )
    others = {f"runa_message_{d}" for d in ("redis", "nats", "amqp", "mqtt")} - {
        f"runa_message_{driver}"
    }
    assert not roots & others
    assert not roots & (
        set(CLIENT_LIBRARIES) - {library, "aiormq" if library == "aio_pika" else ""}
    )


def test_listing_drivers_imports_no_client_library() -> None:
    roots = _roots(
        _modules_after("from runa_message import plugins; print(plugins.installed_drivers())")
    )
    assert not roots & set(CLIENT_LIBRARIES)
    assert not {r for r in roots if r.startswith("runa_message_")}


def test_installed_drivers_lists_every_distribution() -> None:
    entries = {entry.name: entry for entry in plugins.installed_drivers()}
    assert {"memory", "redis", "nats", "amqp", "mqtt"} <= set(entries)
    assert entries["memory"].distribution == "runa-message-core"
    assert entries["nats"].distribution == "runa-message-nats"
    assert entries["nats"].module == "runa_message_nats.plugin"


async def test_a_third_party_driver_is_picked_by_its_name_in_toml(
    thirdparty_path: Path, tmp_path: Path
) -> None:
    config = tmp_path / "app.toml"
    config.write_text(
        '[message.brokers.default]\ndriver = "echo"\n'
        '[echo]\ngreeting = "from shared"\nrepeat = 1\n'
        "[message.echo]\nrepeat = 3\n"
    )
    registry = Registry(message.load_config(config))
    got = []

    @registry.subscribe("default", "t")
    async def handler(msg: Message[int]) -> None:
        got.append(msg.payload)

    async with registry:
        await registry.publish("default", "t", 7)
        await registry.join(5)
        driver = registry._runtime["default"].driver
    from runa_message_echo import plugin  # type: ignore[import-not-found]

    assert plugin.received[-1] == {"greeting": "from shared", "repeat": 3}
    assert driver.settings == plugin.EchoSettings("from shared", 3)
    assert got == [7]
    assert registry.info()[0].driver == "echo"


async def test_code_settings_win_over_config(thirdparty_path: Path) -> None:
    registry = Registry(
        {"message": {"brokers": {"default": {"driver": "echo"}}, "echo": {"greeting": "config"}}}
    )
    registry.configure_driver("echo", greeting="code")
    async with registry:
        assert registry._runtime["default"].driver.settings.greeting == "code"


async def test_third_party_settings_errors_name_the_key(thirdparty_path: Path) -> None:
    registry = Registry(
        {"message": {"brokers": {"default": {"driver": "echo"}}, "echo": {"repaet": 2}}}
    )
    with pytest.raises(
        message.ConfigError,
        match=r"message\.echo\.repaet: unknown setting \(did you mean 'repeat'\?\)",
    ):
        await registry.start()


async def test_a_plugin_that_fails_to_import_names_driver_and_distribution(
    thirdparty_path: Path,
) -> None:
    registry = Registry()
    registry.broker("default", driver="broken")
    with pytest.raises(DriverNotFoundError) as info:
        await registry.start()
    text = str(info.value)
    assert "driver 'broken'" in text
    assert "runa-message-echo-driver" in text
    assert "runa_message_missing_client_library" in text
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_a_code_registered_driver_wins_over_the_plugin() -> None:
    registry = Registry()
    mine = message.MemoryDriver()
    registry.register_driver("redis", mine)
    registry.broker("default", driver="redis")
    (info,) = registry.validate()
    assert info.driver == "redis"


def test_describe_driver() -> None:
    description = plugins.describe_driver("memory")
    assert description is not None
    assert description.capabilities.groups
    assert plugins.describe_driver("no-such-driver") is None


def test_hookspecs_are_documented_and_prefixed() -> None:
    from runa_message import hookspecs

    manager = plugins.plugin_manager()
    names = [name for name in dir(manager.hook) if not name.startswith("_")]
    assert names
    for name in names:
        assert name.startswith("runa_message_")
        assert getattr(hookspecs, name).__doc__
