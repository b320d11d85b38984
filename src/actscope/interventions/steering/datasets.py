"""Contrast datasets for steering: paired prompts, CAA A/B items and unpaired labelled sets.

Three record kinds, one per JSONL line (a file holds one kind; an optional first line
``{"_meta": {...}}`` carries ``name``, ``description`` and ``format``):

* **pairs**: ``{"prompt": str (optional), "positive": str, "negative": str}``. With a prompt the
  two strings are assistant completions of that user prompt; without one they are whole texts.
* **ab** (the CAA format): ``{"question": str, "answer_matching_behavior": "(A)",
  "answer_not_matching_behavior": "(B)"}``; the question already lists the choices. The positive
  text is the question followed by ``"(" + matching letter``, the negative by the other letter.
* **unpaired**: ``{"text": str, "label": 1 | 0 | "positive" | "negative", "prompt": str
  (optional)}``. Without a prompt the text is the user message itself (condition datasets).

``format`` is ``chat`` (default: the tokenizer's chat template is applied when it has one; a
plain ``"User: ...\\nAssistant: "`` layout otherwise) or ``raw`` (texts used as written).
Every formatted text carries the character span that extraction reads (the completion, the
answer letter or the user message).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from actscope.data.loaders import read_text
from actscope.errors import DataError, suggest
from actscope.utils.atomic import atomic_write_text

Kind = Literal["pairs", "ab", "unpaired"]
KINDS = ("pairs", "ab", "unpaired")
_TEXT_FIELDS = {  # (required non-empty strings, optional strings) of each record kind
    "pairs": (("positive", "negative"), ("prompt",)),
    "ab": (("question", "answer_matching_behavior", "answer_not_matching_behavior"), ()),
    "unpaired": ((), ("text", "prompt")),
}
FALLBACK_USER = "User: "
FALLBACK_ASSISTANT = "\nAssistant: "
_PACKAGE = "actscope.datasets.steering"


@dataclass(frozen=True)
class Text:
    """A formatted model input and the character span ``[start, end)`` that is read.

    ``special`` says whether the tokenizer should add its own special tokens (raw texts); chat
    templated texts already contain them.
    """

    text: str
    span: tuple[int, int]
    special: bool = False


@dataclass(frozen=True)
class ABItem:
    """One A/B question: the question text (choices included) and the two answer letters."""

    question: str
    matching: str
    not_matching: str


@dataclass
class ContrastDataset:
    """A list of records of one kind, with a content hash and deterministic splits."""

    kind: Kind
    records: list[dict[str, Any]]
    name: str = "dataset"
    format: Literal["chat", "raw"] = "chat"
    description: str = ""
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.records:
            raise DataError(f"steering dataset '{self.name}' is empty")
        if self.kind not in KINDS:
            raise DataError(f"dataset kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for i, rec in enumerate(self.records):
            _check_record(self.kind, rec, f"{self.name} record {i}")
        if self.format not in ("chat", "raw"):
            raise DataError(f"dataset format must be 'chat' or 'raw', got {self.format!r}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paired(self) -> bool:
        """Pairs and A/B items are paired (row i of positives matches row i of negatives)."""
        return self.kind != "unpaired"

    @property
    def hash(self) -> str:
        """sha256 over the records, each as canonical JSON (sorted keys) followed by a newline."""
        h = hashlib.sha256()
        for rec in self.records:
            h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def split(self, fraction: float, seed: int = 0) -> tuple[ContrastDataset, ContrastDataset]:
        """Split into ``(first, rest)``: records ranked by sha256(f"{seed}:{canonical json}").

        The first ``round(fraction * n)`` of the ranking go to ``first`` (for unpaired sets the
        split is stratified by label); both parts keep file order. Depends only on content.
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"split fraction must be in (0, 1), got {fraction}")
        groups: dict[int, list[int]] = {}
        for i, rec in enumerate(self.records):
            groups.setdefault(label_of(rec) if self.kind == "unpaired" else 0, []).append(i)
        chosen: set[int] = set()
        for idx in groups.values():
            ranked = sorted(idx, key=lambda i: _rank(seed, self.records[i], i))
            chosen.update(ranked[: round(fraction * len(idx))])
        first = [r for i, r in enumerate(self.records) if i in chosen]
        rest = [r for i, r in enumerate(self.records) if i not in chosen]
        if not first or not rest:
            raise DataError(
                f"splitting {len(self)} records of '{self.name}' with fraction {fraction} "
                "leaves one side empty"
            )
        tag = f"{self.name}|split({fraction:g},seed={seed})"
        return self._derive(first, f"{tag}[0]"), self._derive(rest, f"{tag}[1]")

    def _derive(self, records: list[dict[str, Any]], name: str) -> ContrastDataset:
        return ContrastDataset(
            self.kind, records, name, self.format, self.description, dict(self.extra_meta)
        )

    # formatting -----------------------------------------------------------------------------
    def texts(self, tokenizer: Any) -> tuple[list[Text], list[Text]]:
        """Formatted positive and negative texts (aligned row by row when paired)."""
        chat = self.format == "chat"
        if self.kind == "pairs":
            pos = [
                _completion(tokenizer, r.get("prompt"), r["positive"], chat) for r in self.records
            ]
            neg = [
                _completion(tokenizer, r.get("prompt"), r["negative"], chat) for r in self.records
            ]
            return pos, neg
        if self.kind == "ab":
            items = self.ab_items()
            pos = [
                _completion(tokenizer, it.question, "(" + it.matching, chat, tail=1) for it in items
            ]
            neg = [
                _completion(tokenizer, it.question, "(" + it.not_matching, chat, tail=1)
                for it in items
            ]
            return pos, neg
        pos, neg = [], []
        for r in self.records:
            t = unpaired_text(tokenizer, r, chat)
            (pos if label_of(r) == 1 else neg).append(t)
        if not pos or not neg:
            raise DataError(f"unpaired dataset '{self.name}' needs both positive and negative rows")
        return pos, neg

    def ab_items(self) -> list[ABItem]:
        """The A/B items (only for kind ``ab``)."""
        if self.kind != "ab":
            raise DataError(f"dataset '{self.name}' holds {self.kind}, not A/B items")
        return [
            ABItem(
                r["question"],
                _letter(r["answer_matching_behavior"]),
                _letter(r["answer_not_matching_behavior"]),
            )
            for r in self.records
        ]

    def labelled(self, tokenizer: Any) -> tuple[list[Text], list[int]]:
        """Unpaired texts in file order with their 0/1 labels (condition datasets)."""
        if self.kind != "unpaired":
            raise DataError(f"dataset '{self.name}' holds {self.kind}, not labelled texts")
        chat = self.format == "chat"
        return [unpaired_text(tokenizer, r, chat) for r in self.records], [
            label_of(r) for r in self.records
        ]

    # I/O ------------------------------------------------------------------------------------
    def to_jsonl(self, path: str | Path) -> Path:
        """Write the header line and the records to ``path`` (atomically)."""
        meta = {
            "name": self.name,
            "kind": self.kind,
            "format": self.format,
            "description": self.description,
            **self.extra_meta,
        }
        lines = [json.dumps({"_meta": meta}, ensure_ascii=False)]
        lines += [json.dumps(r, ensure_ascii=False) for r in self.records]
        return atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def from_records(
        cls, records: Iterable[dict[str, Any]], name: str = "dataset", fmt: str = "chat"
    ) -> ContrastDataset:
        """Build a dataset from dicts, inferring the kind from the keys of the first record."""
        recs = [dict(r) for r in records]
        if not recs:
            raise DataError(f"steering dataset '{name}' is empty")
        return cls(infer_kind(recs[0], name), recs, name, fmt)  # type: ignore[arg-type]

    @classmethod
    def from_jsonl(cls, path: str | Path, name: str | None = None) -> ContrastDataset:
        """Read a JSONL file (optional ``_meta`` first line, then one record per line)."""
        p = Path(path)
        lines = read_text(p, "steering dataset").splitlines()
        meta: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        where: list[str] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{n}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{n}: each line must be a JSON object")
            if "_meta" in obj and not records:
                if not isinstance(obj["_meta"], dict):
                    raise DataError(f"{p}:{n}: '_meta' must be a JSON object")
                meta = dict(obj["_meta"])
                continue
            records.append(obj)
            where.append(f"{p}:{n}")
        if not records:
            raise DataError(f"steering dataset {p} has no records")
        kind = meta.pop("kind", None) or infer_kind(records[0], where[0])
        if kind not in KINDS:
            raise DataError(f"{p}: _meta kind must be one of {', '.join(KINDS)}, got {kind!r}")
        for rec, at in zip(records, where, strict=True):
            _check_record(kind, rec, at)
        ds_name = name or meta.pop("name", None) or p.stem
        meta.pop("name", None)
        fmt = meta.pop("format", "chat")
        desc = meta.pop("description", "")
        return cls(kind, records, ds_name, fmt, desc, meta)


