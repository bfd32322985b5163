"""Start and close a registry (or an App) with an ASGI application's lifespan.

.. code-block:: python

    from fastapi import FastAPI
    from runa_message.asgi import lifespan

    registry = message.Registry()
    app = FastAPI(lifespan=lifespan(registry))

Starlette takes the same ``lifespan=`` argument. The registry starts before the first
request is served and drains and closes after the last one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from .app import App
from .registry import Registry

__all__ = ["lifespan"]


def lifespan(target: Registry | App) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Return a lifespan function for Starlette/FastAPI that runs ``target`` with the app."""

    @asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        if isinstance(target, App):
            await target.freeze()
            try:
                yield
            finally:
                await target.shutdown()
        else:
            async with target:
                yield

    return run
