"""A Starlette (or FastAPI) app whose lifespan starts and closes the registry.

Run it with ``uvicorn examples.asgi_app:app``; ``POST /notices`` publishes, and the
subscriber appends what it receives to ``received``, shown by ``GET /notices``.
"""

from __future__ import annotations

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import runa_message as message
from runa_message.asgi import lifespan


@attrs.frozen
class Notice:
    text: str


registry = message.Registry()
received: list[str] = []


@registry.subscribe("default", "notice.created")
async def on_notice(msg: message.Message[Notice]) -> None:
    received.append(msg.payload.text)


async def create_notice(request: Request) -> JSONResponse:
    body = await request.json()
    message_id = await registry.publish("default", "notice.created", Notice(text=body["text"]))
    return JSONResponse({"id": message_id}, status_code=202)


async def list_notices(request: Request) -> JSONResponse:
    return JSONResponse(received)


app = Starlette(
    routes=[
        Route("/notices", create_notice, methods=["POST"]),
        Route("/notices", list_notices, methods=["GET"]),
    ],
    lifespan=lifespan(registry),
)
