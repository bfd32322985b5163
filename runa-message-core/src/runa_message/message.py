"""The values that flow through runa-message: envelopes, typed messages and hook events."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import attrs

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


@attrs.frozen(slots=True)
class Message(Generic[T]):
    """A message as a handler sees it: the payload decoded into ``T``.

    ``topic`` is the topic as it was published, also when the subscription used a wildcard.
    """

    id: str
    topic: str
    payload: T
    headers: Mapping[str, Any]
    created_at: datetime


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
