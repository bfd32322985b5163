"""runa-message: typed publish/subscribe for asyncio, with drivers as plugins.

>>> import runa_message as message
>>> message.match_topic("user.*", "user.created")
True
"""

from __future__ import annotations

from .app import (
    App,
    Module,
    Provider,
    configure_driver,
    default,
    provider,
    register_broker,
    register_driver,
)
from .codec import Codec, JSONCodec, RawCodec
from .config import Config, load_config
from .driver import Capabilities, Driver, Handler, Subscription
from .errors import (
    BrokerNotFoundError,
    ClosedError,
    ConfigError,
    ConnectError,
    DecodeError,
    DriverNotFoundError,
    EncodeError,
    MessageError,
    PublishError,
    TopicError,
    UnsupportedFeatureError,
)
from .hookspecs import hookimpl
from .memory import MemoryDriver
from .message import (
    BrokerInfo,
    Envelope,
    ErrorEvent,
    Message,
    Outcome,
    PublishEvent,
    SubscriptionInfo,
)
from .registry import ALL, Broker, Registry
from .topic import match_topic

__all__ = [
    "ALL",
    "App",
    "Broker",
    "BrokerInfo",
    "BrokerNotFoundError",
    "Capabilities",
    "ClosedError",
    "Codec",
    "Config",
    "ConfigError",
    "ConnectError",
    "DecodeError",
    "Driver",
    "DriverNotFoundError",
    "EncodeError",
    "Envelope",
    "ErrorEvent",
    "Handler",
    "JSONCodec",
    "MemoryDriver",
    "Message",
    "MessageError",
    "Module",
    "Outcome",
    "Provider",
    "PublishError",
    "PublishEvent",
    "RawCodec",
    "Registry",
    "Subscription",
    "SubscriptionInfo",
    "TopicError",
    "UnsupportedFeatureError",
    "configure_driver",
    "default",
    "hookimpl",
    "load_config",
    "match_topic",
    "provider",
    "register_broker",
    "register_driver",
]

__version__ = "0.1.0"
