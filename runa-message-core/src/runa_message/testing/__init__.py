"""Testing tools: the driver conformance suite, a fault-injecting TCP proxy, in-memory runs.

- :class:`DriverConformance`: the pytest test class every driver's tests subclass.
- :class:`TcpProxy`: a loopback proxy that cuts and restores connections.
- :func:`in_memory`: run an application's registry on the memory driver in unit tests,
  recording what was published (the ``message_memory`` pytest fixture wraps it).

``DriverConformance`` imports pytest; it is loaded on first use, so the rest of this package
works without pytest installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .proxy import TcpProxy

if TYPE_CHECKING:
    from .conformance import DriverConformance

__all__ = ["DriverConformance", "TcpProxy"]


def __getattr__(name: str) -> Any:
    if name == "DriverConformance":
        from .conformance import DriverConformance

        return DriverConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
