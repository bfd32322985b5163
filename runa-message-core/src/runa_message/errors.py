"""The exceptions of runa-message.

Every error is a :class:`MessageError`, so ``except message.MessageError`` catches all of them.
Each message says what went wrong and what to do next.
"""

from __future__ import annotations

__all__ = [
    "BrokerNotFoundError",
    "ClosedError",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "DriverNotFoundError",
    "EncodeError",
    "MessageError",
    "PublishError",
    "TopicError",
    "UnsupportedFeatureError",
]


class MessageError(Exception):
    """Base class of every error raised by runa-message."""


class ConfigError(MessageError):
    """The configuration is wrong; the message names the file and the key path."""


class DriverNotFoundError(MessageError):
    """No driver of that name is registered in code or installed as a plugin."""


class BrokerNotFoundError(MessageError):
    """A broker name was used that was never registered with ``registry.broker(...)``."""


class TopicError(MessageError, ValueError):
    """A topic or a subscription pattern is not valid."""


class EncodeError(MessageError, TypeError):
    """A payload cannot be encoded by the codec it was published with."""


class DecodeError(MessageError, ValueError):
    """A frame is not an envelope, or a payload does not fit the type it is decoded into."""


class UnsupportedFeatureError(MessageError):
    """A subscription asks for something its driver cannot do (for example a group on Redis)."""


class ConnectError(MessageError, ConnectionError):
    """``start()`` could not reach the broker, or it refused the login; nothing was started."""


class PublishError(MessageError):
    """A publish did not reach the broker: it timed out, or the broker refused it."""


class ClosedError(MessageError):
    """The registry or the driver is closed; nothing more can be published through it."""
