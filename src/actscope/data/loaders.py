"""``load_corpus(spec)``: the embedded default corpus or a user corpus on disk.

Accepted specs:

- ``"default"``: the corpus shipped in ``actscope/data/corpora/default.jsonl.gz``.
- ``file.txt``: documents separated by blank lines; a folder of ``.txt`` files: one document
  per file.
- ``file.jsonl`` / ``file.jsonl.gz``: one JSON object per line with a string ``text`` and
  optional ``domain``, ``id`` and ``source``.
- ``file.parquet``: column ``text`` and optional ``domain``, ``id``, ``source``.
- a Hugging Face ``save_to_disk`` folder (``*.arrow`` + ``state.json``/``dataset_info.json``),
  read with pyarrow (the ``datasets`` package is not needed); a folder of parquet or jsonl files.

Documents whose text is empty or only whitespace are dropped. A missing id becomes
``"<file>:<n>"`` with n the jsonl line number (from 1), the txt document index or the table row
(from 0); a file of a ``.txt`` folder has its relative path as id. A missing domain becomes
``"unlabeled"``. Every failure raises :class:`~actscope.errors.DataError` with a one-line
message. (A folder literally named ``default`` is loaded as ``./default``.)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from actscope.data.corpus import UNLABELED, Corpus, Sample
from actscope.errors import DataError

DEFAULT_CORPUS_FILE = Path(__file__).resolve().parent / "corpora" / "default.jsonl.gz"
DEFAULT_CORPUS_SHA256 = "58dbbfe030bb60006040d1c4f76dde84098cbb8a52a2ebf15070c228e651c8f8"
"""sha256 of the committed default corpus file; checked on every load."""

FORMATS = ".txt, .jsonl, .jsonl.gz, .parquet, a folder of those, or a save_to_disk folder"
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_KINDS = (".txt", ".jsonl", ".jsonl.gz", ".parquet")


class _Row(NamedTuple):
    """One raw record; ``number`` locates it (jsonl line, txt document or table row)."""

    number: int
    text: Any
    domain: Any = None
    id: Any = None
    source: Any = None


def load_corpus(spec: str | os.PathLike[str]) -> Corpus:
    """Load ``"default"`` or a corpus file/folder (see the module docstring for formats)."""
    if str(spec) == "default":
        return load_default()
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"corpus not found: {path} (expected 'default' or a path to {FORMATS})")
    samples = list(_dir_samples(path) if path.is_dir() else _file_samples(path, path.name))
    if not samples:
        raise DataError(f"corpus {path} holds no non-empty document")
    return Corpus(samples, str(path))


@lru_cache(maxsize=1)
def load_default() -> Corpus:
    """The embedded default corpus, after checking its sha256 against the recorded value."""
    data = DEFAULT_CORPUS_FILE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != DEFAULT_CORPUS_SHA256:
        raise DataError(
            f"default corpus {DEFAULT_CORPUS_FILE} has sha256 {digest[:12]}..., expected "
            f"{DEFAULT_CORPUS_SHA256[:12]}... (corrupt, or rebuilt without updating the hash)"
        )
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    rows = _jsonl_rows(lines, "default corpus")
    return Corpus(_to_samples(rows, "default", "default corpus", "line"), "default")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


def _file_samples(path: Path, label: str) -> Iterator[Sample]:
    """Samples of one file; ``label`` (its path relative to the spec) prefixes generated ids."""
    kind = _suffix(path)
    if kind == ".txt":
        docs = _BLANK_LINE.split(read_text(path, "corpus file"))
        rows = (_Row(k, doc.strip()) for k, doc in enumerate(docs))
        return _to_samples(rows, label, str(path), "document")
    if kind in (".jsonl", ".jsonl.gz"):
        return _to_samples(_jsonl_rows(read_text(path, "corpus file").splitlines(), str(path)), label, str(path), "line")
    if kind == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"cannot read parquet file {path}: {_one_line(err)}") from err
        return _to_samples(_table_rows(table, str(path)), label, str(path), "row")
    raise DataError(f"unsupported corpus format {kind or '(no suffix)'!r} for {path} ({FORMATS})")


def _dir_samples(path: Path) -> Iterator[Sample]:
    """Samples of a folder: a Hugging Face dataset, or files of one supported format."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(
            f"{path} is a Hugging Face DatasetDict with splits {', '.join(splits)}; "
            f"pass one split folder, e.g. {path / (splits[0] if splits else 'train')}"
        )
    arrow = sorted(path.glob("*.arrow"))
    if arrow and any((path / n).is_file() for n in ("state.json", "dataset_info.json")):
        yield from _to_samples(_arrow_rows(path, arrow), path.name, str(path), "row")
        return
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and _suffix(p) in _KINDS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    kinds = {".jsonl" if _suffix(p) == ".jsonl.gz" else _suffix(p) for p in files}
    if not kinds:
        raise DataError(f"folder {path} holds no corpus file ({FORMATS})")
    if len(kinds) > 1:
        raise DataError(f"folder {path} mixes formats {', '.join(sorted(kinds))}; use one")
    for file in files:
        rel = file.relative_to(path).as_posix()
        if kinds == {".txt"}:
            text = read_text(file, "corpus file").strip()
            if text:
                yield Sample(rel, UNLABELED, text, str(file))
        else:
            yield from _file_samples(file, rel)