def infer_kind(rec: dict[str, Any], where: str) -> Kind:
    """``ab`` if the record has ``question``, ``pairs`` if ``positive``, ``unpaired`` if ``label``."""
    if "question" in rec:
        return "ab"
    if "positive" in rec and "negative" in rec:
        return "pairs"
    if "label" in rec:
        return "unpaired"
    raise DataError(
        f"{where}: cannot tell the record kind from keys {sorted(rec)}; expected "
        "question/answer_matching_behavior, positive/negative, or text/label"
    )


def _check_record(kind: str, rec: dict[str, Any], where: str) -> None:
    need = {"pairs": ("positive", "negative"), "ab": ("question",), "unpaired": ("label",)}[kind]
    missing = [k for k in need if k not in rec]
    if kind == "ab":
        missing += [
            k for k in ("answer_matching_behavior", "answer_not_matching_behavior") if k not in rec
        ]
    if kind == "unpaired" and rec.get("text") is None and rec.get("prompt") is None:
        missing.append("text")
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)} for a {kind} record")
    required, optional = _TEXT_FIELDS[kind]
    for key in (*required, *optional):
        value = rec.get(key)
        if value is None and key in optional:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{key}' must be a string, not {type(value).__name__}")
        if key in required and not value.strip():
            raise DataError(f"{where}: field '{key}' is empty")
    if kind == "unpaired":
        try:
            label_of(rec)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
    if kind == "ab":
        a, b = (
            _letter(rec["answer_matching_behavior"]),
            _letter(rec["answer_not_matching_behavior"]),
        )
        if a == b:
            raise DataError(f"{where}: matching and not-matching answers are the same letter")


