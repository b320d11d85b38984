from __future__ import annotations

import itertools
import struct

from actscope.data import sources


def write_mo(pairs: list[tuple[str, str]]) -> bytes:
    """A GNU .mo catalog (little-endian, no hash table) holding ``pairs`` in order."""
    ids = [a.encode() for a, _ in pairs]
    strs = [b.encode() for _, b in pairs]
    n = len(pairs)
    orig_at, trans_at = 28, 28 + 8 * n
    data_at = trans_at + 8 * n
    blob, orig, trans = b"", [], []
    for table, items in ((orig, ids), (trans, strs)):
        for item in items:
            table.append((len(item), data_at + len(blob)))
            blob += item + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, orig_at, trans_at, 0, 0)
    tables = b"".join(struct.pack("<2I", *e) for e in orig + trans)
    return head + tables + blob


def test_read_mo_round_trip() -> None:
    pairs = [("", "Content-Type: text/plain; charset=UTF-8\n"), ("hello", "привет"), ("a", "б")]
    assert sources.read_mo(write_mo(pairs)) == pairs


def test_catalog_documents_filters_and_packs() -> None:
    long_ru = "отношение «%s» не существует в текущей схеме"
    pairs = [
        ("", "header: not a message " * 3),
        ("x", "short"),
        ("y", "A Latin-script translation that is long enough"),
        ("z", long_ru),
        ("w", "\\dt [PATTERN] вывести список таблиц и схем базы"),
        ("p\0plural", "файл не найден в каталоге данных\0файлы не найдены"),
    ]
    docs = sources.catalog_documents([pairs], budget_chars=10_000)
    assert docs == [f"{long_ru}\nфайл не найден в каталоге данных"]


def test_pack_respects_bounds_and_order() -> None:
    blocks = [f"block {i} " + "x" * (50 + 37 * i % 400) for i in range(40)]
    chunks = sources.pack(blocks, "\n\n", target=600, max_chars=1000)
    assert all(len(c) <= 1000 for c in chunks)
    for chunk, following in itertools.pairwise(chunks):
        next_block = following.split("\n\n")[0]
        assert len(chunk) >= 600 or len(chunk) + 2 + len(next_block) > 1000
    assert "\n\n".join(chunks) == "\n\n".join(blocks)


def test_pack_cuts_oversized_block_at_line_ends() -> None:
    block = "".join(f"line {i:03d} " + "y" * 90 + "\n" for i in range(50))
    chunks = sources.pack([block], "", target=500, max_chars=1000)
    assert all(len(c) <= 1000 for c in chunks)
    assert all(c.startswith("line ") for c in chunks)
    assert "\n".join(chunks) + "\n" == block


def test_select_evenly() -> None:
    items = ["x" * 100] * 50
    assert sources.select_evenly(items, 10**6) == list(range(50))
    kept = sources.select_evenly(items, 1000)
    assert len(kept) == 10
    gaps = {b - a for a, b in itertools.pairwise(kept)}
    assert gaps == {5}


def test_python_chunks_cut_at_definitions() -> None:
    funcs = "".join(
        f"@decorator\ndef f{i}(x):\n    return x + {i}  # {'pad' * 60}\n\n\n" for i in range(12)
    )
    source = f'"""Module."""\nimport os\n\n\n{funcs}class C:\n    pass\n'
    chunks = sources.python_chunks(source, target=600)
    assert len(chunks) > 2
    for c in chunks[1:]:
        assert c.startswith(("@decorator\ndef f", "class C"))
    assert "".join(c.replace("\n", "") for c in chunks) == source.replace("\n", "")


def test_doc_topics_keeps_running_text_only() -> None:
    topic = (
        "Title\n*****\n\nThis paragraph is\nrunning text.\n\n"
        "   stmt ::= expr\n\n>>> print(1)\n1\n\n   indented_code()\n\nSecond prose paragraph."
    )
    chunks = sources.doc_topics({"t": topic}, budget_chars=10_000)
    assert chunks == [
        ("t/0", "Title\n\nThis paragraph is running text.\n\nSecond prose paragraph.")
    ]


def test_topics_dict_reads_literal_without_executing() -> None:
    src = b"# header\nimport os\ntopics = {'a': 'text a', 'b': 'text b'}\n"
    assert sources.topics_dict(src) == {"a": "text a", "b": "text b"}


def test_handwritten_documents() -> None:
    text = "preamble ignored\n### ar/one\nنص عربي\n\n### hi/two\nहिंदी पाठ\n"
    assert sources.handwritten_documents(text) == [("ar/one", "نص عربي"), ("hi/two", "हिंदी पाठ")]


def test_python_chunks_keep_multiline_decorators_and_split_big_classes() -> None:
    methods = "".join(
        f"    @property(\n        doc='m{i}')\n    def m{i}(self):\n        return {i}  # {'z' * 90}\n\n"
        for i in range(20)
    )
    source = f"import os\n\n\nclass Big:\n{methods}"
    chunks = sources.python_chunks(source, target=300, max_chars=600)
    assert len(chunks) > 3
    assert all(len(c) <= 600 for c in chunks)
    for c in chunks[1:]:
        assert c.startswith("    @property(\n        doc='m")
