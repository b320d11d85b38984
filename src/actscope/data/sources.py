"""Readers of the real texts found on the build machine, for the default corpus.

Three permissively licensed sources are used, all installed on a standard Linux + CPython
machine: the Python documentation shipped as ``pydoc_data/topics.py`` and the standard library
sources and C headers (PSF License), and PostgreSQL's SQL scripts and translated gettext
catalogs (PostgreSQL License). Every file read is fingerprinted in :class:`InputLog` so that a
rebuild can tell whether it saw the same inputs.
"""

from __future__ import annotations

import ast
import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

PARAGRAPH = re.compile(r"\n[ \t]*\n")


@dataclass
class InputLog:
    """The files a build read: ``label -> sha256`` of their bytes."""

    files: dict[str, str] = field(default_factory=dict)

    def read(self, path: Path, label: str) -> bytes:
        """Read ``path``, recording its sha256 under ``label`` (a machine-independent name)."""
        data = path.read_bytes()
        self.files[label] = hashlib.sha256(data).hexdigest()
        return data


def _split_long(block: str, max_chars: int) -> list[str]:
    """Cut a block longer than ``max_chars`` at line ends (or, for one huge line, anywhere)."""
    pieces: list[str] = []
    current = ""
    for line in block.splitlines(keepends=True):
        while len(line) > max_chars:
            pieces.append(current + line[: max_chars - len(current)])
            line, current = line[max_chars - len(current) :], ""
        if len(current) + len(line) > max_chars:
            pieces.append(current)
            current = ""
        current += line
    if current:
        pieces.append(current)
    return pieces


def pack(blocks: list[str], sep: str, target: int, max_chars: int = 2000) -> list[str]:
    """Greedily join consecutive ``blocks`` into chunks of about ``target`` characters.

    A chunk is closed once it reaches ``target`` or when the next block would take it past
    ``max_chars``; blocks longer than ``max_chars`` are first cut at line ends. A short final
    chunk is merged into the previous one when the result still fits in ``max_chars``.
    """
    pieces = [p for b in blocks for p in (_split_long(b, max_chars) if len(b) > max_chars else [b])]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + len(sep) + len(piece) > max_chars:
            chunks.append(current)
            current = ""
        current = current + sep + piece if current else piece
        if len(current) >= target:
            chunks.append(current)
            current = ""
    if current:
        if (
            chunks
            and len(current) < target // 3
            and len(chunks[-1]) + len(sep) + len(current) <= max_chars
        ):
            chunks[-1] += sep + current
        else:
            chunks.append(current)
    return [c.strip("\n") for c in chunks if c.strip()]


def select_evenly(items: list[str], budget_chars: int) -> list[int]:
    """Indices of an evenly spread subset of ``items`` whose total length is about the budget.

    Item i is kept when floor((i+1) * r) > floor(i * r) with r = budget / total characters, so
    the kept items are spaced uniformly through the list (all of them when r >= 1).
    """
    total = sum(len(t) for t in items)
    if total <= budget_chars:
        return list(range(len(items)))
    ratio = budget_chars / total
    return [i for i in range(len(items)) if int((i + 1) * ratio) > int(i * ratio)]


