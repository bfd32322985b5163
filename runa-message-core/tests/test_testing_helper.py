"""The unit-test helper: a registry's brokers in memory, publishes recorded, handlers awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import attrs
import pytest

import runa_message as message
from runa_message import ALL, App, DecodeError, ErrorEvent, Message, Registry
from runa_message.testing import InMemory, in_memory

pytest_plugins = ("pytester",)

INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


@attrs.frozen
class Notice:
    text: str


def build_registry() -> tuple[Registry, list[Any]]:
    """An application's registry: brokers on network drivers that are not even installed."""
    registry = Registry()
    registry.broker("default", driver="nats")
    registry.broker("audit", driver="no-such-driver", codec="raw")
    seen: list[Any] = []

    @registry.subscribe("default", "notice.created")
    async def notify(msg: Message[Notice]) -> None:
        seen.append(msg.payload)
        await registry.publish("audit", "audit.notice", f"notified {msg.payload.text}")

    @registry.subscribe("audit", "audit.#")
    async def audit(msg: Message[bytes]) -> None:
        seen.append(msg.payload)

    return registry, seen


async def test_runs_every_broker_in_memory_and_records_per_broker_and_topic() -> None:
    registry, seen = build_registry()
    async with in_memory(registry) as run:
        assert {info.name: info.driver for info in registry.info()} == {
            "audit": "memory",
            "default": "memory",
        }
        await registry.publish("default", "notice.created", Notice("hi"))
        await run.join()
        assert seen == [Notice("hi"), b"notified hi"]
        assert run.payloads("default", "notice.created") == [{"text": "hi"}]
        assert run.payloads("default", "notice.created", Notice) == [Notice("hi")]
        assert run.payloads("audit") == [b"notified hi"]
        assert run.topics() == ["notice.created", "audit.notice"]
        assert run.topics("audit") == ["audit.notice"]
        (envelope,) = run.published("audit", "audit.*")
        assert envelope.headers["content-type"] == "application/octet-stream"
        assert run.published("default", "audit.#") == []
        run.clear()
        assert run.published() == []
    assert not registry.started


async def test_brokers_are_isolated_from_each_other() -> None:
    registry = Registry()
    registry.broker("a")
    registry.broker("b")
    got: dict[str, list[Any]] = {"a": [], "b": []}
    registry.subscribe("a", "same.topic", lambda m: got["a"].append(m.payload), consumer="a")
    registry.subscribe("b", "same.topic", lambda m: got["b"].append(m.payload), consumer="b")
    async with in_memory(registry) as run:
        await registry.publish("a", "same.topic", 1)
        await run.join()
        assert got == {"a": [1], "b": []}


async def test_groups_and_wildcards_behave_as_on_the_brokers() -> None:
    registry = Registry()
    members: list[list[int]] = [[], []]
    everything: list[str] = []
    for i, member in enumerate(members):
        registry.subscribe(
            "default",
            "job.*",
            lambda m, member=member: member.append(m.payload),
            group="workers",
            consumer=f"w{i}",
            payload=int,
        )
    registry.subscribe(
        "default", "job.#", lambda m: everything.append(m.topic), consumer="all", payload=int
    )
    async with in_memory(registry) as run:
        for n in range(10):
            await registry.publish("default", f"job.{n}", n)
        await registry.publish("default", "job.deep.topic", 99)
        await run.join()
    assert sorted(members[0] + members[1]) == list(range(10))
    assert members[0], "both members of the group get a share"
    assert members[1], "both members of the group get a share"
    assert len(everything) == 11


async def test_a_failing_handler_fails_join_and_the_subscription_keeps_going() -> None:
    registry = Registry()
    handled: list[str] = []

    @registry.subscribe("default", "work")
    async def work(msg: Message[str]) -> None:
        if msg.payload == "bad":
            raise ValueError("cannot work on bad")
        handled.append(msg.payload)

    async with in_memory(registry) as run:
        await registry.publish("default", "work", "bad")
        with pytest.raises(ValueError, match="cannot work on bad"):
            await run.join()
        await registry.publish("default", "work", "good")
        await run.join()  # the error was raised once; nothing new since
        assert handled == ["good"]
        assert [type(e.error) for e in run.errors] == [ValueError]
        assert run.errors[0].envelope is not None


