"""Topic validation, pattern matching and the topic index."""

from __future__ import annotations

import random

import pytest

from runa_message import TopicError, match_topic
from runa_message.topic import TopicIndex, translate, validate_pattern, validate_topic

#: (pattern, topic, matches): the table the docs show and every driver must deliver.
MATCH_TABLE = [
    ("user.created", "user.created", True),
    ("user.created", "user/created", True),
    ("user.created", "user:created", True),
    ("user.created", "user.created.x", False),
    ("user.created", "user", False),
    ("user.*", "user.created", True),
    ("user.+", "user.created", True),
    ("user.*", "user.created.extra", False),
    ("user.*", "user", False),
    ("user.*", "users.created", False),
    ("*.created", "order/created", True),
    ("*.created", "created", False),
    ("*.*", "a.b", True),
    ("*.*", "a.b.c", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("user.#", "user", True),
    ("user.#", "user.created", True),
    ("user.#", "user.created.extra", True),
    ("user.**", "user/created:extra", True),
    ("user.#", "users", False),
    ("user.#", "usercreated", False),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("**", "x/y", True),
    ("a.*.c.#", "a.b.c", True),
    ("a.*.c.#", "a.b.c.d.e", True),
    ("a.*.c.#", "a.c", False),
    ("a/+/c", "a.b.c", True),
    ("device:*:status", "device/1:status", True),
    ("Usér.*", "Usér.é", True),
    ("user.*", "User.created", False),
    ("a.b", "a.bb", False),
    ("a.b", "a.b.", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCH_TABLE)
def test_match_topic_table(pattern: str, topic: str, expected: bool) -> None:
    assert match_topic(pattern, topic) is expected


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("", "empty"),
        ("a..b", "empty segment"),
        (".a", "empty segment"),
        ("a/", "empty segment"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x00b", "control"),
        ("a.*", "wildcard"),
        ("a.#", "wildcard"),
        ("a.+", "wildcard"),
        ("c++", "wildcard"),
        ("a.>", "wildcard"),
    ],
)
def test_bad_topics_raise_topic_error(topic: str, says: str) -> None:
    with pytest.raises(TopicError) as info:
        validate_topic(topic)
    assert says in str(info.value)


def test_topic_length_limit_names_the_limit() -> None:
    validate_topic("a" * 10, max_length=10)
    with pytest.raises(TopicError, match="limit of 10"):
        validate_topic("a" * 11, max_length=10)
    with pytest.raises(TopicError, match="limit of 3"):
        validate_topic("éé", max_length=3)  # bytes, not characters


def test_non_string_topic() -> None:
    with pytest.raises(TopicError, match="must be a string"):
        validate_topic(b"a.b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("", "empty"),
        ("a.#.b", "only be the last"),
        ("**.a", "only be the last"),
        ("us*r", "whole segment"),
        ("a.b#", "whole segment"),
        ("a.>", "use '#'"),
        ("a..b", "empty segment"),
        ("a *", "whitespace"),
    ],
)
def test_bad_patterns_raise_topic_error(pattern: str, says: str) -> None:
    with pytest.raises(TopicError) as info:
        validate_pattern(pattern)
    assert says in str(info.value)


def test_translate_to_native_wildcards() -> None:
    assert translate("user/*:#", separator=".", one="*", many=">") == "user.*.>"
    assert translate("a.+.**", separator="/", one="+", many="#") == "a/+/#"


def test_topic_index_agrees_with_match_topic() -> None:
    rng = random.Random(7)
    words = ["a", "b", "c"]
    patterns = set()
    for _ in range(300):
        parts = [rng.choice([*words, "*", "+"]) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            parts.append(rng.choice(["#", "**"]))
        patterns.add(".".join(parts))
    index: TopicIndex[str] = TopicIndex(cache_size=16)
    for pattern in patterns:
        index.add(pattern, pattern)
    for _ in range(500):
        topic = rng.choice("./:").join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        expected = {p for p in patterns if match_topic(p, topic)}
        assert set(index.match(topic)) == expected, topic
        assert set(index.match(topic)) == expected  # from the cache


def test_topic_index_remove() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a.*", "one")
    index.add("a.*", "two")
    index.add("a.#", "many")
    assert set(index.match("a.b")) == {"one", "two", "many"}
    index.remove("a.*", "one")
    index.remove("a.#", "many")
    index.remove("x.y", "absent")  # no error
    assert index.match("a.b") == ("two",)
    assert sorted(index.values()) == ["two"]