def _arrow_rows(path: Path, found: list[Path]) -> Iterator[_Row]:
    """Rows of a ``save_to_disk`` folder, in the file order that ``state.json`` lists."""
    files = found
    state = path / "state.json"
    if state.is_file():
        try:
            listed = json.loads(state.read_text("utf-8")).get("_data_files", [])
            files = [path / entry["filename"] for entry in listed] or found
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise DataError(f"cannot read {state}: {_one_line(err)}") from err
    offset = 0
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                try:
                    table = pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    source.seek(0)
                    table = pa.ipc.open_file(source).read_all()
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"cannot read arrow file {file}: {_one_line(err)}") from err
        for row in _table_rows(table, str(file)):
            yield row._replace(number=row.number + offset)
        offset += table.num_rows


def _table_rows(table: pa.Table, where: str) -> Iterator[_Row]:
    names = table.column_names
    if "text" not in names:
        raise DataError(f"{where} has no 'text' column (columns: {', '.join(names) or 'none'})")
    columns = {
        c: table.column(c).to_pylist() for c in ("text", "domain", "id", "source") if c in names
    }
    for k in range(table.num_rows):
        yield _Row(
            k,
            *(columns[c][k] if c in columns else None for c in ("text", "domain", "id", "source")),
        )


def _jsonl_rows(lines: Iterable[str], where: str) -> Iterator[_Row]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise DataError(f"{where} line {number}: invalid JSON ({_one_line(err)})") from err
        if not isinstance(obj, dict) or "text" not in obj:
            raise DataError(f"{where} line {number}: expected an object with a 'text' field")
        yield _Row(number, obj["text"], obj.get("domain"), obj.get("id"), obj.get("source"))


def _to_samples(rows: Iterable[_Row], label: str, where: str, unit: str) -> Iterator[Sample]:
    """Check each row's text and make samples; a row without id gets ``f"{label}:{number}"``."""
    for row in rows:
        if not isinstance(row.text, str):
            kind = type(row.text).__name__
            raise DataError(f"{where} {unit} {row.number}: 'text' must be a string, not {kind}")
        if not row.text.strip():
            continue
        sample_id = f"{label}:{row.number}" if row.id is None else str(row.id)
        domain = UNLABELED if row.domain in (None, "") else str(row.domain)
        yield Sample(sample_id, domain, row.text, str(row.source or where))


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """The text of ``path`` decoded as UTF-8 (a ``.gz`` file is decompressed first).

    Every failure (missing, a folder, unreadable, corrupt gzip, NUL bytes, another encoding)
    raises :class:`DataError` with one line that names ``what`` the file was meant to be.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {p} does not exist")
    if not p.is_file():
        raise DataError(f"{what} {p} is not a file")
    try:
        raw = p.read_bytes()
        if p.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
        if b"\x00" in raw:
            raise DataError(f"cannot read {what} {p} as UTF-8 text (NUL bytes: a binary file)")
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"cannot read {what} {p} as UTF-8 text (byte {err.start}: {err.reason}; "
            "a binary file or another encoding?)"
        ) from err
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {what} {p}: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
