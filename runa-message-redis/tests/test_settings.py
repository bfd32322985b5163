"""RedisSettings: defaults, validation, config tables, TLS options, no secrets in reprs."""

from __future__ import annotations

import pytest

from runa_message.config import Config
from runa_message.errors import ConfigError
from runa_message_redis import RedisSettings, driver
from runa_message_redis.driver import native_name


def test_defaults_point_at_the_local_server() -> None:
    settings = RedisSettings()
    assert settings.url == "redis://127.0.0.1:6379/0"
    assert settings.prefix == "runa:message:"
    assert settings.publish_timeout == 5.0
    assert settings.tls is False
    assert settings.tls_options() == {}


def test_repr_redacts_the_password() -> None:
    settings = RedisSettings(url="rediss://user:hunter2@cache.example:6380/1")
    assert "hunter2" not in repr(settings)
    assert "user:***@cache.example:6380" in repr(settings)
    assert "hunter2" not in repr(driver(url="redis://:hunter2@localhost/0"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "http://localhost"}, "redis:// (plain TCP) or rediss://"),
        ({"url": "redis://:pw@host/x"}, "database number"),
        ({"url": "redis://"}, "names no host"),
        ({"url": "redis://host:port"}, "not a valid URL"),
        ({"url": "redis://host/0?password=pw"}, "put the password in the user part"),
        ({"publish_timeout": 0}, "publish_timeout: must be a number of seconds above zero"),
        ({"publish_timeout": -1.5}, "above zero, got -1.5"),
        ({"health_check_interval": -1}, "above zero (or zero), got -1"),
        ({"tls_verify": False}, "need a rediss:// url"),
        ({"url": "rediss://h", "tls_key_file": "k.pem"}, "set tls_cert_file too"),
    ],
)
def test_bad_values_say_what_to_do(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RedisSettings(**settings)  # type: ignore[arg-type]


def test_no_secret_in_url_errors() -> None:
    with pytest.raises(ValueError) as info:
        RedisSettings(url="http://user:hunter2@host")
    assert "hunter2" not in str(info.value)


def test_from_mapping_unknown_key_and_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"message\.redis\.prefx: unknown setting.*'prefix'"):
        RedisSettings.from_mapping({"prefx": "x"})
    with pytest.raises(ConfigError, match=r"message\.redis\.publish_timeout"):
        RedisSettings.from_mapping({"publish_timeout": "3"})


def test_from_mapping_bad_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="redis://") as info:
        RedisSettings.from_mapping({"url": "http://user:hunter2@host"}, "app.toml: message.redis")
    assert "app.toml: message.redis" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_message_redis_wins_over_redis() -> None:
    config = Config.from_mapping(
        {
            "redis": {"url": "redis://shared:6379/0", "prefix": "shared:"},
            "message": {"redis": {"prefix": "app:"}},
        }
    )
    table, _path = config.driver_settings("redis")
    settings = RedisSettings.from_mapping(table)
    assert settings.url == "redis://shared:6379/0"
    assert settings.prefix == "app:"


def test_tls_options() -> None:
    settings = RedisSettings(
        url="rediss://localhost:6380/0",
        tls_ca_file="ca.pem",
        tls_cert_file="client.pem",
        tls_key_file="client.key",
    )
    assert settings.tls
    assert settings.tls_options() == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": "ca.pem",
        "ssl_certfile": "client.pem",
        "ssl_keyfile": "client.key",
    }
    insecure = RedisSettings(url="rediss://localhost", tls_verify=False)
    assert insecure.tls_options() == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}


def test_driver_keywords_are_checked_like_config() -> None:
    with pytest.raises(ConfigError, match=r"redis\.prefx"):
        driver(prefx="x")


@pytest.mark.parametrize(
    ("pattern", "glob", "name"),
    [
        ("user", False, "p:user"),
        ("user.created", True, "p:user[./:]created"),
        ("user.*", True, "p:user[./:]*"),
        ("user.+.x", True, "p:user[./:]*[./:]x"),
        ("user.#", True, "p:user*"),
        ("user/**", True, "p:user*"),
        ("*.#", True, "p:*"),
        ("#", True, "p:*"),
        ("*", True, "p:*"),
        ("a?[b]\\c.*", True, "p:a\\?\\[b\\]\\\\c[./:]*"),
        ("a?b", False, "p:a?b"),
    ],
)
def test_native_names(pattern: str, glob: bool, name: str) -> None:
    assert native_name("p:", pattern) == (glob, name.encode())


def test_native_name_escapes_the_prefix() -> None:
    assert native_name("a*[", "x.*") == (True, b"a\\*\\[x[./:]*")
    assert native_name("a*[", "x") == (False, b"a*[x")
