"""The values that flow through runa-message: envelopes, typed messages and hook events."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import attrs

from .codec import JSON
from .ids import now

__all__ = [
    "BrokerInfo",
    "Envelope",
    "ErrorEvent",
    "Message",
    "Outcome",
    "PublishEvent",
    "SubscriptionInfo",
]

T = TypeVar("T")

#: What became of a message whose handling failed: handed to the driver to deliver again,
#: moved to a dead-letter destination, or gone.
Outcome = Literal["retried", "dead-lettered", "dropped"]

_EMPTY: Mapping[str, Any] = {}


@attrs.frozen(slots=True)
class Envelope:
    """What a driver carries: the encoded payload with its id, topic, headers and time.

    Drivers move envelopes; handlers receive :class:`Message` objects decoded from them.
    ``headers`` holds JSON values (the ``content-type`` header names the codec).
    """

    id: str
    topic: str
    payload: bytes
    headers: Mapping[str, Any] = _EMPTY
    created_at: datetime = attrs.field(factory=now)


@attrs.frozen(slots=True, init=False)
class Message(Generic[T]):
    """A message as a handler sees it: the payload decoded into ``T``.

    ``topic`` is the topic as it was published, also when the subscription used a wildcard.
    """

    id: str
    topic: str
    payload: T
    headers: Mapping[str, Any]
    created_at: datetime

    def __init__(
        self, id: str, topic: str, payload: T, headers: Mapping[str, Any], created_at: datetime
    ) -> None:
        # One is made per delivery: the slots are set directly, which costs a fifth less
        # than the generated frozen __init__ (no fields have defaults or validators).
        _set_id(self, id)
        _set_topic(self, topic)
        _set_payload(self, payload)
        _set_headers(self, headers)
        _set_created_at(self, created_at)


_set_id, _set_topic, _set_payload, _set_headers, _set_created_at = (
    Message.__dict__[field.name].__set__ for field in attrs.fields(Message)
)


def local_envelope(message: Message[Any]) -> Envelope:
    """The :class:`Envelope` of a message the memory driver carries as it was published.

    In process, a value the default JSON codec vouches for (see
    :meth:`runa_message.JSONCodec.reusable`) travels as its :class:`Message`, not encoded;
    whatever needs the envelope (another payload type, middleware, an envelope handler, an
    error event) gets this one, with the same fields and the value's JSON bytes.
    """
    return Envelope(
        message.id, message.topic, JSON.encode(message.payload), message.headers, message.created_at
    )


@attrs.frozen(slots=True)
class ErrorEvent:
    """Given to ``on_error`` hooks when a message could not be handled.

    ``envelope`` is None when the frame was not an envelope; ``data`` then holds the raw
    frame as the driver received it. ``outcome`` says what became of the message.
    """

    broker: str
    topic: str
    consumer: str
    envelope: Envelope | None
    data: bytes | None
    error: BaseException
    outcome: Outcome = "dropped"


@attrs.frozen(slots=True)
class PublishEvent:
    """Given to ``on_publish`` hooks after every publish attempt; ``error`` is None on success."""

    broker: str
    topic: str
    envelope: Envelope
    error: BaseException | None = None


@attrs.frozen(slots=True)
class BrokerInfo:
    """A registered broker as :meth:`Registry.info` reports it (never with secrets)."""

    name: str
    driver: str
    codec: str
    subscribers: int
    meta: Mapping[str, Any]


@attrs.frozen(slots=True)
class SubscriptionInfo:
    """A registered subscription as :meth:`Registry.subscriptions` reports it."""

    broker: str
    topic: str
    consumer: str
    group: str | None
    payload: str
    codec: str
    concurrency: int