def label_of(rec: dict[str, Any]) -> int:
    """1 for positive labels (1, true, "positive", "pos", "1"), 0 for negative ones."""
    lab = rec.get("label")
    if isinstance(lab, bool):
        return int(lab)
    if isinstance(lab, int) and lab in (0, 1):
        return lab
    if isinstance(lab, str) and lab.lower() in ("positive", "pos", "1", "true", "yes"):
        return 1
    if isinstance(lab, str) and lab.lower() in ("negative", "neg", "0", "false", "no"):
        return 0
    raise DataError(f"label must be 0/1 or positive/negative, got {lab!r}")


def _letter(answer: str) -> str:
    """The answer letter of ``"(A)"``, ``"A"`` or ``" (B)"``."""
    s = str(answer).strip().strip("()").strip()
    if len(s) != 1 or not s.isalpha():
        raise DataError(f"A/B answer must look like '(A)', got {answer!r}")
    return s.upper()


def _rank(seed: int, rec: dict[str, Any], i: int) -> tuple[bytes, int]:
    raw = f"{seed}:{json.dumps(rec, sort_keys=True, ensure_ascii=False)}".encode()
    return hashlib.sha256(raw).digest(), i


def has_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, user: str, chat: bool = True) -> tuple[str, tuple[int, int]]:
    """The text that asks the model to answer ``user``, and the span of ``user`` inside it.

    With a chat template: the template applied to one user message with the generation prompt.
    Without one: ``"User: {user}\\nAssistant: "``. With ``chat=False``: ``user`` unchanged.
    """
    if not chat:
        return user, (0, len(user))
    if has_template(tokenizer):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        start = text.rfind(user)
        if start < 0:
            raise DataError("the chat template does not contain the user message verbatim")
        return text, (start, start + len(user))
    text = f"{FALLBACK_USER}{user}{FALLBACK_ASSISTANT}"
    return text, (len(FALLBACK_USER), len(FALLBACK_USER) + len(user))


