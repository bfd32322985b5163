"""Every code example in README.md and docs/ runs, and prints what the page says it prints.

How pages are read (the conventions every page follows):

- A ```python block is a program: it runs with this interpreter in a fresh temporary folder
  and must exit 0. Blocks that need a broker run against the local ones (Redis 6379,
  NATS 4222, RabbitMQ 5672, Mosquitto 1883); they fail when the broker is down.
- ``<!-- docs-test: continue -->`` on the line above a fence: the block continues the
  previous python block of the page; the blocks run together as one program.
- ``<!-- docs-test: background -->`` above a ```bash block: its commands run in the
  background while the rest of the page runs (a ``runa-message listen`` waiting for the
  ``runa-message publish`` below it). Its first line of output means it is ready; at the end
  of the page it must exit 0 (it gets SIGINT if it is still running after a while).
- A fence with ``title="name"`` that is not python (``toml``, ``json``...) is a file: it is
  written into the folder under that name before the blocks after it run. A python block
  with a title is written too (``runa-message run app:registry`` imports it), and also run.
  Files with the same title in the tabs of one tab group are variants: each block after
  them runs once per variant (the quick start on memory, Redis, NATS, AMQP and MQTT).
- A ``text`` block titled ``Output`` right after a block is what that block prints
  (stdout and stderr as a terminal shows them). ``...`` stands for any text. A block must
  exit 0: a command that is meant to fail is shown as ``cmd || echo "exit code $?"``.
- In ```bash blocks, lines that run ``runa-message`` or ``python some/file.py`` are executed
  (README lines from the repository root); ``pip install``, ``python -m pytest`` and the
  like are shown, not run.

No marker skips a block: a fragment is shown as part of a whole program instead.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TIMEOUT = 90.0
MARKERS = {"continue", "background"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})\s*(?P<info>.*)$")
_TAB = re.compile(r'^(?P<indent>[ \t]*)===\+?\s+"(?P<label>[^"]*)"')
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<what>[\w-]+)\s*-->$")
_TITLE = re.compile(r'title="(?P<title>[^"]*)"')
_ENV = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*")
_RUNNABLE = re.compile(r"^(?:runa-message\b|python3?\s+[\w./-]+\.py\b)|\|\s*runa-message\b")


@attrs.frozen
class Block:
    """One fenced block of a page."""

    path: Path
    line: int
    lang: str
    title: str | None
    marker: str | None
    text: str
    tab: tuple[int, str] | None  # (tab group, tab label)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse(path: Path) -> list[Block]:
    """The fenced blocks of a markdown page, with their markers and tabs."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    group = 0
    tab: tuple[int, str] | None = None
    tab_indent = -1
    previous = ""  # the last non-blank line before a fence
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        tab_match = _TAB.match(line)
        if tab_match:
            if tab is None or len(tab_match["indent"]) != tab_indent:
                group += 1
            tab_indent = len(tab_match["indent"])
            tab = (group, tab_match["label"])
            previous = stripped
            i += 1
            continue
        if tab is not None and stripped and indent <= tab_indent:
            tab = None
        fence = _FENCE.match(line)
        if not fence:
            if stripped:
                previous = stripped
            i += 1
            continue
        ticks, fence_indent = fence["ticks"], fence["indent"]
        info = fence["info"].strip()
        lang = info.split()[0].lstrip(".").lower() if info else ""
        title_match = _TITLE.search(info)
        marker_match = _MARKER.match(previous)
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(ticks) and lines[i].strip().strip(ticks[0]) == ""
        ):
            text = lines[i]
            body.append(text[len(fence_indent) :] if text.startswith(fence_indent) else text)
            i += 1
        blocks.append(
            Block(
                path,
                i - len(body),
                lang,
                title_match["title"] if title_match else None,
                marker_match["what"] if marker_match else None,
                "\n".join(body) + "\n",
                tab,
            )
        )
        previous = ""
        i += 1
    return blocks


def pages() -> list[Path]:
    """README.md, each distribution's README, then every page of the docs."""
    found = [ROOT / "README.md", *sorted(ROOT.glob("runa-message-*/README.md"))]
    return found + sorted(DOCS.rglob("*.md"))


