"""redact_url, url_secrets and describe_error: no secrets in reprs, logs and errors."""

from __future__ import annotations

import pytest

from runa_message.redact import describe_error, redact_url, url_secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("nats://token@host", "nats://***@host"),
        ("amqp://host/", "amqp://host/"),
        ("redis://:pw@host", "redis://:***@host"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", ("guest",)),
        ("amqp://guest:p%40ss@host/", ("p@ss", "p%40ss")),
        ("redis://:s3cret@host:6379/0", ("s3cret",)),
        ("nats://tok-in-url@host:4222", ("tok-in-url",)),
        ("nats://t%2Fok@host", ("t/ok", "t%2Fok")),
        ("nats://host:4222", ()),
        ("mqtt://user:@host", ()),
        ("http://[::1", ()),
    ],
)
def test_url_secrets(url: str, secrets: tuple[str, ...]) -> None:
    assert url_secrets(url) == secrets


def test_describe_error() -> None:
    assert describe_error(None) == "unknown error"
    assert describe_error(ValueError("bad value")) == "ValueError: bad value"
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(KeyError("k")) == "KeyError: 'k'"


def test_describe_error_hides_secrets() -> None:
    error = ConnectionError("login as alice with s3cret-pw (p%40ss) refused")
    text = describe_error(error, ("s3cret-pw", "p@ss", "p%40ss", "pw", "alice"))
    assert text == "ConnectionError: login as *** with *** (***) refused"


def test_describe_error_leaves_short_secrets() -> None:
    assert describe_error(OSError("pw is abc"), ["pw", "abc", ""]) == "OSError: pw is abc"


def test_describe_error_takes_url_secrets() -> None:
    url = "amqp://guest:hunter22@host/"
    text = describe_error(RuntimeError(f"cannot open {url}"), url_secrets(url))
    assert "hunter22" not in text
    assert text == "RuntimeError: cannot open amqp://guest:***@host/"
