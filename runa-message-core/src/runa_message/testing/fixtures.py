"""The pytest plugin of runa-message (entry point ``runa_message``): fixtures for unit tests.

- ``message_registry``: the registry (or :class:`~runa_message.App`) under test. Override it
  in your ``conftest.py`` to build your application's; the default is an empty ``Registry()``.
- ``message_memory``: ``message_registry`` running on the memory driver, started, recording
  what it publishes (an :class:`~runa_message.testing.recorder.InMemory`); closed after the test.

This module is loaded in every pytest run where runa-message-core is installed, so it imports
nothing of runa-message until a fixture is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from runa_message.app import App
    from runa_message.registry import Registry
    from runa_message.testing.recorder import InMemory

# Plain asserts in the conformance suite report like assertions in test files.
pytest.register_assert_rewrite("runa_message.testing.conformance")

_async_fixture: Any = None
with contextlib.suppress(ImportError):  # pytest-asyncio runs the async fixture
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture


@pytest.fixture
def message_registry() -> Registry | App:
    """The registry under test; override it to return your application's (or its ``App``)."""
    from runa_message.registry import Registry

    return Registry()


async def _message_memory(message_registry: Registry | App) -> AsyncIterator[InMemory]:
    """``message_registry`` running in memory, recording what it publishes."""
    from runa_message.testing.recorder import in_memory

    async with in_memory(message_registry) as run:
        yield run


if _async_fixture is not None:
    message_memory: Any = _async_fixture(_message_memory, name="message_memory")
else:  # pragma: no cover

    @pytest.fixture
    def message_memory() -> None:
        """Needs pytest-asyncio."""
        pytest.fail("the message_memory fixture needs pytest-asyncio: pip install pytest-asyncio")
