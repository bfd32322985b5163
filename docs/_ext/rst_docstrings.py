"""A griffe extension: the reST bits of runa-message's docstrings, rendered as Markdown.

The docstrings are written for ``help()`` and Sphinx-like readers: ``literal``, roles such as
:class:`~runa_message.Envelope`, ``.. code-block::`` directives, ``::`` literal blocks,
simple tables, ``>>>`` examples and ``#:`` comments on attributes. mkdocstrings renders
Markdown, so this turns each of them into its Markdown form before the docstring is
rendered. Loaded by mkdocs.yml (mkdocstrings ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|mod|attr|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+?)``")
_DIRECTIVE = re.compile(r"^\.\. code-block::\s*(\w*)\s*$")
_TABLE_RULE = re.compile(r"^=+(?: +=+)+$")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _inline(text: str) -> str:
    return _LITERAL.sub(r"`\1`", _ROLE.sub(_role, text))


def _indented_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The indented lines from ``start`` (blank lines inside kept), dedented; and the next index."""
    block: list[str] = []
    i = start
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
        block.append(lines[i])
        i += 1
    while block and not block[-1].strip():
        block.pop()
        i -= 1
    width = min((len(line) - len(line.lstrip()) for line in block if line.strip()), default=0)
    return [line[width:] for line in block], i


def _table(rows: list[str]) -> list[str]:
    """A reST simple table (``===`` rules) as a Markdown table."""
    rule = rows[0]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]

    def cells(line: str) -> list[str]:
        out = []
        for index, (start, _end) in enumerate(spans):
            stop = spans[index + 1][0] if index + 1 < len(spans) else len(line)
            out.append(_inline(line[start:stop].strip()))
        return out

    body = [row for row in rows[1:] if row.strip() and not _TABLE_RULE.match(row.strip())]
    header, data = cells(body[0]), [cells(row) for row in body[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in data]
    return lines


def convert(text: str) -> str:
    """Return ``text`` (a cleaned docstring) with its reST constructs in Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line.strip())
        if directive:
            block, i = _indented_block(lines, i + 1)
            out += [f"```{directive.group(1) or 'text'}", *block[_skip_blank(block) :], "```"]
            continue
        if line.startswith(">>> "):
            out.append("```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append("```")
            continue
        if _TABLE_RULE.match(line.strip()):
            rows = []
            while i < len(lines) and lines[i].strip():
                rows.append(lines[i])
                i += 1
            out += ["", *_table(rows), ""]
            continue
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            block, after = _indented_block(lines, i + 1)
            if any(row.strip() for row in block):
                head = line.rstrip()[:-2].rstrip()
                out.append(_inline(head) + (":" if head else ""))
                out += ["", "```python", *block[_skip_blank(block) :], "```"]
                i = after
                continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out)


def _skip_blank(block: list[str]) -> int:
    index = 0
    while index < len(block) and not block[index].strip():
        index += 1
    return index


def _comment_docstring(attr: griffe.Attribute) -> str | None:
    """The ``#:`` comment lines right above an attribute, as Sphinx reads them."""
    if attr.lineno is None or attr.parent is None:
        return None
    try:
        lines = attr.parent.lines_collection[attr.filepath]  # type: ignore[index]
    except (KeyError, TypeError, AttributeError):
        return None
    found: list[str] = []
    index = attr.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(found) or None


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring from reST idioms to Markdown as objects are loaded.

    Attributes documented with ``#:`` comments get those comments as their docstring.
    """

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Convert the docstring of ``obj``, if it has one."""
        if obj.docstring is None and isinstance(obj, griffe.Attribute):
            text = _comment_docstring(obj)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
