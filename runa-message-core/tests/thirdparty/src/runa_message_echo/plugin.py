"""Entry point module of the ``echo`` test driver."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

import runa_message as message
from runa_message.config import structure_settings
from runa_message.plugins import DriverDescription

#: Settings tables handed to the hook, for the tests to inspect.
received: list[dict[str, Any]] = []


@attrs.frozen
class EchoSettings:
    greeting: str = "hello"
    repeat: int = 1


class EchoDriver(message.MemoryDriver):
    def __init__(self, settings: EchoSettings) -> None:
        super().__init__()
        self.settings = settings


@message.hookimpl
def runa_message_driver(name: str, settings: Mapping[str, Any]) -> EchoDriver | None:
    if name != "echo":
        return None
    received.append(dict(settings))
    return EchoDriver(structure_settings(EchoSettings, settings, "message.echo"))


@message.hookimpl
def runa_message_driver_description(name: str) -> DriverDescription | None:
    if name != "echo":
        return None
    return DriverDescription("echo", "Test driver.", EchoDriver.capabilities, EchoSettings)