def _executed(block: Block) -> bool:
    return block.lang == "python" or bool(block.lang in ("bash", "sh") and _commands(block))


def _commands(block: Block) -> list[str]:
    """The lines of a bash block that are run (continuations joined, comments dropped)."""
    joined = block.text.replace("\\\n", " ")
    commands = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _RUNNABLE.search(_ENV.sub("", line)):
            commands.append(line)
    return commands


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNA_MESSAGE")}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def _matches(expected: str, output: str) -> bool:
    want = "\n".join(line.rstrip() for line in expected.strip("\n").splitlines())
    got = "\n".join(line.rstrip() for line in output.strip("\n").splitlines())
    pattern = ".*?".join(re.escape(part) for part in want.split("..."))
    return re.fullmatch(pattern, got, re.DOTALL) is not None


class Page:
    """Runs the blocks of one page in order, in one folder."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder
        self.blocks = parse(path)
        self.files: dict[str, tuple[int | None, list[tuple[str, str]]]] = {}
        self.background: list[tuple[Block, _Reader, Block | None]] = []
        self.script = ""
        self.env = _environment()
        self.cwd = ROOT if path.parent == ROOT else folder

    def run(self) -> int:
        count = 0
        try:
            for index, block in enumerate(self.blocks):
                after = self.blocks[index + 1] if index + 1 < len(self.blocks) else None
                output = after if after is not None and after.title == "Output" else None
                if block.marker is not None and block.marker not in MARKERS:
                    pytest.fail(f"{block.where}: unknown marker docs-test: {block.marker}")
                if block.title and block.title != "Output" and block.lang != "python":
                    self._add_file(block)
                if block.lang == "python":
                    self._python(block, output)
                    count += 1
                elif _executed(block):
                    if block.marker == "background":
                        self._start_background(block, output)
                    else:
                        self._bash(block, output)
                    count += 1
        finally:
            self._finish_background()
        return count

    def _add_file(self, block: Block) -> None:
        assert block.title is not None
        group = block.tab[0] if block.tab else None
        label = block.tab[1] if block.tab else ""
        known = self.files.get(block.title)
        if known is not None and group is not None and known[0] == group:
            known[1].append((label, block.text))
        else:
            self.files[block.title] = (group, [(label, block.text)])

    def _variants(self) -> Iterator[str]:
        """Write each combination of file variants into the folder; yield its label."""
        names = sorted(self.files)
        for combination in itertools.product(*(self.files[n][1] for n in names)):
            for name, (_label, text) in zip(names, combination, strict=True):
                target = self.folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            yield ", ".join(f"{label}" for label, _ in combination if label)

    def _python(self, block: Block, output: Block | None) -> None:
        if block.marker == "continue":
            if not self.script:
                pytest.fail(f"{block.where}: 'continue' but no python block before it")
            self.script += "\n" + block.text
        else:
            self.script = block.text
        if block.title:
            self.files[block.title] = (None, [("", block.text)])
        script = self.folder / f"_block_{block.line}.py"
        script.write_text(self.script, encoding="utf-8")
        for variant in self._variants():
            result = self._call([sys.executable, str(script)], block, variant)
            self._check(block, output, result.returncode, result.stdout, variant)

    def _bash(self, block: Block, output: Block | None) -> None:
        for variant in self._variants():
            texts, code = [], 0
            for command in _commands(block):
                result = self._call(["bash", "-c", command], block, variant)
                texts.append(result.stdout)
                code = code or result.returncode
            self._check(block, output, code, "".join(texts), variant)

    def _call(
        self, argv: list[str], block: Block, variant: str
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"{block.where}{_label(variant)}: still running after {TIMEOUT:g}s:\n{exc.output}"
            )

    def _check(
        self, block: Block, output: Block | None, code: int, text: str, variant: str
    ) -> None:
        where = f"{block.where}{_label(variant)}"
        if code != 0:
            pytest.fail(f"{where}: exited {code}:\n{text}")
        if output is not None:
            if not _matches(output.text, text):
                pytest.fail(
                    f"{where}: printed\n{text}\nbut the page ({output.where}) says\n{output.text}"
                )
        elif "Traceback (most recent call last)" in text:
            pytest.fail(f"{where}: printed a traceback:\n{text}")

    def _start_background(self, block: Block, output: Block | None) -> None:
        if len(list(self._variants())) > 1:
            pytest.fail(f"{block.where}: a background block cannot run per variant")
        process = subprocess.Popen(
            ["bash", "-c", "\n".join(_commands(block))],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        reader = _Reader(process)
        if not reader.wait(lambda text: bool(text), TIMEOUT):
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{block.where}: printed nothing within {TIMEOUT:g}s (never ready)")
        self.background.append((block, reader, output))

    def _finish_background(self) -> None:
        """Wait for each background block's output (or its exit), then SIGINT it if running."""
        for block, reader, output in self.background:
            process = reader.process
            if output is not None:
                expected = output.text
                reader.wait(lambda text, want=expected: _matches(want, text), TIMEOUT)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                pytest.fail(f"{block.where}: did not stop on SIGINT:\n{reader.text()}")
            reader.thread.join(timeout=5)
            self._check(block, output, process.returncode, reader.text(), "")
        self.background.clear()