def _completion(tok: Any, prompt: str | None, completion: str, chat: bool, tail: int = 0) -> Text:
    """Prompt formatted for the assistant, then ``completion``; the span is the completion.

    ``tail > 0`` narrows the span to the completion's last ``tail`` characters (the A/B letter).
    """
    if not prompt:
        return Text(
            completion, (len(completion) - (tail or len(completion)), len(completion)), True
        )
    head, _ = chat_prompt(tok, prompt, chat)
    text = head + completion
    start = len(text) - (tail or len(completion))
    return Text(text, (start, len(text)), special=not (chat and has_template(tok)))


def unpaired_text(tok: Any, rec: dict[str, Any], chat: bool) -> Text:
    """An unpaired record as a model input: prompt + text as a completion, or text as the prompt."""
    if rec.get("prompt") is not None and rec.get("text") is not None:
        return _completion(tok, rec["prompt"], rec["text"], chat)
    user = rec.get("text", rec.get("prompt"))
    text, span = chat_prompt(tok, str(user), chat)
    return Text(text, span, special=not (chat and has_template(tok)))


# shipped examples ---------------------------------------------------------------------------
def list_datasets() -> list[str]:
    """Names of the example datasets shipped with actscope (file stems)."""
    root = resources.files(_PACKAGE)
    return sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))


def load_dataset(spec: str | Path) -> ContrastDataset:
    """A shipped dataset by name (``sentiment-ab``) or a JSONL file by path."""
    p = Path(spec)
    if p.suffix == ".jsonl" or p.exists():
        if not p.exists():
            raise DataError(f"steering dataset file {p} does not exist")
        return ContrastDataset.from_jsonl(p)
    names = list_datasets()
    if str(spec) not in names:
        raise DataError(
            f"unknown steering dataset '{spec}'{suggest(str(spec), names)}; shipped: {', '.join(names)}"
        )
    res = resources.files(_PACKAGE) / f"{spec}.jsonl"
    with resources.as_file(res) as path:
        return ContrastDataset.from_jsonl(path, name=str(spec))


def load_prompts(spec: str | Path) -> list[str]:
    """Prompts for open-ended samples: a shipped ``prompts-*`` name or a JSONL/text file.

    JSONL lines hold ``{"prompt": ...}`` (or ``text``); a ``.txt`` file holds one per line.
    """
    p = Path(spec)
    if not p.exists():
        if str(spec) not in list_datasets():
            raise DataError(f"unknown prompt set '{spec}'; shipped: {', '.join(list_datasets())}")
        with resources.as_file(resources.files(_PACKAGE) / f"{spec}.jsonl") as path:
            return load_prompts(path)
    lines = [ln for ln in read_text(p, "prompt file").splitlines() if ln.strip()]
    if p.suffix != ".jsonl":
        return lines
    out = []
    for n, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{n}: invalid JSON ({exc.msg})") from None
        if isinstance(obj, dict) and "_meta" in obj:
            continue
        text = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{p}:{n}: expected an object with a 'prompt' string")
        out.append(text)
    if not out:
        raise DataError(f"{p} holds no prompts")
    return out


def ab_letters(items: Sequence[ABItem]) -> list[str]:
    """Distinct answer letters used by ``items`` (sorted)."""
    return sorted({x for it in items for x in (it.matching, it.not_matching)})
