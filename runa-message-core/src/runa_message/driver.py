"""The driver contract: what a broker driver implements, and what the registry hands it.

A driver only moves frames. The registry validates topics, encodes and decodes payloads,
filters wildcard deliveries with :func:`~runa_message.match_topic`, runs middleware, error
hooks, concurrency and ordering, so a driver for a new broker is small: connect, publish
bytes, subscribe with the broker's nearest wildcard, hand each frame to ``handler``.

The call contract of ``handler``:

- Pass the :class:`Envelope` itself (in-process drivers) or the raw frame ``bytes`` exactly
  as received; the registry decodes bytes with :mod:`runa_message.wire`.
- A frame that is not an envelope is reported to ``on_error`` as
  :class:`~runa_message.DecodeError` and the error is raised back to the driver, so a driver
  with acknowledgements can dead-letter it at once. The same holds for a payload that does
  not fit the handler's type: a :class:`~runa_message.DecodeError` is permanent, so ack
  drivers dead-letter (or drop) it at once and never retry it.
- A driver whose ``capabilities.ack`` is false gets control back as soon as the message is
  queued for its subscription; the call waits while that bounded queue is full, which is the
  driver's backpressure. Handler failures are reported by the registry, never raised back.
- A driver whose ``capabilities.ack`` is true gets control back when the handler finished:
  returning means handled (ack it), raising means not handled (retry or dead-letter it).
  Such a driver calls ``handler`` concurrently, up to its prefetch; the registry runs at most
  the subscription's ``concurrency`` at once, in arrival order. Before the call it says what
  it will do if the handling fails, with ``retry`` and ``dead_letter``, so ``on_error`` can
  tell the user.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs

from .message import Envelope, Outcome

__all__ = ["Capabilities", "Driver", "Handler", "Subscription"]


@attrs.frozen
class Capabilities:
    """What a driver can do; the registry refuses at ``start()`` what a driver cannot.

    ``wildcards``: patterns with ``*`` and ``#``. ``groups``: competing consumers.
    ``ack``: at-least-once delivery with acknowledgements after the handler.
    ``persistent``: messages wait for a group member that is away.
    ``max_topic_length``: the longest topic, in UTF-8 bytes, that can be published.
    """

    wildcards: bool = True
    groups: bool = False
    ack: bool = False
    persistent: bool = False
    max_topic_length: int | None = None


class Handler(Protocol):
    """The callable the registry gives :meth:`Driver.subscribe`; see the module docs."""

    async def __call__(
        self, frame: Envelope | bytes, /, *, retry: bool = False, dead_letter: bool = False
    ) -> None:
        """Hand over one frame. ``retry``/``dead_letter``: what the driver does on failure."""
        ...

    async def report(
        self, error: BaseException, data: bytes | None = None, *, outcome: Outcome = "dropped"
    ) -> None:
        """Report a driver-side problem of this subscription (slow consumer, lost frames).

        ``outcome`` says what became of the message ``data`` belongs to, if any: for
        example ``"dead-lettered"`` for one the broker redelivered too often.
        """
        ...


@runtime_checkable
class Subscription(Protocol):
    """An active subscription on the broker."""

    async def close(self) -> None:
        """Stop receiving; idempotent. Frames already handed over are still handled."""
        ...


@runtime_checkable
class Driver(Protocol):
    """A broker driver. One instance serves one registry broker.

    ``repr(driver)`` must not show secrets (passwords, tokens in URLs).
    """

    capabilities: Capabilities

    async def start(self) -> None:
        """Connect; called once by ``registry.start()`` before any subscribe or publish."""
        ...

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Send ``envelope`` on ``topic``; raise :class:`PublishError` when it cannot.

        During an outage wait at most the driver's ``publish_timeout``, then raise.
        """
        ...

    async def subscribe(
        self, pattern: str, consumer: str, group: str | None, handler: Handler
    ) -> Subscription:
        """Subscribe to ``pattern`` (validated runa syntax); return once the broker confirmed.

        ``group`` None is a broadcast subscription; otherwise each message goes to one member
        of the group (same group name and pattern). ``consumer`` names the subscription.
        """
        ...

    async def close(self) -> None:
        """Close subscriptions and the connection the driver created; idempotent.

        Never close a client the user passed in.
        """
        ...
