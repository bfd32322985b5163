"""The runa-message command, run as a real executable in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

EXE = shutil.which("runa-message", path=str(Path(sys.executable).parent)) or "runa-message"


def run(
    *args: str, cwd: Path | None = None, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, input=stdin, env=env
    )


def test_drivers_lists_every_installed_driver() -> None:
    result = run("drivers")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "CAPABILITIES"]
    names = {line.split()[0] for line in lines[1:]}
    assert {"memory", "redis", "nats", "amqp", "mqtt"} <= names
    rows = [json.loads(line) for line in run("drivers", "--json").stdout.splitlines()]
    memory = next(row for row in rows if row["name"] == "memory")
    assert memory["distribution"] == "runa-message-core"
    assert memory["capabilities"] == "wildcards,groups"


def test_check_reports_each_broker(tmp_path: Path) -> None:
    (tmp_path / "runa-message.toml").write_text(
        '[message.brokers.audit]\ndriver = "memory"\ncodec = "raw"\n'
    )
    result = run("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "audit: driver memory, codec application/octet-stream: ok",
        "default: driver memory, codec application/json: ok",
    ]
    connected = run("check", "--connect", cwd=tmp_path)
    assert connected.returncode == 0, connected.stderr
    assert "connected" in connected.stdout


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('[message.brokers.default]\ndriver = "natss"\n', "did you mean 'nats'"),
        (
            "[message.brokers.default]\ndriver = 3\n",
            "message.brokers.default.driver: expected a string, got 3",
        ),
        ("[message.brokers.default\n", "line 1"),
    ],
)
def test_check_config_mistakes_exit_2_with_one_line(tmp_path: Path, toml: str, says: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = run("--config", str(config), "check")
    assert result.returncode == 2
    assert result.stderr.startswith("runa-message: error: ")
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_connect_to_a_broker_that_is_down_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    config = tmp_path / "down.toml"
    config.write_text(
        f'[message.brokers.default]\ndriver = "redis"\n'
        f'[message.redis]\nurl = "redis://:s3cret@127.0.0.1:{port}/0"\n'
    )
    result = run("--config", str(config), "check", "--connect", "--timeout", "5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    assert run("publish").returncode == 2
    result = run("publish", "nope", "t", "1")
    assert result.returncode == 2
    assert "broker 'nope' is not configured" in result.stderr
    result = run("publish", "default", "a..b", "1")
    assert result.returncode == 2
    assert "empty segment" in result.stderr
    result = run("run", "no_colon")
    assert result.returncode == 2
    assert "module:attr" in result.stderr


def test_publish_on_memory_prints_the_id() -> None:
    result = run("publish", "default", "t.x", '{"a": 1}', "--header", "k=v")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 32
    assert run("publish", "default", "t.x", stdin="plain text").returncode == 0


def test_listen_and_publish_round_trip_between_processes_over_redis(tmp_path: Path) -> None:
    config = tmp_path / "redis.toml"
    config.write_text('[message.brokers.default]\ndriver = "redis"\n')
    topic = f"cli.{uuid.uuid4().hex}"
    listener = subprocess.Popen(
        [
            EXE,
            "--config",
            str(config),
            "listen",
            "default",
            f"{topic.split('.')[0]}.*",
            "--count",
            "2",
            "--json",
            "--timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stderr is not None
        ready = listener.stderr.readline()
        assert ready.startswith("listening on default"), ready + listener.stderr.read()
        first = run("--config", str(config), "publish", "default", topic, '{"text": "hello"}')
        assert first.returncode == 0, first.stderr
        second = run("--config", str(config), "publish", "--raw", "default", topic, "raw bytes")
        assert second.returncode == 0, second.stderr
        out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["topic"] for r in records] == [topic, topic]
    assert records[0]["id"] == first.stdout.strip()
    assert records[0]["payload"] == {"text": "hello"}
    assert records[0]["headers"]["content-type"] == "application/json"
    assert records[1]["payload"] == "raw bytes"


def test_listen_plain_output_and_sigint(tmp_path: Path) -> None:
    listener = subprocess.Popen(
        [EXE, "listen", "default", "#"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert listener.stderr is not None
    assert listener.stderr.readline().startswith("listening on default #")
    listener.send_signal(signal.SIGINT)
    listener.communicate(timeout=30)
    assert listener.returncode == 0


def test_run_hosts_an_app_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "service.py").write_text(
        "import runa_message as message\n"
        "app = message.App()\n"
        "app.install(message.provider())\n"
        "async def hello() -> None:\n"
        "    print('up', flush=True)\n"
        "app.on_start(hello)\n"
        "registry = message.Registry()\n"
    )
    for target in ("service:app", "service:registry"):
        process = subprocess.Popen(
            [EXE, "run", target],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        assert process.stderr is not None
        if target.endswith(":app"):
            assert process.stdout.readline() == "up\n"
        else:
            assert "running" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        assert process.returncode == 0
    bad = run("run", "service:hello", cwd=tmp_path)
    assert bad.returncode == 2
    assert "point at an App or a Registry" in bad.stderr
