"""Settings: defaults, validation with key paths, credentials, and no secrets in repr."""

from __future__ import annotations

import pytest

from runa_message.errors import ConfigError
from runa_message_mqtt import MqttSettings
from runa_message_mqtt.settings import Endpoint


def test_defaults_point_at_the_local_broker() -> None:
    settings = MqttSettings()
    assert settings.url == "mqtt://127.0.0.1:1883"
    assert settings.prefix == "runa/message/"
    assert settings.qos == 1
    assert settings.retained is False
    assert settings.publish_timeout == 5.0
    assert settings.timeout == 10.0
    assert settings.version == "5"
    assert settings.client_id == ""
    assert settings.endpoint() == Endpoint("127.0.0.1", 1883, False, None, None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", Endpoint("broker", 1883, False)),
        ("mqtts://broker", Endpoint("broker", 8883, True)),
        ("mqtt://broker:1999/", Endpoint("broker", 1999, False)),
        ("mqtt://[::1]:1884", Endpoint("::1", 1884, False)),
        ("mqtt://al%40ce:p%3Ass@broker", Endpoint("broker", 1883, False, "al@ce", "p:ss")),
        ("mqtt://token@broker", Endpoint("broker", 1883, False, "token", None)),
    ],
)
def test_urls(url: str, expected: Endpoint) -> None:
    endpoint = MqttSettings(url=url).endpoint()
    assert endpoint == expected
    assert (endpoint.username, endpoint.password) == (expected.username, expected.password)


def test_settings_credentials_win_over_the_url() -> None:
    settings = MqttSettings(url="mqtt://a:b@broker", username="c", password="d")
    endpoint = settings.endpoint()
    assert (endpoint.username, endpoint.password) == ("c", "d")
    assert settings.where == "mqtt://broker:1883"


def test_secrets_are_not_in_repr() -> None:
    settings = MqttSettings(url="mqtts://user:hunter2@broker", password="sesame")
    text = repr(settings)
    assert "hunter2" not in text
    assert "sesame" not in text
    assert "user:***@broker" in text
    assert "password='***'" in text
    assert "hunter2" not in repr(settings.endpoint())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("url", "http://broker", "mqtt:// .plain TCP. or mqtts://"),
        ("url", "mqtt://", "has no host"),
        ("url", "mqtt://broker/topic", "set the topic prefix"),
        ("url", "mqtt://broker:99999", "not a valid URL"),
        ("qos", 3, "qos must be 0"),
        ("version", "3.1", 'version must be "5"'),
        ("prefix", "a/+/", "MQTT topic names may not contain"),
        ("publish_timeout", 0, "publish_timeout: must be a number of seconds above zero, got 0"),
        ("timeout", -1.0, "timeout: must be a number of seconds above zero, got -1.0"),
        ("keepalive", 0, "keepalive must be between"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        MqttSettings.from_mapping({key: value})
    assert str(info.value).startswith("message.mqtt")


def test_bad_url_errors_hide_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        MqttSettings.from_mapping({"url": "http://user:hunter2@broker"})
    assert "hunter2" not in str(info.value)


def test_unknown_keys_and_wrong_types() -> None:
    with pytest.raises(ConfigError, match=r"message\.mqtt\.urll: unknown setting.*'url'"):
        MqttSettings.from_mapping({"urll": "mqtt://x"})
    with pytest.raises(ConfigError, match=r"message\.mqtt\.qos"):
        MqttSettings.from_mapping({"qos": "1"})
    with pytest.raises(ConfigError, match=r"message\.mqtt\.retained"):
        MqttSettings.from_mapping({"retained": 1})


def test_from_mapping_reads_every_setting() -> None:
    settings = MqttSettings.from_mapping(
        {
            "url": "mqtts://broker:8884",
            "client_id": "svc-1",
            "username": "u",
            "password": "p",
            "prefix": "app/",
            "qos": 0,
            "retained": True,
            "timeout": 3,
            "publish_timeout": 1.5,
            "version": "3.1.1",
            "keepalive": 30,
            "ca_file": "/etc/ca.pem",
            "cert_file": "/etc/client.pem",
            "key_file": "/etc/client.key",
            "tls_insecure": True,
        }
    )
    assert settings.timeout == 3.0
    assert settings.version == "3.1.1"
    assert settings.endpoint().tls
