"""Backoff: growing, capped, jittered pauses; reset after a success."""

from __future__ import annotations

import random

import pytest

from runa_message.backoff import Backoff


def test_delays_grow_by_the_factor_up_to_the_maximum() -> None:
    backoff = Backoff(first=0.05, factor=2.0, maximum=0.3, jitter=0)
    assert [backoff.delay() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]


def test_defaults() -> None:
    backoff = Backoff(jitter=0)
    assert backoff.delay() == 0.05
    assert [backoff.delay() for _ in range(8)][-1] == 2.0


def test_reset_starts_again_from_first() -> None:
    backoff = Backoff(first=0.1, maximum=1.0, jitter=0)
    backoff.delay()
    backoff.delay()
    backoff.reset()
    assert backoff.delay() == 0.1


def test_first_is_capped_at_the_maximum() -> None:
    backoff = Backoff(first=1.0, maximum=0.25, jitter=0)
    assert backoff.first == 0.25
    assert [backoff.delay(), backoff.delay()] == [0.25, 0.25]


def test_factor_one_keeps_the_pause() -> None:
    backoff = Backoff(first=0.2, factor=1.0, maximum=1.0, jitter=0)
    assert [backoff.delay() for _ in range(3)] == [0.2, 0.2, 0.2]


def test_jitter_stays_within_its_fraction_and_is_reproducible() -> None:
    first = Backoff(first=1.0, factor=1.0, maximum=1.0, jitter=0.2, rng=random.Random(7))
    second = Backoff(first=1.0, factor=1.0, maximum=1.0, jitter=0.2, rng=random.Random(7))
    delays = [first.delay() for _ in range(200)]
    assert delays == [second.delay() for _ in range(200)]
    assert all(0.8 <= delay <= 1.2 for delay in delays)
    assert min(delays) < 0.9  # it does vary
    assert max(delays) > 1.1


def test_jitter_applies_to_the_grown_pause() -> None:
    backoff = Backoff(first=0.1, factor=2.0, maximum=0.4, jitter=0.5, rng=random.Random(1))
    delays = [backoff.delay() for _ in range(6)]
    bases = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    assert all(base * 0.5 <= d <= base * 1.5 for d, base in zip(delays, bases, strict=True))


@pytest.mark.parametrize(
    "kwargs",
    [{"first": 0}, {"maximum": -1}, {"factor": 0.5}, {"jitter": 1.0}, {"jitter": -0.1}],
)
def test_bad_arguments_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_repr() -> None:
    assert repr(Backoff(jitter=0)) == "Backoff(first=0.05, factor=2.0, maximum=2.0, jitter=0)"
