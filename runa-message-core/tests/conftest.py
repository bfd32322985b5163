"""Shared fixtures of the core tests."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
DOCS = HERE.parents[1] / "docs"


@pytest.fixture(scope="session")
def thirdparty_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Install the test-only third-party driver distribution and put it on sys.path.

    It is installed for real (pip, from its own pyproject.toml) into a folder of its own, so
    the environment the other tests see is unchanged.
    """
    target = tmp_path_factory.mktemp("thirdparty")
    if importlib.util.find_spec("pip") is not None:
        installer = [sys.executable, "-m", "pip", "install", "--quiet"]
    else:  # a virtual environment made by uv has no pip
        installer = ["uv", "pip", "install", "--quiet", "--python", sys.executable]
    subprocess.run(
        [
            *installer,
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(HERE / "thirdparty"),
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.startswith("runa_message_echo")]:
            del sys.modules[name]


@pytest.fixture
def thirdparty_env(thirdparty_path: Path) -> dict[str, str]:
    """Environment for subprocesses that should see the third-party driver."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(thirdparty_path), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def page_files() -> Callable[[str], dict[str, str]]:
    """``page_files("testing.md")``: the docs page's fenced blocks titled as files, by title.

    Pages show a whole example as several files (```python title="app.py"); tests write them
    out and run them. A block titled ``Output`` is not a file.
    """

    def files(page: str) -> dict[str, str]:
        found: dict[str, str] = {}
        lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = re.match(r'^```\w+.*title="(?P<title>[^"]+)"', lines[i])
            i += 1
            if match is None or match["title"] == "Output":
                continue
            body = []
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            found[match["title"]] = "\n".join(body) + "\n"
        return found

    return files
