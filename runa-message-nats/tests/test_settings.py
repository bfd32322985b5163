"""NatsSettings: defaults, validation with key paths, config merging, no secrets in repr."""

from __future__ import annotations

import pytest

from runa_message.config import Config
from runa_message.errors import ConfigError
from runa_message_nats import NatsSettings, driver
from runa_message_nats.settings import CAPABILITIES


def test_defaults_point_at_the_local_broker() -> None:
    settings = NatsSettings()
    assert settings.url == ("nats://127.0.0.1:4222",)
    assert settings.prefix == "runa.message."
    assert settings.publish_timeout == 5.0
    assert settings.drain_timeout > 0
    assert settings.max_reconnect_attempts == -1
    assert not settings.tls


def test_one_url_or_a_list_of_cluster_servers() -> None:
    assert NatsSettings(url="nats://a:4222").url == ("nats://a:4222",)
    cluster = ["nats://a:4222", "nats://b:4222", "tls://c:4443"]
    assert NatsSettings(url=cluster).url == tuple(cluster)
    assert NatsSettings.from_mapping({"url": "nats://a:4222"}).url == ("nats://a:4222",)
    assert NatsSettings.from_mapping({"url": cluster}).url == tuple(cluster)
    assert NatsSettings(url="tls://a:4443").tls


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://127.0.0.1:6379", "nats:// (plain) or tls://"),
        ("127.0.0.1:4222", "nats:// (plain) or tls://"),
        ("nats://", "no host"),
        ([], "at least one server URL"),
    ],
)
def test_bad_urls_are_config_errors_with_the_key(url: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=r"message\.nats") as info:
        NatsSettings.from_mapping({"url": url})
    assert needle in str(info.value)
    assert "url" in str(info.value)


def test_bad_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        NatsSettings.from_mapping({"url": "redis://user:hunter2@host:1"})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("prefix", "ok"),
    [("runa.message.", True), ("", True), ("app.", True), ("app", False), ("a..b.", False),
     (".a.", False), ("a.>.", False), ("a.*.", False), ("a b.", False)],
)  # fmt: skip
def test_prefix_validation(prefix: str, ok: bool) -> None:
    if ok:
        assert NatsSettings(prefix=prefix).prefix == prefix
    else:
        with pytest.raises(ConfigError, match="prefix"):
            NatsSettings.from_mapping({"prefix": prefix})


def test_unknown_key_names_the_path_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"message\.nats\.prefx.*did you mean 'prefix'"):
        NatsSettings.from_mapping({"prefx": "a."})


def test_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="publish_timeout"):
        NatsSettings.from_mapping({"publish_timeout": "soon"})


def test_timeouts_must_be_positive() -> None:
    for key in ("publish_timeout", "drain_timeout", "connect_timeout", "reconnect_time_wait"):
        with pytest.raises(ConfigError, match=key):
            NatsSettings.from_mapping({key: 0})


def test_credentials_one_way_only() -> None:
    with pytest.raises(ConfigError, match="user and password go together"):
        NatsSettings.from_mapping({"user": "a"})
    with pytest.raises(ConfigError, match="choose one way"):
        NatsSettings.from_mapping({"user": "a", "password": "b", "token": "t"})
    assert NatsSettings(token="t").token == "t"
    assert NatsSettings(creds_file="/x.creds").creds_file == "/x.creds"


def test_repr_never_shows_secrets() -> None:
    settings = NatsSettings(
        url=["nats://alice:pw-in-url@a:4222", "nats://tok-in-url@b:4222"],
        user="bob",
        password="pw-field",
    )
    text = repr(settings)
    for secret in ("pw-in-url", "tok-in-url", "pw-field"):
        assert secret not in text
    assert "alice:***@a:4222" in text
    assert "'***'" in text
    assert "s3cr3t" not in repr(NatsSettings(token="s3cr3t"))
    assert set(settings.secrets) == {"pw-in-url", "tok-in-url", "pw-field"}


def test_message_nats_wins_over_nats() -> None:
    config = Config.from_mapping(
        {
            "nats": {"url": "nats://shared:4222", "prefix": "shared."},
            "message": {"nats": {"prefix": "mine."}},
        }
    )
    table, path = config.driver_settings("nats")
    settings = NatsSettings.from_mapping(table, path)
    assert settings.url == ("nats://shared:4222",)
    assert settings.prefix == "mine."


def test_driver_factory_takes_settings_as_keywords() -> None:
    made = driver(url="nats://127.0.0.1:4999", prefix="app.", publish_timeout=1.5)
    assert made.settings.prefix == "app."
    assert made.settings.publish_timeout == 1.5
    with pytest.raises(ConfigError, match="prefx"):
        driver(prefx="a.")


def test_capabilities_follow_the_prefix() -> None:
    caps = NatsSettings().capabilities
    assert caps.wildcards
    assert caps.groups
    assert not caps.ack
    assert not caps.persistent
    assert caps.max_topic_length == 4000 - len("runa.message.")
    assert NatsSettings(prefix="").capabilities.max_topic_length == 4000
    assert caps == CAPABILITIES
