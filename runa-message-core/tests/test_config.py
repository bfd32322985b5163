"""Configuration files, environment overrides and settings errors that name the culprit."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

import runa_message as message
from runa_message import ConfigError, Registry, load_config
from runa_message.config import positive, structure_settings


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_file_then_environment(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path / "a.toml", '[message.brokers.default]\ndriver = "nats"\n'),
        environ={
            "RUNA_MESSAGE__BROKERS__DEFAULT__DRIVER": "redis",
            "RUNA_MESSAGE__REDIS__PUBLISH_TIMEOUT": "2.5",
            "UNRELATED": "x",
        },
    )
    assert config.brokers()["default"].driver == "redis"
    assert config.driver_settings("redis")[0] == {"publish_timeout": 2.5}


def test_folder_is_read_in_name_order(tmp_path: Path) -> None:
    _write(tmp_path / "10-base.toml", '[message.brokers.default]\ndriver = "nats"\ncodec = "raw"\n')
    _write(tmp_path / "20-override.toml", '[message.brokers.default]\ndriver = "redis"\n')
    _write(tmp_path / "notes.txt", "ignored")
    broker = load_config(tmp_path, environ={}).brokers()["default"]
    assert (broker.driver, broker.codec) == ("redis", "raw")


def test_driver_settings_message_table_over_shared_table() -> None:
    config = message.Config.from_mapping(
        {
            "nats": {"url": "nats://shared", "drain_timeout": 1},
            "message": {"nats": {"url": "nats://specific"}},
        }
    )
    settings, path = config.driver_settings("nats")
    assert settings == {"url": "nats://specific", "drain_timeout": 1}
    assert path.endswith("message.nats")


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.toml", '[message.brokers.default]\ndriver = "nats\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad, environ={})
    assert str(bad) in str(info.value)
    assert "line 2" in str(info.value)
    assert "column" in str(info.value)


def test_missing_path() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/runa.toml", environ={})


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        (
            "[message.brokers.default]\ndriver = 3\n",
            "message.brokers.default.driver: expected a string, got 3",
        ),
        (
            "[message.brokers.default]\ndrvier = 'nats'\n",
            "message.brokers.default.drvier: unknown key (did you mean 'driver'?); valid keys: driver, codec, meta",
        ),
        ("[message.brokers.default]\nmeta = 1\n", "message.brokers.default.meta: expected a table"),
        ("[message]\nbrokers = 1\n", "message.brokers: expected a table"),
        (
            "[message.brokers.default]\ncodec = 'xml'\n",
            "message.brokers.default.codec: unknown codec 'xml'",
        ),
    ],
)
async def test_broker_table_errors_name_file_and_key(tmp_path: Path, toml: str, says: str) -> None:
    path = _write(tmp_path / "app.toml", toml)
    registry = Registry(load_config(path, environ={}))
    with pytest.raises(ConfigError) as info:
        await registry.start()
    assert says in str(info.value)
    assert str(path) in str(info.value)


def test_environment_value_types() -> None:
    config = load_config(
        environ={
            "RUNA_MESSAGE__NATS__URL": '["nats://a:4222", "nats://b:4222"]',
            "RUNA_MESSAGE__NATS__DRAIN_TIMEOUT": "3",
            "RUNA_MESSAGE__NATS__PREFIX": "plain text",
            "RUNA_MESSAGE__NATS__VERBOSE": "true",
        }
    )
    settings, _ = config.driver_settings("nats")
    assert settings == {
        "url": ["nats://a:4222", "nats://b:4222"],
        "drain_timeout": 3,
        "prefix": "plain text",
        "verbose": True,
    }


def test_environment_conflict_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match=r"RUNA_MESSAGE__BROKERS__X: message\.brokers is not a table"
    ):
        load_config(environ={"RUNA_MESSAGE__BROKERS": "1", "RUNA_MESSAGE__BROKERS__X": "2"})


async def test_config_applies_to_registered_brokers_and_warns_for_others() -> None:
    registry = Registry(
        {
            "message": {
                "brokers": {
                    "default": {"codec": "raw", "meta": {"team": "a", "x": 1}},
                    "ghost": {"driver": "memory"},
                }
            }
        }
    )
    registry.broker("default", meta={"x": 2})
    with pytest.warns(UserWarning, match=r"\[message.brokers.ghost\].*no code registers"):
        await registry.start()
    try:
        (info,) = registry.info()
        assert info.codec == "application/octet-stream"
        assert info.meta == {"team": "a", "x": 2}  # code wins
    finally:
        await registry.close()


async def test_code_options_win_over_config() -> None:
    registry = Registry({"message": {"brokers": {"default": {"driver": "nope", "codec": "raw"}}}})
    registry.broker("default", driver="memory", codec="json")
    async with registry:
        (info,) = registry.info()
    assert (info.driver, info.codec) == ("memory", "application/json")


async def test_unknown_memory_setting_is_reported() -> None:
    registry = Registry({"message": {"memory": {"size": 3}}})
    with pytest.raises(ConfigError, match=r"message\.memory\.size: unknown setting"):
        await registry.start()


@attrs.frozen
class Settings:
    url: str = "x://"
    port: int = 1
    timeout: float = 1.0
    tls: bool = False
    servers: list[str] = attrs.field(factory=list)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"url": 3}, "cfg.url: expected a string, got 3"),
        ({"port": "80"}, "cfg.port: expected an integer, got the string '80'"),
        ({"port": True}, "cfg.port: expected an integer, got true"),
        ({"timeout": "soon"}, "cfg.timeout: expected a number"),
        ({"tls": 1}, "cfg.tls: expected true or false, got 1"),
        ({"servers": "a"}, "cfg.servers"),
        ({"prot": 1}, "cfg.prot: unknown setting (did you mean 'port'?)"),
    ],
)
def test_structure_settings_errors(data: dict, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        structure_settings(Settings, data, "cfg")
    assert says in str(info.value)


def test_structure_settings_accepts_good_values() -> None:
    assert structure_settings(
        Settings, {"port": 2, "timeout": 3, "servers": ["a"]}, "cfg"
    ) == Settings(port=2, timeout=3.0, servers=["a"])


@attrs.frozen
class Timeouts:
    wait: float = attrs.field(default=1.0, validator=positive())
    interval: float = attrs.field(default=30.0, validator=positive(zero=True))
    limit: int = attrs.field(default=10, validator=positive("a count"))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"wait": 0}, "cfg.wait: must be a number of seconds above zero, got 0"),
        ({"wait": -1.5}, "cfg.wait: must be a number of seconds above zero, got -1.5"),
        ({"wait": float("nan")}, "cfg.wait: must be a number of seconds above zero, got nan"),
        ({"interval": -1}, "cfg.interval: must be a number of seconds above zero (or zero)"),
        ({"limit": 0}, "cfg.limit: must be a count above zero, got 0"),
    ],
)
def test_positive_validator_messages_name_the_key(data: dict, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        structure_settings(Timeouts, data, "cfg")
    assert says in str(info.value)


def test_positive_validator_accepts_good_values() -> None:
    assert Timeouts(wait=0.1, interval=0, limit=1) == Timeouts(0.1, 0, 1)
    with pytest.raises(ValueError, match=r"^wait: must be a number of seconds above zero"):
        Timeouts(wait=0)
    with pytest.raises(TypeError, match=r"^wait: expected a number of seconds, got str"):
        Timeouts(wait="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^limit: expected a count, got bool"):
        Timeouts(limit=True)
