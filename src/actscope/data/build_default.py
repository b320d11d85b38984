"""Build the embedded default corpus, offline and deterministically.

    python -m actscope.data.build_default           # rewrite corpora/default.jsonl.gz
    python -m actscope.data.build_default --check   # rebuild in memory, compare with the file

Four domains, each a mix of real text found on the machine and text written for actscope:

- ``prose``: English running text of the Python documentation (``pydoc_data/topics.py``).
- ``code``: Python standard library modules, CPython C headers and PostgreSQL SQL scripts,
  cut at function, class or blank-line boundaries.
- ``math``: hand-written expositions and proofs (``corpora/handwritten/math.txt``) and worked
  examples generated with exact arithmetic by :mod:`actscope.data.mathgen`.
- ``multilingual``: PostgreSQL's translated messages (Japanese, Chinese, Korean, Russian,
  Ukrainian, Georgian, Greek) and hand-written paragraphs in Arabic, Hindi, Hebrew, Thai,
  Chinese, Japanese, Korean, Russian, Greek, Ukrainian, Persian, Bengali, Georgian, Armenian.

Licences: PSF License (Python), PostgreSQL License (PostgreSQL), Apache-2.0 (actscope text).
The output is gzip-compressed JSON lines (sorted keys, gzip mtime 0, no file name), so the same
inputs give the same bytes. ``corpora/default.manifest.json`` records the sha256 of the output
and of every input file; after a deliberate rebuild, copy the printed sha256 into
:data:`actscope.data.loaders.DEFAULT_CORPUS_SHA256`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import platform
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from actscope.data import mathgen, sources
from actscope.data.corpus import Corpus, Sample
from actscope.errors import DataError
from actscope.utils.atomic import atomic_write_bytes, atomic_write_text

CORPORA_DIR = Path(__file__).resolve().parent / "corpora"
OUTPUT_NAME = "default.jsonl.gz"
MANIFEST_NAME = "default.manifest.json"
MATH_SEED = 0
MIN_BYTES = 300

PROSE_CHARS = 300_000
PYTHON_CHARS = 230_000
C_CHARS = 45_000
SQL_CHARS = 40_000
MATH_GENERATED_CHARS = 125_000

PYTHON_FILES = (
    "bisect.py", "colorsys.py", "copy.py", "graphlib.py", "heapq.py", "json/decoder.py",
    "json/encoder.py", "string.py", "shlex.py", "textwrap.py", "csv.py", "fractions.py",
    "statistics.py", "functools.py", "contextlib.py", "random.py", "calendar.py", "base64.py",
    "gzip.py", "pprint.py", "tokenize.py", "selectors.py", "queue.py", "sched.py",
    "html/parser.py", "http/cookies.py", "email/utils.py", "urllib/parse.py", "dataclasses.py",
    "enum.py", "ipaddress.py", "difflib.py", "pathlib.py", "argparse.py", "zipfile.py",
    "typing.py",
)  # fmt: skip
C_FILES = (
    "object.h", "abstract.h", "pyerrors.h", "unicodeobject.h", "longobject.h", "dictobject.h",
    "listobject.h", "pymacro.h", "pymem.h", "cpython/object.h", "cpython/listobject.h",
    "cpython/unicodeobject.h",
)  # fmt: skip
SQL_FILES = (
    "system_views.sql", "information_schema.sql", "extension/citext--1.4.sql",
    "extension/hstore--1.4.sql", "extension/cube--1.2.sql", "extension/ltree--1.1.sql",
    "extension/pg_trgm--1.3.sql", "extension/earthdistance--1.1.sql",
)  # fmt: skip
POSTGRES_SHARE = Path("/usr/share/postgresql/15")
LOCALE_DIR = Path("/usr/share/locale")
CATALOG_DOMAINS = ("postgres-15", "psql-15", "pg_dump-15", "initdb-15")
CATALOG_CHARS = {  # sized for >= 50k multilingual tokens even with Gemma 3's 262k vocabulary
    "ja": 18_000,
    "zh_CN": 19_000,
    "ko": 13_000,
    "ru": 29_000,
    "uk": 19_000,
    "ka": 8_000,
    "el": 19_000,
}

PSF = "PSF License"
PG = "PostgreSQL License"
OURS = "actscope, Apache-2.0"


def _code_samples(
    log: sources.InputLog, root: Path, label: str, names: Sequence[str], budget: int, kind: str
) -> list[Sample]:
    """Chunks of each file, an even subset of at most ``budget / len(names)`` chars per file."""
    origin = {
        "python": f"Python {platform.python_version()} standard library",
        "c": f"Python {platform.python_version()} C headers",
        "sql": "PostgreSQL 15 SQL scripts",
    }[kind]
    out: list[Sample] = []
    for name in names:
        text = log.read(root / name, f"{label}/{name}").decode("utf-8")
        chunks = (
            sources.python_chunks(text) if kind == "python" else sources.blank_line_chunks(text)
        )
        for k in sources.select_evenly(chunks, budget // len(names)):
            lic = PG if kind == "sql" else PSF
            src = f"{origin}: {name} ({lic})"
            out.append(Sample(f"code/{kind}/{name}/{k}", "code", chunks[k], src))
    return out


def build_samples(log: sources.InputLog) -> list[Sample]:
    """Every sample of the default corpus, domain by domain, reading inputs through ``log``.

    Chunks shorter than ``MIN_BYTES`` UTF-8 bytes (bytes, not characters, so that dense CJK
    paragraphs count fairly) are dropped.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    include = Path(sysconfig.get_paths()["include"])
    if not (POSTGRES_SHARE.is_dir() and (LOCALE_DIR / "ja/LC_MESSAGES/postgres-15.mo").is_file()):
        raise DataError(
            "the default corpus is built where PostgreSQL 15 (SQL scripts and translated "
            f"catalogs under {POSTGRES_SHARE} and {LOCALE_DIR}) is installed"
        )
    samples: list[Sample] = []

    topics_file = stdlib / "pydoc_data" / "topics.py"
    topics = sources.topics_dict(log.read(topics_file, "stdlib/pydoc_data/topics.py"))
    for key, text in sources.doc_topics(topics, PROSE_CHARS):
        src = f"Python {platform.python_version()} documentation: pydoc_data/topics.py ({PSF})"
        samples.append(Sample(f"prose/python-docs/{key}", "prose", text, src))

    samples += _code_samples(log, stdlib, "stdlib", PYTHON_FILES, PYTHON_CHARS, "python")
    samples += _code_samples(log, include, "include", C_FILES, C_CHARS, "c")
    samples += _code_samples(log, POSTGRES_SHARE, "postgresql-15", SQL_FILES, SQL_CHARS, "sql")

    hand = CORPORA_DIR / "handwritten"
    notes = log.read(hand / "math.txt", "actscope/handwritten/math.txt").decode("utf-8")
    for key, body in sources.handwritten_documents(notes):
        samples.append(Sample(f"math/notes/{key}", "math", body, f"written for {OURS}"))
    for family, index, text in mathgen.worked_documents(MATH_SEED, MATH_GENERATED_CHARS):
        src = f"generated by actscope.data.mathgen, seed {MATH_SEED} ({OURS})"
        samples.append(Sample(f"math/worked/{family}/{index}", "math", text, src))

    for lang, budget in CATALOG_CHARS.items():
        catalogs = []
        for dom in CATALOG_DOMAINS:
            path = LOCALE_DIR / lang / "LC_MESSAGES" / f"{dom}.mo"
            if path.is_file():
                catalogs.append(sources.read_mo(log.read(path, f"locale/{lang}/{dom}.mo")))
        src = f"PostgreSQL 15 translated messages, {lang} ({PG})"
        for k, text in enumerate(sources.catalog_documents(catalogs, budget)):
            samples.append(Sample(f"multilingual/postgresql-{lang}/{k}", "multilingual", text, src))
    texts = log.read(hand / "multilingual.txt", "actscope/handwritten/multilingual.txt")
    for key, body in sources.handwritten_documents(texts.decode("utf-8")):
        samples.append(
            Sample(f"multilingual/notes/{key}", "multilingual", body, f"written for {OURS}")
        )
    return [s for s in samples if len(s.text.encode("utf-8")) >= MIN_BYTES]


