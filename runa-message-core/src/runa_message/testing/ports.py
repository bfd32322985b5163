"""Loopback TCP ports for tests: one to start a server on, one nothing listens on."""

from __future__ import annotations

import socket

__all__ = ["closed_port", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now: start a private server on it.

    The port is bound to find it and released at once, so another process could take it
    in between; on loopback in a test run that does not happen in practice.
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback (127.0.0.1) TCP port nothing listens on: connecting to it is refused."""
    return free_port()
