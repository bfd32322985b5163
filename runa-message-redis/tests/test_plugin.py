"""The entry point: found by name, light to import, creating the driver from settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runa_message.errors import ConfigError
from runa_message.plugins import create_driver, describe_driver, installed_drivers
from runa_message_redis import RedisDriver, plugin


def test_entry_point_is_installed() -> None:
    entry = next(e for e in installed_drivers() if e.name == "redis")
    assert entry.module == "runa_message_redis.plugin"
    assert entry.distribution == "runa-message-redis"


def test_plugin_module_imports_nothing_heavy() -> None:
    """redis-py is imported only when a driver is created."""
    code = (
        "import sys, runa_message_redis.plugin as p\n"
        "from runa_message.plugins import describe_driver\n"
        "describe_driver('redis')\n"
        "heavy = [m for m in sys.modules if m == 'redis' or m.startswith('redis.')]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    code = "import sys, runa_message_redis as r\nr.driver()\nprint('redis' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"


def test_hook_creates_the_driver() -> None:
    created = create_driver("redis", {"url": "redis://127.0.0.1:6379/3", "prefix": "x:"})
    assert isinstance(created, RedisDriver)
    assert created.settings.prefix == "x:"
    assert plugin.runa_message_driver("nats", {}) is None


def test_hook_reports_bad_settings() -> None:
    with pytest.raises(ConfigError, match=r"message\.redis\.nope"):
        create_driver("redis", {"nope": 1})


def test_description() -> None:
    description = describe_driver("redis")
    assert description is not None
    assert description.name == "redis"
    assert description.capabilities == RedisDriver.capabilities
    assert description.capabilities.groups is False
    assert plugin.runa_message_driver_description("mqtt") is None