class _Reader:
    """Collects what a background process prints, as it prints it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait(self, done: Callable[[str], bool], timeout: float) -> bool:
        """Wait until ``done(output)`` or the process ended; return ``done(output)``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.text()):
                return True
            if self.process.poll() is not None:
                self.thread.join(timeout=5)
                return done(self.text())
            time.sleep(0.02)
        return done(self.text())


def _label(variant: str) -> str:
    return f" [{variant}]" if variant else ""


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize(
    "path", [p for p in pages() if any(_executed(b) for b in parse(p))], ids=_page_id
)
def test_page_examples_run(path: Path, tmp_path: Path) -> None:
    """Every python block of the page runs and prints its Output; runa-message lines run."""
    Page(path, tmp_path).run()


def test_no_block_is_skipped() -> None:
    """There is no skip marker; every python block is a whole program or continues one."""
    for path in pages():
        for block in parse(path):
            assert block.marker in (None, *MARKERS), f"{block.where}: docs-test: {block.marker}"
            if block.lang in ("py", "python3", "pycon"):
                pytest.fail(f"{block.where}: write ```python (a program), not ```{block.lang}")


def test_every_block_is_counted() -> None:
    """The examples exist: the docs hold python programs and CLI commands that run."""
    blocks = [b for path in pages() for b in parse(path) if _executed(b)]
    assert sum(b.lang == "python" for b in blocks) >= 40
    assert any("runa-message" in b.text for b in blocks if b.lang in ("bash", "sh"))


def _toml_literal(value: object) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple) and len(value) == 1:
        return _toml_literal(value[0])
    return f"`{value!r}`"


@pytest.mark.parametrize("driver", ["redis", "nats", "amqp", "mqtt"])
def test_config_reference_lists_every_setting(driver: str) -> None:
    """The configuration page has every setting of each driver, with its default."""
    import importlib

    module = importlib.import_module(f"runa_message_{driver}")
    settings = next(getattr(module, n) for n in module.__all__ if n.endswith("Settings"))
    text = (DOCS / "guide" / "configuration.md").read_text(encoding="utf-8")
    section = text.split(f"### `[message.{driver}]`", 1)[1].split("\n#", 1)[0]
    rows = {
        cells[0].strip("` "): cells[2].strip()
        for line in section.splitlines()
        if line.startswith("| `")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    fields = {field.name: field.default for field in attrs.fields(settings)}
    assert sorted(rows) == sorted(fields), f"[message.{driver}] table differs from {settings}"
    for name, default in fields.items():
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            continue
        assert rows[name] == _toml_literal(default), f"[message.{driver}] {name}"


def test_reference_index_names_every_public_name() -> None:
    """The API reference's index lists everything ``runa_message`` exports."""
    import runa_message

    text = (DOCS / "reference" / "index.md").read_text(encoding="utf-8")
    missing = [name for name in runa_message.__all__ if f"`{name}`" not in text]
    assert not missing, f"docs/reference/index.md does not list {missing}"
