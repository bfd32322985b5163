"""The ``runa-message`` command: list drivers, check config, publish, listen, run an app.

Exit codes: 0 success, 1 a runtime failure (broker down, publish failed), 2 a usage or
configuration mistake. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import plugins
from .app import App
from .config import Config, load_config
from .errors import (
    BrokerNotFoundError,
    ConfigError,
    DriverNotFoundError,
    MessageError,
    TopicError,
    UnsupportedFeatureError,
)
from .message import Envelope
from .registry import Registry
from .wire import format_time

__all__ = ["main"]

CONFIG_ENV = "RUNA_MESSAGE_CONFIG"
DEFAULT_CONFIG = "runa-message.toml"
USAGE_ERRORS = (ConfigError, DriverNotFoundError, BrokerNotFoundError, TopicError)


class CommandError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `publish BROKER TOPIC --raw PAYLOAD`: argparse gives the payload up once an option
        # stands between the positionals; take it back.
        if args.command == "publish" and args.payload == "-" and len(extra) == 1:
            args.payload = extra[0]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        _fail(str(exc))
        return exc.code
    except USAGE_ERRORS as exc:
        _fail(str(exc))
        return 2
    except UnsupportedFeatureError as exc:
        _fail(str(exc))
        return 2
    except MessageError as exc:
        _fail(str(exc))
        return 1
    except OSError as exc:
        _fail(f"{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        return 0


def _fail(text: str) -> None:
    print(f"runa-message: error: {text}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runa-message", description="Typed publish/subscribe: drivers, config, messages."
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML file or folder (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG} if present)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    drivers = sub.add_parser("drivers", help="list installed drivers")
    drivers.add_argument("--json", action="store_true", help="one JSON object per driver")
    drivers.set_defaults(func=_drivers)

    check = sub.add_parser("check", help="validate the configuration")
    check.add_argument("--connect", action="store_true", help="also connect to every broker")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds to connect (10)")
    check.set_defaults(func=_check)

    publish = sub.add_parser("publish", help="publish one message")
    publish.add_argument("broker")
    publish.add_argument("topic")
    publish.add_argument(
        "payload", nargs="?", default="-", help="JSON (or text) payload; - reads stdin (default)"
    )
    publish.add_argument("--raw", action="store_true", help="send the payload bytes as they are")
    publish.add_argument(
        "--header", action="append", default=[], metavar="KEY=VALUE", help="add a header"
    )
    publish.set_defaults(func=_publish)

    listen = sub.add_parser("listen", help="print messages as they arrive")
    listen.add_argument("broker")
    listen.add_argument("pattern")
    listen.add_argument("--group", help="join this consumer group instead of broadcast")
    listen.add_argument("--count", type=int, help="exit after this many messages")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    listen.add_argument("--timeout", type=float, help="exit with code 1 after this many seconds")
    listen.set_defaults(func=_listen)

    run = sub.add_parser("run", help="run an App or Registry until SIGINT/SIGTERM")
    run.add_argument("target", metavar="module:attr")
    run.set_defaults(func=_run)
    return parser


# -- config and registry ----------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get(CONFIG_ENV)
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return load_config(path)


def _registry(config: Config) -> Registry:
    registry = Registry(config)
    for name in config.brokers():
        registry.broker(name)
    return registry


def _require_broker(config: Config, name: str) -> None:
    known = ["default", *config.brokers()]
    if name not in known:
        raise BrokerNotFoundError(
            f"broker {name!r} is not configured; configured brokers: "
            f"{', '.join(sorted(set(known)))}. Add [message.brokers.{name}] to the config"
        )


# -- commands ---------------------------------------------------------------------------


def _drivers(args: argparse.Namespace) -> int:
    entries = plugins.installed_drivers()
    rows = []
    for entry in entries:
        try:
            description = plugins.describe_driver(entry.name)
        except DriverNotFoundError as exc:
            description, problem = None, str(exc)
        else:
            problem = ""
        caps = description.capabilities if description else None
        flags = (
            ",".join(k for k in ("wildcards", "groups", "ack", "persistent") if getattr(caps, k))
            if caps
            else "?"
        )
        rows.append(
            {
                "name": entry.name,
                "distribution": entry.distribution,
                "version": entry.version,
                "capabilities": flags,
                "summary": description.summary if description else problem,
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    widths = {key: max(len(key), *(len(str(r[key])) for r in rows)) for key in rows[0]}
    keys = ("name", "distribution", "version", "capabilities")
    print("  ".join(key.upper().ljust(widths[key]) for key in keys).rstrip())
    for row in rows:
        print("  ".join(str(row[key]).ljust(widths[key]) for key in keys).rstrip())
    return 0


def _check(args: argparse.Namespace) -> int:
    config = _config(args)
    registry = _registry(config)
    infos = registry.validate()
    if args.connect:

        async def connect() -> None:
            try:
                await asyncio.wait_for(registry.start(), args.timeout)
            except asyncio.TimeoutError:
                raise CommandError(
                    f"could not connect within {args.timeout:g}s: is the broker running?"
                ) from None
            await registry.close()

        asyncio.run(connect())
    for info in infos:
        state = "connected" if args.connect else "ok"
        print(f"{info.name}: driver {info.driver}, codec {info.codec}: {state}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    config = _config(args)
    _require_broker(config, args.broker)
    text = sys.stdin.read() if args.payload == "-" else args.payload
    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--header {item!r}: write KEY=VALUE", 2)
        headers[key] = value
    payload: Any
    if args.raw:
        payload = text.encode()
    else:
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            payload = text

    async def send() -> str:
        async with _registry(config) as registry:
            if args.raw:
                return await registry.publish_raw(args.broker, args.topic, payload, headers)
            return await registry.publish(args.broker, args.topic, payload, headers)

    print(asyncio.run(send()))
    return 0


def _listen(args: argparse.Namespace) -> int:
    config = _config(args)
    _require_broker(config, args.broker)
    if args.count is not None and args.count < 1:
        raise CommandError("--count must be at least 1", 2)

    async def listen() -> int:
        registry = _registry(config)
        done = asyncio.Event()
        seen = 0

        async def show(envelope: Envelope) -> None:
            nonlocal seen
            print(_format(envelope, args.json), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                done.set()

        registry.subscribe(
            args.broker, args.pattern, show, consumer="runa-message listen", group=args.group
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        async with registry:
            print(f"listening on {args.broker} {args.pattern}", file=sys.stderr, flush=True)
            try:
                await asyncio.wait_for(done.wait(), args.timeout)
            except asyncio.TimeoutError:
                raise CommandError(f"no more messages within {args.timeout:g}s") from None
        return 0

    return asyncio.run(listen())


def _format(envelope: Envelope, as_json: bool) -> str:
    content_type = envelope.headers.get("content-type", "application/json")
    payload: Any
    if content_type == "application/json":
        try:
            payload = orjson.loads(envelope.payload)
        except orjson.JSONDecodeError:
            payload = None
    else:
        try:
            payload = envelope.payload.decode()
        except UnicodeDecodeError:
            payload = None
    if not as_json:
        shown = (
            json.dumps(payload, ensure_ascii=False)
            if content_type == "application/json" and payload is not None
            else payload
            if payload is not None
            else f"base64:{base64.b64encode(envelope.payload).decode()}"
        )
        return f"{envelope.topic} {shown}"
    record: dict[str, Any] = {
        "id": envelope.id,
        "topic": envelope.topic,
        "headers": dict(envelope.headers),
        "created_at": format_time(envelope.created_at),
    }
    if payload is None:
        record["payload_base64"] = base64.b64encode(envelope.payload).decode()
    else:
        record["payload"] = payload
    return json.dumps(record, ensure_ascii=False)


def _run(args: argparse.Namespace) -> int:
    module_name, sep, attr = args.target.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"{args.target!r}: write module:attr, e.g. myapp.main:app", 2)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r}: {exc}", 2) from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise CommandError(f"module {module_name!r} has no attribute {attr!r}", 2) from None
    if callable(target) and not isinstance(target, (App, Registry)):
        target = target()
    if isinstance(target, App):
        asyncio.run(target.run())
        return 0
    if isinstance(target, Registry):
        asyncio.run(_run_registry(target))
        return 0
    raise CommandError(
        f"{args.target} is a {type(target).__name__}: point at an App or a Registry "
        "(or a function returning one)",
        2,
    )


async def _run_registry(registry: Registry) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with registry:
        print("running; SIGINT or SIGTERM stops", file=sys.stderr, flush=True)
        await stop.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
