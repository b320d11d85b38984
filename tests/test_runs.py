"""Run folders: what an existing output is, when it may be replaced, the preflight, write errors."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from actscope import runs
from actscope.errors import OutputError, ResourceError
from actscope.runs import RunWriter, check_out, ensure_free, existing_output, replace_refusal
from actscope.store.format import STORE_FORMAT
from actscope.store.plan import check_disk
from tests._trees import temp_entries, tmpfs, tree_state


def _run(path: Path, command: str = "profile", text: str = "previous") -> Path:
    with RunWriter(path, command) as w:
        w.json("summary.json", {"text": text})
        w.table("t", pd.DataFrame({"a": [1, 2]}))
    return path


def _json(path: Path, name: str, obj: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _user_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def _link(path: Path) -> Path:
    target = _run(path.with_name("target"))
    path.symlink_to(target)
    return path


VERSIONS = {"python": "3.11"}
MAKERS = {
    "missing": lambda p: p,
    "empty": lambda p: (p.mkdir(), p)[1],
    "file": lambda p: (p.write_text("x"), p)[1],
    "link": _link,
    "run": _run,
    "compare run": lambda p: _run(p, "compare"),
    "user folder": _user_folder,
    "other tool's manifest": lambda p: _json(p, "manifest.json", {"name": "x"}),
    "broken manifest": lambda p: _json(p, "manifest.json", "{not json"),
    "manifest without versions": lambda p: _json(p, "manifest.json", {"command": "profile"}),
    "store": lambda p: _json(p, "manifest.json", {"format": STORE_FORMAT, "versions": VERSIONS}),
    "sweep": lambda p: _json(p, "sweep.json", {"command": "sweep", "models": []}),
}

KIND_ROWS = [
    ("missing", ("missing", None)),
    ("empty", ("empty", None)),
    ("file", ("file", None)),
    ("link", ("link", None)),
    ("run", ("run", "profile")),
    ("compare run", ("run", "compare")),
    ("user folder", ("folder", None)),
    ("other tool's manifest", ("folder", None)),
    ("broken manifest", ("folder", None)),
    ("manifest without versions", ("folder", None)),
    ("store", ("store", None)),
    ("sweep", ("sweep", None)),
]


@pytest.mark.parametrize("made,want", KIND_ROWS, ids=[r[0] for r in KIND_ROWS])
def test_existing_output(tmp_path: Path, made: str, want: tuple[str, str | None]) -> None:
    assert existing_output(MAKERS[made](tmp_path / "x")) == want


# (existing, kind of the new output, command of the new run, replaced?)
REPLACE_ROWS = [
    ("missing", "run", "profile", True),
    ("empty", "run", "profile", True),
    ("run", "run", "profile", True),
    ("run", "run", None, True),
    ("run", "run", "compare", False),
    ("compare run", "run", "profile", False),
    ("user folder", "run", "profile", False),
    ("other tool's manifest", "run", "profile", False),
    ("file", "run", "profile", False),
    ("link", "run", "profile", False),
    ("store", "run", "profile", False),
    ("sweep", "run", "profile", False),
    ("store", "store", None, True),
    ("run", "store", None, False),
    ("user folder", "store", None, False),
    ("sweep", "sweep", None, True),
    ("run", "sweep", None, False),
    ("file", "file", None, True),
    ("empty", "file", None, False),
    ("run", "file", None, False),
]


@pytest.mark.parametrize(
    "made,kind,command,replaced", REPLACE_ROWS, ids=[f"{r[1]} over {r[0]}" for r in REPLACE_ROWS]
)
def test_replace_refusal(
    tmp_path: Path, made: str, kind: runs.OutKind, command: str | None, replaced: bool
) -> None:
    why = replace_refusal(MAKERS[made](tmp_path / "x"), kind, command)
    assert (why is None) == replaced
    if why is not None:
        assert "\n" not in why and why.startswith(f"--out {tmp_path / 'x'}")


# --- check_out -----------------------------------------------------------------------------


def _inputs_case(tmp_path: Path, how: str) -> tuple[Path, list[Path]]:
    a = _run(tmp_path / "a")
    return {
        "is an input": (a, [a]),
        "inside an input": (a / "sub" / "out", [a]),
        "contains an input": (tmp_path, [a]),
        "an input through ..": (tmp_path / "b" / ".." / "a", [a]),
    }[how], []


@pytest.mark.parametrize(
    "how,match",
    [
        ("is an input", "is one of this command's inputs"),
        ("inside an input", "is inside this command's input"),
        ("contains an input", "contains this command's input"),
        ("an input through ..", "is one of this command's inputs"),
    ],
)
def test_out_refused_around_inputs(tmp_path: Path, how: str, match: str) -> None:
    (out, inputs), _ = _inputs_case(tmp_path, how)
    (tmp_path / "b").mkdir(exist_ok=True)
    before = tree_state(tmp_path)
    with pytest.raises(OutputError, match=match):
        check_out(out, inputs=inputs, command="profile")
    assert tree_state(tmp_path) == before


def test_missing_inputs_are_ignored_and_the_path_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_out("new/run", inputs=["nowhere"]) == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # reads only


@pytest.mark.parametrize("out", [".", "..", "", "  "])
def test_current_folder_parents_and_empty_names_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(OutputError, match="current folder|is empty"):
        check_out(out)


def test_parent_that_is_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_out(tmp_path / "f" / "run")


def test_unwritable_parent_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=r"is not writable \(permission denied\)"):
        check_out(tmp_path / "new" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_folder_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_out(ro / "run")
    finally:
        ro.chmod(0o755)


def test_read_only_file_system_refused(tmp_path: Path) -> None:
    msg = r"not writable \(read-only file system\)"
    with tmpfs(tmp_path / "ro", 1024, read_only=True) as ro, pytest.raises(OutputError, match=msg):
        check_out(ro / "run")


def test_too_little_space_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "free_bytes", lambda where: 3 << 20)
    with pytest.raises(ResourceError, match="needs at least 8.0 MiB free on disk, but .* 3.0 MiB"):
        check_out(tmp_path / "run")
    with pytest.raises(ResourceError, match="about 2.00 GiB more on disk plus a margin of 8.0 MiB"):
        monkeypatch.setattr(runs, "free_bytes", lambda where: 2 << 30)
        check_out(tmp_path / "run", size_bytes=2 << 30)


def test_disk_message_agrees_with_itself(tmp_path: Path) -> None:
    with pytest.raises(ResourceError) as err:
        ensure_free(tmp_path, 200 << 10, "the store", reserve=64 << 20, free=3 << 20)
    msg = str(err.value)
    assert "needs about 0.2 MiB more on disk plus a margin of 64.0 MiB" in msg
    assert "has only 3.0 MiB free" in msg


@pytest.mark.parametrize("dtype,hint", [("float32", True), ("bfloat16", False)])
def test_store_disk_refusal_names_store_dtype(tmp_path: Path, dtype: str, hint: bool) -> None:
    plan = SimpleNamespace(estimated_bytes=1 << 60, dtype=dtype, n_tokens=10, bytes_per_row=8)
    with pytest.raises(ResourceError) as err:
        check_disk(plan, tmp_path)  # type: ignore[arg-type]
    msg = str(err.value)
    assert ("--store-dtype bfloat16" in msg) == hint and "--dtype" not in msg.replace(
        "--store-dtype", ""
    )
    assert "(10 tokens x 8 bytes) plus a margin of 64.0 MiB" in msg


# --- RunWriter -----------------------------------------------------------------------------


def _enospc(*args: object, **kw: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _erofs(*args: object, **kw: object) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


@pytest.mark.parametrize(
    "where,reason",
    [
        ("table", "No space left on device"),
        ("manifest", "No space left on device"),
        ("publish", "Read-only file system"),
    ],
)
def test_write_failure_keeps_the_previous_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, reason: str
) -> None:
    out = _run(tmp_path / "run")
    before = tree_state(tmp_path)
    if where == "table":
        monkeypatch.setattr(pd.DataFrame, "to_parquet", _enospc)
    elif where == "manifest":
        monkeypatch.setattr(RunWriter, "json", lambda self, name, obj: _enospc())
    else:
        monkeypatch.setattr("actscope.utils.atomic._exchange", _erofs)
    with pytest.raises(OutputError) as err, RunWriter(out, "profile") as w:
        w.table("t", pd.DataFrame({"a": [3]}))
    assert str(err.value) == (
        f"cannot write {out}: {reason}; the previous one there is unchanged"
    )
    assert tree_state(tmp_path) == before and temp_entries(tmp_path) == []


def _big_bytes(w: RunWriter) -> None:
    w.file("big.bin").write_bytes(b"\0" * (16 << 20))


def _big_parquet(w: RunWriter) -> None:
    w.table("big", pd.DataFrame({"a": np.random.default_rng(0).random(2_000_000)}))


def _big_torch(w: RunWriter) -> None:
    torch.save(torch.randn(4_000_000), w.file("exports/big.pt"))


@pytest.mark.parametrize("write", [_big_bytes, _big_parquet, _big_torch])
def test_a_real_full_disk(tmp_path: Path, write: Callable[[RunWriter], None]) -> None:
    with tmpfs(tmp_path / "small", 12 << 10) as small:
        out = _run(small / "run")
        before = tree_state(small)
        with pytest.raises(OutputError, match="No space left"), RunWriter(out, "profile") as w:
            write(w)
        assert tree_state(small) == before and temp_entries(small) == []


def test_other_errors_pass_through_and_clean_up(tmp_path: Path) -> None:
    out = _run(tmp_path / "run")
    before = tree_state(tmp_path)
    with pytest.raises(FileNotFoundError), RunWriter(out, "profile"):
        (tmp_path / "missing.txt").read_text()
    with pytest.raises(KeyboardInterrupt), RunWriter(out, "profile") as w:
        w.text("report.html", "half")
        raise KeyboardInterrupt
    assert tree_state(tmp_path) == before and temp_entries(tmp_path) == []


def test_writer_refuses_at_construction(tmp_path: Path) -> None:
    user = _user_folder(tmp_path / "mine")
    before = tree_state(tmp_path)
    with pytest.raises(OutputError, match="is a folder that is not an actscope output"):
        RunWriter(user, "profile")
    with pytest.raises(OutputError, match="is inside this command's input"):
        RunWriter(_run(tmp_path / "p") / "x", "compare", inputs=[tmp_path / "p"])
    before["p"] = tree_state(tmp_path)["p"]
    assert tree_state(tmp_path).items() >= before.items()


def test_rerun_replaces_the_previous_run(tmp_path: Path) -> None:
    out = _run(tmp_path / "run", text="first")
    _run(out, text="second")
    assert json.loads((out / "summary.json").read_text()) == {"text": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
