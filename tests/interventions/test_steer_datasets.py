"""Contrast datasets: JSONL in and out, kinds, splits, chat formatting, shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actscope.errors import DataError
from actscope.interventions.steering.datasets import (
    ContrastDataset,
    ab_letters,
    chat_prompt,
    list_datasets,
    load_dataset,
)
from actscope.models.tiny import byte_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _templated() -> object:
    tok = byte_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def test_jsonl_round_trip_keeps_records_meta_and_hash(tmp_path: Path) -> None:
    ds = ContrastDataset.from_records(
        [
            {"prompt": "p1", "positive": "yes", "negative": "no"},
            {"prompt": "p2", "positive": "sure", "negative": "never"},
        ],
        name="toy",
    )
    path = ds.to_jsonl(tmp_path / "toy.jsonl")
    back = ContrastDataset.from_jsonl(path)
    assert back.kind == "pairs" and back.name == "toy" and back.records == ds.records
    assert back.hash == ds.hash
    assert json.loads(path.read_text().splitlines()[0])["_meta"]["kind"] == "pairs"


def test_kinds_are_inferred_and_bad_records_rejected(tmp_path: Path) -> None:
    ab = ContrastDataset.from_records(
        [
            {
                "question": "Q?\n(A) x\n(B) y",
                "answer_matching_behavior": "(A)",
                "answer_not_matching_behavior": "(B)",
            }
        ]
    )
    assert ab.kind == "ab" and ab.ab_items()[0].matching == "A"
    un = ContrastDataset.from_records(
        [{"text": "t", "label": "positive"}, {"text": "u", "label": 0}]
    )
    assert un.kind == "unpaired" and not un.paired
    with pytest.raises(DataError, match="cannot tell the record kind"):
        ContrastDataset.from_records([{"foo": 1}])
    with pytest.raises(DataError, match="same letter"):
        ContrastDataset.from_records(
            [
                {
                    "question": "Q",
                    "answer_matching_behavior": "(A)",
                    "answer_not_matching_behavior": "A",
                }
            ]
        )
    with pytest.raises(DataError, match="label must be"):
        ContrastDataset.from_records([{"text": "t", "label": "maybe"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        ContrastDataset.from_jsonl(bad)


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    recs = [{"text": f"t{i}", "label": i % 3 == 0} for i in range(30)]
    ds = ContrastDataset.from_records(recs, name="u")
    a1, b1 = ds.split(0.5, seed=1)
    a2, b2 = ds.split(0.5, seed=1)
    assert a1.records == a2.records and b1.records == b2.records
    texts_a = {r["text"] for r in a1.records}
    assert texts_a.isdisjoint({r["text"] for r in b1.records})
    assert len(a1) + len(b1) == 30
    assert sum(r["label"] for r in a1.records) == 5  # half of the 10 positives
    assert ds.split(0.5, seed=2)[0].records != a1.records


def test_chat_template_is_applied_and_span_marks_the_completion() -> None:
    tok = _templated()
    ds = ContrastDataset.from_records([{"prompt": "Hi?", "positive": "Great!", "negative": "Bad."}])
    (pos,), _ = ds.texts(tok)
    assert pos.text == "<|user|>Hi?<|end|><|assistant|>Great!"
    assert pos.text[pos.span[0] : pos.span[1]] == "Great!" and not pos.special
    ab = ContrastDataset.from_records(
        [
            {
                "question": "Q",
                "answer_matching_behavior": "(B)",
                "answer_not_matching_behavior": "(A)",
            }
        ]
    )
    (p,), (n,) = ab.texts(tok)
    assert p.text.endswith("<|assistant|>(B") and p.text[p.span[0] : p.span[1]] == "B"
    assert n.text.endswith("<|assistant|>(A")


def test_fallback_format_without_template_and_raw_format() -> None:
    tok = byte_tokenizer()
    text, span = chat_prompt(tok, "hello", chat=True)
    assert text == "User: hello\nAssistant: " and text[span[0] : span[1]] == "hello"
    raw = ContrastDataset.from_records(
        [{"prompt": "A ", "positive": "b", "negative": "c"}], fmt="raw"
    )
    (p,), _ = raw.texts(tok)
    assert p.text == "A b" and p.special


def test_shipped_datasets_load_and_balance_answer_letters() -> None:
    names = list_datasets()
    for expected in (
        "sentiment-ab",
        "sentiment-pairs",
        "formality-ab",
        "refusal-pairs",
        "topic-food",
        "topic-sport",
    ):
        assert expected in names
    for name in names:
        if name.startswith("prompts-"):
            continue
        ds = load_dataset(name)
        assert len(ds) >= 40, name
        if ds.kind == "ab":
            items = ds.ab_items()
            assert ab_letters(items) == ["A", "B"]
            share = sum(it.matching == "A" for it in items) / len(items)
            assert 0.4 <= share <= 0.6, name
    with pytest.raises(DataError, match="unknown steering dataset"):
        load_dataset("sentimen-ab")


@pytest.mark.parametrize(
    ("record", "field", "kind"),
    [
        ({"positive": 3, "negative": "no"}, "positive", "int"),
        ({"positive": "yes", "negative": ["no"]}, "negative", "list"),
        ({"prompt": {"a": 1}, "positive": "yes", "negative": "no"}, "prompt", "dict"),
        (
            {
                "question": "q? (A) x (B) y",
                "answer_matching_behavior": 1,
                "answer_not_matching_behavior": "(B)",
            },
            "answer_matching_behavior",
            "int",
        ),
        (
            {
                "question": None,
                "answer_matching_behavior": "(A)",
                "answer_not_matching_behavior": "(B)",
            },
            "question",
            "NoneType",
        ),
        ({"text": 1.5, "label": 1}, "text", "float"),
    ],
)
def test_non_string_fields_name_the_file_line_and_field(
    tmp_path: Path, record: dict[str, object], field: str, kind: str
) -> None:
    good = {"positive": "yes", "negative": "no"} if "positive" in record else None
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"_meta": {"name": "d"}})]
    if good is not None:
        lines.append(json.dumps(good))
    lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    line = len(lines)
    with pytest.raises(
        DataError, match=rf"d\.jsonl:{line}: field '{field}' must be a string, not {kind}"
    ):
        load_dataset(path)


def test_bad_meta_kind_label_and_empty_text_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    cases = [
        ('{"_meta": 3}\n{"positive": "a", "negative": "b"}\n', "'_meta' must be a JSON object"),
        ('{"_meta": {"kind": "triples"}}\n{"positive": "a", "negative": "b"}\n', "kind must be"),
        ('{"text": "a", "label": "maybe"}\n', r"d\.jsonl:1: label must be"),
        ('{"positive": " ", "negative": "b"}\n', r"d\.jsonl:1: field 'positive' is empty"),
        ('{"text": null, "label": 1}\n', "missing key"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_dataset(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_binary_and_non_utf8_files_are_refused_as_datasets_and_prompts(
    tmp_path: Path, suffix: str
) -> None:
    from actscope.interventions.steering.datasets import load_prompts

    binary = tmp_path / f"bin{suffix}"
    binary.write_bytes(b"\x00\x01\x02PK\x03\x04" * 20)
    latin = tmp_path / f"latin{suffix}"
    latin.write_bytes('{"positive": "caf\xe9", "negative": "no"}\n'.encode("latin-1"))
    for load in (load_dataset, load_prompts):
        with pytest.raises(DataError, match="a binary file"):
            load(binary)
        with pytest.raises(DataError, match=r"as UTF-8 text \(byte"):
            load(latin)
    with pytest.raises(DataError, match="steering dataset .* is not a file"):
        load_dataset(tmp_path)  # a folder
