"""The entry point: by-name loading, no client library at import, the description."""

from __future__ import annotations

import subprocess
import sys

from runa_message.plugins import create_driver, describe_driver, installed_drivers
from runa_message_nats import NatsDriver, NatsSettings
from runa_message_nats.plugin import runa_message_driver, runa_message_driver_description


def test_plugin_module_imports_no_client_library() -> None:
    """nats-py is imported only when a driver is created, not to list or describe drivers."""
    code = (
        "import sys, runa_message_nats.plugin, runa_message_nats\n"
        "from runa_message import plugins\n"
        "plugins.installed_drivers(); plugins.describe_driver('nats')\n"
        "heavy = [m for m in sys.modules if m == 'nats' or m.startswith('nats.')]\n"
        "assert not heavy, heavy\n"
        "runa_message_nats.driver()\n"
        "assert 'nats' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_entry_point_is_installed() -> None:
    entry = {e.name: e for e in installed_drivers()}["nats"]
    assert entry.module == "runa_message_nats.plugin"
    assert entry.distribution == "runa-message-nats"


def test_hook_creates_the_driver_for_its_name_only() -> None:
    assert runa_message_driver("redis", {}) is None
    made = runa_message_driver("nats", {"prefix": "app."})
    assert isinstance(made, NatsDriver)
    assert made.settings.prefix == "app."


def test_create_driver_by_name() -> None:
    made = create_driver("nats", {"url": ["nats://127.0.0.1:4222"]})
    assert isinstance(made, NatsDriver)


def test_description() -> None:
    assert runa_message_driver_description("amqp") is None
    description = describe_driver("nats")
    assert description is not None
    assert description.name == "nats"
    assert description.settings is NatsSettings
    assert description.capabilities.groups
    assert description.capabilities.wildcards
    assert not description.capabilities.ack


def test_driver_function_survives_importing_the_driver_module() -> None:
    import runa_message_nats
    import runa_message_nats.driver
    from runa_message_nats import driver

    assert callable(driver)
    assert runa_message_nats.driver is driver
    assert sys.modules["runa_message_nats.driver"].NatsDriver is NatsDriver
    assert isinstance(driver(prefix="x."), NatsDriver)
