"""Topic and pattern to NATS subject mapping."""

from __future__ import annotations

import pytest

from runa_message_nats.driver import subject_of, subjects_of

P = "runa.message."


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("notice.created", "runa.message.notice.created"),
        ("device/1:status", "runa.message.device.1.status"),
        ("a:b/c.d", "runa.message.a.b.c.d"),
        ("ping", "runa.message.ping"),
    ],
)
def test_topic_to_subject(topic: str, subject: str) -> None:
    assert subject_of(P, topic) == subject


@pytest.mark.parametrize(
    ("pattern", "subjects"),
    [
        ("user.created", ("runa.message.user.created",)),
        ("user/*", ("runa.message.user.*",)),
        ("user.+.x", ("runa.message.user.*.x",)),
        ("user.#", ("runa.message.user.>", "runa.message.user")),
        ("user:**", ("runa.message.user.>", "runa.message.user")),
        ("*.#", ("runa.message.*.>", "runa.message.*")),
        ("#", ("runa.message.>",)),
        ("**", ("runa.message.>",)),
        ("*", ("runa.message.*",)),
        ("a>b.c", ("runa.message.*.c",)),
    ],
)
def test_pattern_to_subjects(pattern: str, subjects: tuple[str, ...]) -> None:
    assert subjects_of(P, pattern) == subjects


def test_empty_prefix() -> None:
    assert subject_of("", "a/b") == "a.b"
    assert subjects_of("", "#") == (">",)
    assert subjects_of("", "a.#") == ("a.>", "a")
