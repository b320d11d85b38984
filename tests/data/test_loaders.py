from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actscope.data import loaders
from actscope.data.corpus import UNLABELED
from actscope.data.loaders import load_corpus
from actscope.errors import DataError

ROWS = [
    {"id": "r1", "domain": "prose", "text": "First document.\nSecond line."},
    {"id": "r2", "domain": "code", "text": "def f():\n    return 1\n"},
    {"id": "r3", "domain": "multilingual", "text": "Привет, мир. 你好，世界。"},
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_hf_dataset(folder: Path, rows: list[dict[str, object]], n_files: int = 2) -> Path:
    """Mimic ``datasets.Dataset.save_to_disk``: arrow IPC streams + state/info json."""
    folder.mkdir()
    table = pa.Table.from_pylist(rows)
    names = [f"data-{k:05d}-of-{n_files:05d}.arrow" for k in range(n_files)]
    per = -(-len(rows) // n_files)
    for k, name in enumerate(names):
        part = table.slice(k * per, per)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as w:
            w.write_table(part)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "abc", "_split": None}
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return folder


def as_tuples(corpus: loaders.Corpus) -> list[tuple[str, str, str]]:
    return [(s.id, s.domain, s.text) for s in corpus]


EXPECTED = [(r["id"], r["domain"], r["text"]) for r in ROWS]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    c = load_corpus(write_jsonl(tmp_path / "c.jsonl", ROWS))
    assert as_tuples(c) == EXPECTED
    assert c.name == str(tmp_path / "c.jsonl")
    assert c.domains == ("code", "multilingual", "prose")


def test_jsonl_gz_and_generated_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    lines = [json.dumps({"text": "alpha"}), "", json.dumps({"text": "beta", "domain": "x"})]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    c = load_corpus(path)
    assert as_tuples(c) == [("c.jsonl.gz:1", UNLABELED, "alpha"), ("c.jsonl.gz:3", "x", "beta")]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert as_tuples(load_corpus(path)) == EXPECTED


def test_parquet_text_only_gets_ids_and_unlabeled(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a b", "  ", "c d"]}), path)
    c = load_corpus(path)
    assert as_tuples(c) == [("t.parquet:0", UNLABELED, "a b"), ("t.parquet:2", UNLABELED, "c d")]


def test_txt_file_blank_line_separated(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("\n\nFirst doc\nstill first.\n\n  \nSecond doc.\n", "utf-8")
    c = load_corpus(path)
    assert [s.text for s in c] == ["First doc\nstill first.", "Second doc."]
    assert [s.id for s in c] == ["notes.txt:1", "notes.txt:2"]


def test_txt_folder_one_document_per_file(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("Bee.\n\nStill bee.", "utf-8")
    (folder / "a.txt").write_text("Ay.", "utf-8")
    (folder / "sub" / "c.txt").write_text("Sea.", "utf-8")
    (folder / ".hidden.txt").write_text("skip me", "utf-8")
    c = load_corpus(folder)
    assert [(s.id, s.text) for s in c] == [
        ("a.txt", "Ay."),
        ("b.txt", "Bee.\n\nStill bee."),
        ("sub/c.txt", "Sea."),
    ]


def test_hf_save_to_disk_folder(tmp_path: Path) -> None:
    folder = write_hf_dataset(tmp_path / "ds", ROWS)
    assert as_tuples(load_corpus(folder)) == EXPECTED


def test_hf_folder_without_ids_numbers_rows_across_files(tmp_path: Path) -> None:
    rows = [{"text": f"doc {i}"} for i in range(5)]
    c = load_corpus(write_hf_dataset(tmp_path / "ds", rows, n_files=2))
    assert [s.id for s in c] == [f"ds:{i}" for i in range(5)]


def test_folder_of_parquet_and_folder_of_jsonl(tmp_path: Path) -> None:
    pq_dir, js_dir = tmp_path / "pq", tmp_path / "js"
    pq_dir.mkdir()
    js_dir.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), pq_dir / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), pq_dir / "part-1.parquet")
    write_jsonl(js_dir / "a.jsonl", ROWS[:1])
    write_jsonl(js_dir / "b.jsonl", ROWS[1:])
    assert as_tuples(load_corpus(pq_dir)) == EXPECTED
    assert as_tuples(load_corpus(js_dir)) == EXPECTED


def test_default_corpus_loads_with_four_domains() -> None:
    c = load_corpus("default")
    assert c.name == "default"
    assert {"prose", "code", "math", "multilingual"} <= set(c.domains)


def test_default_corpus_hash_mismatch_is_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaders, "DEFAULT_CORPUS_SHA256", "0" * 64)
    with pytest.raises(DataError, match="default corpus .* has sha256"):
        loaders.load_default.__wrapped__()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "corpus not found"),
        ("c.csv", "text\nhello\n", "unsupported corpus format '.csv'"),
        ("empty.txt", "", "holds no non-empty document"),
        ("blank.jsonl", '{"text": "   "}\n', "holds no non-empty document"),
        ("notext.jsonl", '{"body": "hello"}\n', "line 1: expected an object with a 'text' field"),
        ("bad.jsonl", '{"text": "ok"}\n{"text": \n', "line 2: invalid JSON"),
        ("list.jsonl", '["text"]\n', "line 1: expected an object"),
        ("num.jsonl", '{"text": 3}\n', "line 1: 'text' must be a string, not int"),
        ("bin.txt", b"\xff\xfe\x00bad", "cannot read .* as UTF-8"),
    ],
)
def test_bad_input_raises_one_line_data_error(
    tmp_path: Path, name: str, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, "utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_corpus(path)
    assert "\n" not in str(info.value)


def test_parquet_without_text_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), path)
    with pytest.raises(DataError, match="has no 'text' column \\(columns: body, id\\)"):
        load_corpus(path)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(DataError, match="cannot read parquet file"):
        load_corpus(path)


def test_duplicate_ids_in_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "text": "a"}, {"id": "1", "text": "b"}])
    with pytest.raises(DataError, match="duplicate sample id '1'"):
        load_corpus(path)


def test_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no corpus file"):
        load_corpus(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("x")
    write_jsonl(mixed / "b.jsonl", ROWS)
    with pytest.raises(DataError, match="mixes formats"):
        load_corpus(mixed)
    dd = tmp_path / "dd"
    dd.mkdir()
    write_hf_dataset(dd / "train", ROWS)
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(DataError, match="DatasetDict with splits train; pass one split folder"):
        load_corpus(dd)


def test_read_text_names_the_file_and_the_failure(tmp_path: Path) -> None:
    from actscope.data import read_text

    good = tmp_path / "a.txt.gz"
    good.write_bytes(gzip.compress("héllo".encode()))
    assert read_text(good) == "héllo"
    latin = tmp_path / "b.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"cannot read sweep file .*b.txt as UTF-8 text \(byte 3"):
        read_text(latin, "sweep file")
    with pytest.raises(DataError, match="dataset file .*missing does not exist"):
        read_text(tmp_path / "missing", "dataset file")
    with pytest.raises(DataError, match="is not a file"):
        read_text(tmp_path)
    broken = tmp_path / "c.jsonl.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read file"):
        read_text(broken)