def encode(samples: Sequence[Sample]) -> bytes:
    """Gzip-compressed JSON lines, one sample per line, byte-identical for identical input."""
    lines = "".join(
        json.dumps(
            {"domain": s.domain, "id": s.id, "source": s.source, "text": s.text},
            ensure_ascii=False,
            sort_keys=True,
        )
        + "\n"
        for s in samples
    )
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(lines.encode("utf-8"))
    return buf.getvalue()


def build() -> tuple[bytes, dict[str, object]]:
    """Build the corpus; return the compressed bytes and the manifest describing them."""
    log = sources.InputLog()
    samples = build_samples(log)
    data = encode(samples)
    corpus = Corpus(samples, "default")
    manifest: dict[str, object] = {
        "file": OUTPUT_NAME,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "corpus_hash": corpus.hash,
        "n_samples": len(corpus),
        "domain_mix": corpus.domain_mix(),
        "python": platform.python_version(),
        "math_seed": MATH_SEED,
        "inputs": dict(sorted(log.files.items())),
    }
    return data, manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actscope.data.build_default")
    parser.add_argument("--out", type=Path, default=CORPORA_DIR, help="output folder")
    parser.add_argument("--check", action="store_true", help="compare with the existing file")
    args = parser.parse_args(argv)
    data, manifest = build()
    target = args.out / OUTPUT_NAME
    if args.check:
        same = target.is_file() and target.read_bytes() == data
        print(f"{'identical' if same else 'DIFFERENT'}: {target} sha256 {manifest['sha256']}")
        return 0 if same else 1
    atomic_write_bytes(target, data)
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    atomic_write_text(args.out / MANIFEST_NAME, text)
    for path in (target, args.out / MANIFEST_NAME):
        path.chmod(0o644)  # package data, readable like the rest of the source tree
    print(f"wrote {target} ({len(data)} bytes) sha256 {manifest['sha256']}")
    print(json.dumps(manifest["domain_mix"], ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