async def test_raise_errors_off_records_the_errors_only() -> None:
    registry = Registry()
    own: list[ErrorEvent] = []
    registry.on_error(ALL, own.append)
    registry.subscribe("default", "typed", lambda m: None, payload=Notice)
    async with in_memory(registry, raise_errors=False) as run:
        await registry.publish("default", "typed", {"wrong": "shape"})
        await registry.publish("default", "typed", "not even an object")
        await run.join()
        assert [type(e.error) for e in run.errors] == [DecodeError, DecodeError]
        assert own == run.errors, "the application's own error hooks still run"
        with pytest.raises(DecodeError):
            await run.join(raise_errors=True)


async def test_several_errors_raise_the_first_with_a_note() -> None:
    registry = Registry()

    async def fail(msg: Message[int]) -> None:
        raise RuntimeError(f"failed {msg.payload}")

    registry.subscribe("default", "n", fail)
    async with in_memory(registry) as run:
        for n in range(3):
            await registry.publish("default", "n", n)
        with pytest.raises(RuntimeError, match="failed 0") as caught:
            await run.join()
        assert "2 more handler errors" in "".join(getattr(caught.value, "__notes__", []))


async def test_join_times_out_when_a_handler_hangs() -> None:
    registry = Registry()
    registry.drain_timeout = 0.1
    never = asyncio.Event()

    async def hang(msg: Message[Any]) -> None:
        await never.wait()

    registry.subscribe("default", "hang", hang)
    async with in_memory(registry) as run:
        await registry.publish("default", "hang", None)
        with pytest.raises(TimeoutError, match="still running"):
            await run.join(timeout=0.05)


async def test_an_app_runs_in_memory_with_the_brokers_its_modules_register() -> None:
    got: list[str] = []

    def notices(registry: Registry) -> None:
        registry.broker("late", driver="amqp")
        registry.subscribe("late", "notice.created", lambda m: got.append(m.payload))

    app = App(config=None)
    app.install(message.provider(message.register_broker("default", driver="redis")))
    app.module(notices)
    async with in_memory(app) as run:
        assert isinstance(run, InMemory)
        assert {info.driver for info in run.registry.info()} == {"memory"}
        await run.registry.publish("late", "notice.created", "hello")
        await run.join()
    assert got == ["hello"]
    assert not run.registry.started


def test_the_pytest_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import pytest
        from runa_message import Message, Registry


        @pytest.fixture
        def message_registry():
            registry = Registry()
            registry.broker("default", driver="nats")

            @registry.subscribe("default", "notice.created")
            async def forward(msg: Message[dict]) -> None:
                await registry.publish("default", "notice.sent", msg.payload["text"])

            return registry
        """
    )
    pytester.makepyfile(
        test_app="""
        async def test_forwards(message_memory):
            await message_memory.registry.publish("default", "notice.created", {"text": "hi"})
            await message_memory.join()
            assert message_memory.payloads("default", "notice.sent") == ["hi"]


        async def test_fresh_registry_per_test(message_memory):
            assert message_memory.published() == []
            assert message_memory.registry.started
        """
    )
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_the_default_registry_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_default="""
        from runa_message import Registry


        async def test_empty(message_registry, message_memory):
            assert isinstance(message_registry, Registry)
            assert message_memory.registry is message_registry
            await message_registry.publish("default", "anything", 1)
            await message_memory.join()
            assert message_memory.payloads() == [1]
        """
    )
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=1)


# The "Testing your handlers" page runs as a test module: its blocks, in order.


def test_testing_page_runs(
    pytester: pytest.Pytester, page_files: Callable[[str], dict[str, str]]
) -> None:
    """The page's application, configuration and test modules, as files, pass."""
    files = page_files("testing.md")
    assert {"app.py", "pyproject.toml", "conftest.py", "test_signup.py"} <= set(files)
    for name, text in files.items():
        (pytester.path / name).write_text(text, encoding="utf-8")
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=4)
