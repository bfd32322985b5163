"""Broker set-up the harness owns: a private Mosquitto that never drops queued messages.

Stock Mosquitto keeps at most 1,000 QoS 1 messages queued per client and silently drops the
rest, so a subscriber that falls behind its publisher loses messages and a throughput trial
never completes. The harness therefore runs the MQTT contenders on a private Mosquitto, on a
free port, with ``max_queued_messages 0`` (no limit). Without a ``mosquitto`` binary (or with
``BENCH_MQTT_PORT`` set) it uses the shared broker as it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .contenders import ENDPOINTS

__all__ = ["private_mosquitto"]

_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_mosquitto() -> Iterator[str]:
    """Point the MQTT endpoint at a private Mosquitto for the block; yield a description."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None,
    )
    if "BENCH_MQTT_PORT" in os.environ or binary is None:
        host, port = ENDPOINTS["mqtt"]
        reason = "BENCH_MQTT_PORT is set" if binary else "no mosquitto binary"
        yield f"shared broker {host}:{port} ({reason}; it may drop messages of slow subscribers)"
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-") as folder:
        config = os.path.join(folder, "mosquitto.conf")
        with open(config, "w") as f:
            f.write(_CONFIG.format(port=port))
        log = open(os.path.join(folder, "log"), "w+b")  # noqa: SIM115 - closed below
        process = subprocess.Popen([binary, "-c", config], stdout=log, stderr=subprocess.STDOUT)
        saved = ENDPOINTS["mqtt"]
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(
                            f"private mosquitto did not start: {log.read().decode()[-500:]}"
                        ) from None
                    time.sleep(0.05)
            ENDPOINTS["mqtt"] = ("127.0.0.1", port)
            yield f"private mosquitto on 127.0.0.1:{port} (max_queued_messages 0)"
        finally:
            ENDPOINTS["mqtt"] = saved
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
