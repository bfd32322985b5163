"""Message ids: 32 hex digits, unique across processes, one width for every counter value."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys

import pytest

from runa_message import ids
from runa_message.ids import new_id

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_unique_across_processes() -> None:
    code = "from runa_message.ids import new_id; print('\\n'.join(new_id() for _ in range(2000)))"
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(3)
    ]
    found = [line for run in runs for line in run.stdout.split()]
    assert len(found) == 6000
    assert len(set(found)) == 6000
    assert all(HEX32.fullmatch(i) for i in found)


def test_ids_differ_in_a_forked_child() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    parent = new_id()
    assert child[:20] != parent[:20]


def test_the_counter_counts_across_the_last_two_digits() -> None:
    made = [new_id() for _ in range(1000)]  # crosses at least three blocks of 256
    assert all(HEX32.fullmatch(i) for i in made)
    assert len({i[:20] for i in made}) == 1  # one process, one prefix
    counters = [int(i[20:], 16) for i in made]
    assert counters == list(range(counters[0], counters[0] + 1000))


def test_after_2_to_the_48_ids_a_new_prefix_keeps_them_unique(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = ids._LIMIT - 3
    monkeypatch.setattr(ids, "_counter", itertools.count(start))
    ids._new_block(start)
    made = [new_id() for _ in range(6)]
    assert [int(i[20:], 16) for i in made[:3]] == [start, start + 1, start + 2]
    assert all(HEX32.fullmatch(i) for i in made)
    assert made[3][:20] != made[2][:20]  # reseeded: another random prefix
    assert len(set(made)) == 6
