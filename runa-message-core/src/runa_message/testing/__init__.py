"""Testing tools: the driver conformance suite, a fault-injecting TCP proxy, in-memory runs.

- :class:`DriverConformance`: the pytest test class every driver's tests subclass
  (see :mod:`runa_message.testing.conformance`).
- :class:`TcpProxy`: a loopback proxy that cuts, refuses and restores connections.
- :func:`closed_port` (nothing listens there) and :func:`free_port` (to start a private
  server on): loopback TCP ports.
- :func:`in_memory`: run an application's registry on the memory driver in unit tests,
  recording what it published (:class:`InMemory`, :class:`Recorder`); the pytest fixtures
  ``message_registry`` and ``message_memory`` wrap it.

The pytest plugin imports this package in every test run, so names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conformance import Conformance, DriverConformance
    from .inbox import ErrorInbox, Inbox
    from .ports import closed_port, free_port
    from .proxy import TcpProxy
    from .recorder import InMemory, Recorder, in_memory

__all__ = [
    "Conformance",
    "DriverConformance",
    "ErrorInbox",
    "InMemory",
    "Inbox",
    "Recorder",
    "TcpProxy",
    "closed_port",
    "free_port",
    "in_memory",
]

_WHERE = {
    "Conformance": "conformance",
    "DriverConformance": "conformance",
    "ErrorInbox": "inbox",
    "Inbox": "inbox",
    "TcpProxy": "proxy",
    "InMemory": "recorder",
    "Recorder": "recorder",
    "in_memory": "recorder",
    "closed_port": "ports",
    "free_port": "ports",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