def topics_dict(source: bytes) -> dict[str, str]:
    """The ``topics`` dict literal of ``pydoc_data/topics.py``, read without executing it."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "topics" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return value
    raise ValueError("pydoc_data/topics.py holds no 'topics' dict")


def _is_prose(paragraph: str) -> bool:
    """A documentation paragraph of running text: not indented (code, grammar), not a rule line."""
    first = paragraph.lstrip("\n").split("\n", 1)[0]
    if not first.strip() or first.startswith("   ") or set(first.strip()) <= set("*=-~^"):
        return False
    return "::=" not in paragraph and ">>>" not in paragraph


def _unwrap(paragraph: str) -> str:
    """Join the hard-wrapped lines of a paragraph, dropping heading underlines."""
    lines = [ln.strip() for ln in paragraph.splitlines()]
    return " ".join(ln for ln in lines if ln and not set(ln) <= set("*=-~^"))


def doc_topics(topics: dict[str, str], budget_chars: int) -> list[tuple[str, str]]:
    """English prose from the Python documentation: ``(topic/k, text)`` chunks.

    Paragraphs that are code, grammar or rule lines are dropped; the rest are unwrapped and
    packed per topic into chunks of about 1200 characters, then an even subset is kept.
    """
    out: list[tuple[str, str]] = []
    for topic in sorted(topics):
        paragraphs = [_unwrap(p) for p in PARAGRAPH.split(topics[topic]) if _is_prose(p)]
        for k, chunk in enumerate(pack([p for p in paragraphs if p], "\n\n", 1200)):
            out.append((f"{topic}/{k}", chunk))
    keep = select_evenly([t for _, t in out], budget_chars)
    return [out[i] for i in keep]


TOP_LEVEL = re.compile(r"(def |class |async def |@)")
METHOD = re.compile(r"    (def |async def |@)")


def _cut_before(text: str, header: re.Pattern[str]) -> list[str]:
    """Cut ``text`` before each line matching ``header``, keeping decorators with their def.

    After a decorator line (a header starting with ``@``) no cut is made until the decorated
    ``def``/``class`` line has been reached, so multi-line decorators stay attached too.
    """
    blocks: list[str] = []
    current: list[str] = []
    in_decorator = False
    for line in text.splitlines(keepends=True):
        match = header.match(line)
        if match and current and not in_decorator:
            blocks.append("".join(current))
            current = []
        if match:
            in_decorator = match.group(1) == "@"
        current.append(line)
    if current:
        blocks.append("".join(current))
    return blocks


def python_chunks(source: str, target: int = 1400, max_chars: int = 2000) -> list[str]:
    """Chunks of a Python module cut before top-level headers (and, in big classes, methods)."""
    blocks: list[str] = []
    for block in _cut_before(source, TOP_LEVEL):
        blocks += _cut_before(block, METHOD) if len(block) > max_chars else [block]
    return pack(blocks, "", target, max_chars)


def blank_line_chunks(source: str, target: int = 1200) -> list[str]:
    """Chunks of a C header or SQL script cut at blank lines."""
    return pack([b for b in PARAGRAPH.split(source) if b.strip()], "\n\n", target)


def read_mo(data: bytes) -> list[tuple[str, str]]:
    """``(msgid, msgstr)`` pairs of a compiled gettext catalog (GNU .mo format), file order.

    Layout: magic 0x950412de, revision, count N, offset of the original-string table, offset of
    the translation table; each table holds N (length, offset) pairs of uint32.
    """
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0x950412DE else ">"
    _, count, orig_at, trans_at = struct.unpack(endian + "4I", data[4:20])
    pairs: list[tuple[str, str]] = []
    for i in range(count):
        n1, o1 = struct.unpack(endian + "2I", data[orig_at + 8 * i : orig_at + 8 * i + 8])
        n2, o2 = struct.unpack(endian + "2I", data[trans_at + 8 * i : trans_at + 8 * i + 8])
        pairs.append((data[o1 : o1 + n1].decode("utf-8"), data[o2 : o2 + n2].decode("utf-8")))
    return pairs


def _mostly_non_latin(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(ord(c) > 0x24F for c in letters) >= 0.5 * len(letters)


def catalog_documents(
    catalogs: list[list[tuple[str, str]]], budget_chars: int, target: int = 1000
) -> list[str]:
    """Documents of translated messages from one language's catalogs.

    Kept: translations of at least 30 characters, without backslash commands, whose letters
    are mostly outside Latin scripts (first plural form only). They are joined one per line into ~``target``-character
    documents, and an evenly spread subset of about ``budget_chars`` is returned.
    """
    messages: list[str] = []
    for pairs in catalogs:
        for msgid, msgstr in pairs:
            text = msgstr.split("\0")[0].strip()
            if msgid and len(text) >= 30 and "\\" not in text and _mostly_non_latin(text):
                messages.append(" ".join(text.split()))
    docs = pack(messages, "\n", target)
    return [docs[i] for i in select_evenly(docs, budget_chars)]


def handwritten_documents(text: str) -> list[tuple[str, str]]:
    """``(key, body)`` pairs from a file of sections that each start with ``### key``."""
    out: list[tuple[str, str]] = []
    for section in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        key, _, body = section.partition("\n")
        out.append((key.strip(), body.strip()))
    return out
