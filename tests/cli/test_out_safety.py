"""Every command's ``--out``: refused in one line before any work unless it is safe to write.

Each row sets up a folder, runs the command in-process through ``actscope.cli.main.main`` and
checks: exit status 2, exactly one stderr line starting ``actscope: error:``, no traceback, no
temporary entry left, and every file under the test folder byte-for-byte as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from tests._trees import temp_entries, tmpfs, tree_state

from actscope.cli.main import main
from actscope.runs import RunWriter
from actscope.utils.atomic import temp_name

TINY = ["-m", "tiny:llama"]


def _run(path: Path, command: str = "profile") -> Path:
    with RunWriter(path, command) as w:
        w.json("summary.json", {"command": command})
    return path


def _user_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def _corpus(tmp: Path) -> Path:
    p = tmp / "corpus.txt"
    p.write_text("alpha beta gamma delta epsilon zeta eta theta\niota kappa lambda mu nu\n")
    return p


def _sweep_spec(tmp: Path, names: list[str]) -> Path:
    body = "models:\n" + "".join(f"  - name: '{n}'\n    model: tiny:llama\n" for n in names)
    spec = tmp / "sweep.yaml"
    spec.write_text(body + "profile:\n  max_tokens: 32\n  seq_len: 16\n")
    return spec


# argv of every command that writes an output, without --out (the inputs need only exist)
def _commands(tmp: Path) -> dict[str, list[str]]:
    prof = _run(tmp / "in" / "profile")
    quant = _run(tmp / "in" / "quant", "quant")
    train = _run(tmp / "in" / "train", "steer train")
    cal = _run(tmp / "in" / "cal", "sparsity calibrate")
    corpus = str(_corpus(tmp / "in"))
    return {
        "profile": ["profile", *TINY, "-c", corpus],
        "compare": ["compare", str(prof)],
        "ablate": ["ablate", *TINY, "-p", str(prof)],
        "cache": ["cache", "tiny:llama", "-s", "resid_post", "--corpus", corpus],
        "clue": ["clue", *TINY],
        "lens": ["lens", *TINY],
        "patch": ["patch", *TINY],
        "probe": ["probe", *TINY],
        "quant": ["quant", *TINY],
        "covary": ["covary", str(quant)],
        "imatrix": ["imatrix", *TINY],
        "sparsity measure": ["sparsity", "measure", *TINY],
        "sparsity calibrate": ["sparsity", "calibrate", *TINY],
        "sparsity evaluate": ["sparsity", "evaluate", "-t", str(cal), *TINY],
        "sparsity bench": ["sparsity", "bench", "-t", str(cal), *TINY],
        "steer train": ["steer", "train", *TINY, "-d", corpus],
        "steer condition": ["steer", "condition", *TINY, "-d", corpus],
        "steer eval": ["steer", "eval", *TINY, "-v", str(train), "-d", corpus],
        "steer generate": ["steer", "generate", *TINY, "-p", "hello"],
        "sweep": ["sweep", str(_sweep_spec(tmp / "in", ["a"])), "--local"],
    }


def _refused(
    tmp: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> str:
    capsys.readouterr()
    before = tree_state(tmp)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("actscope: error: "), err
    assert "Traceback" not in err and match in lines[0], err
    assert tree_state(tmp) == before
    assert temp_entries(tmp) == []
    return lines[0]


COMMANDS = [
    "profile", "compare", "ablate", "cache", "clue", "lens", "patch", "probe", "quant", "covary",
    "imatrix", "sparsity measure", "sparsity calibrate", "sparsity evaluate", "sparsity bench",
    "steer train", "steer condition", "steer eval", "steer generate", "sweep",
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_that_is_not_an_actscope_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    argv = _commands(tmp_path)[command]
    mine = _user_folder(tmp_path / "mine")
    line = _refused(tmp_path, capsys, [*argv, "-o", str(mine)], f"--out {mine}")
    assert "not an actscope output" in line


# (id, setup(tmp) -> argv, expected part of the message)
Case = tuple[str, Callable[[Path], list[str]], str]


def _profile_argv(tmp: Path, out: str | Path) -> list[str]:
    return ["profile", *TINY, "-c", str(_corpus(tmp)), "-o", str(out)]


def _file(tmp: Path) -> Path:
    (tmp / "results.txt").write_text("keep me\n")
    return tmp / "results.txt"


def _link(tmp: Path) -> Path:
    (tmp / "link").symlink_to(_run(tmp / "target"))
    return tmp / "link"


def _in_cwd(tmp: Path, out: str) -> list[str]:
    (tmp / "work").mkdir()
    os.chdir(tmp / "work")
    return _profile_argv(tmp, out)


def _linked(target: Path, link: Path) -> Path:
    link.symlink_to(target)
    return link


def _nested_input(tmp: Path) -> list[str]:
    outer = _run(tmp / "cmp", "compare")
    inner = _run(outer / "p")
    return ["compare", str(inner), "-o", str(outer)]


def _sweep(tmp: Path, names: list[str], out: Path | None = None) -> list[str]:
    out = out or tmp / "sw"
    return ["sweep", str(_sweep_spec(tmp, names)), "--local", "-o", str(out)]


def _sweep_over_user_run(tmp: Path) -> list[str]:
    sw = tmp / "sw"
    sw.mkdir()
    (sw / "sweep.json").write_text(json.dumps({"command": "sweep", "models": []}))
    _user_folder(sw / "models" / "a")
    return _sweep(tmp, ["a"], sw)


def _store(tmp: Path) -> Path:
    from actscope.store.format import STORE_FORMAT

    s = tmp / "store"
    s.mkdir()
    (s / "manifest.json").write_text(json.dumps({"format": STORE_FORMAT, "versions": {}}))
    return s


CASES: list[Case] = [
    ("profile over a file", lambda t: _profile_argv(t, _file(t)), "is a file"),
    ("profile over a link", lambda t: _profile_argv(t, _link(t)), "is a symbolic link"),
    (
        "profile over a compare run",
        lambda t: _profile_argv(t, _run(t / "c", "compare")),
        "is an actscope `compare` run",
    ),
    ("profile over a store", lambda t: _profile_argv(t, _store(t)), "is an activation store"),
    ("profile under a file", lambda t: _profile_argv(t, _file(t) / "run"), "is a file, not a"),
    ("profile into .", lambda t: _in_cwd(t, "."), "is the current folder"),
    ("profile into ..", lambda t: _in_cwd(t, ".."), "is the current folder or one of its"),
    ("profile into an empty name", lambda t: _profile_argv(t, ""), "is the current folder"),
    (
        "profile whose corpus is inside the run it replaces",
        lambda t: [
            "profile",
            *TINY,
            "-o",
            str(_run(t / "p")),
            "-c",
            str(_corpus(t / "p")),
        ],
        "contains this command's input",
    ),
    (
        "compare onto its input",
        lambda t: ["compare", str(_run(t / "p")), "-o", str(t / "p")],
        "is one of this command's inputs",
    ),
    (
        "compare onto its input, -o first",
        lambda t: ["compare", "-o", str(_run(t / "p")), str(t / "p")],
        "is one of this command's inputs",
    ),
    (
        "compare inside its input",
        lambda t: ["compare", str(_run(t / "p")), "-o", str(t / "p" / "cmp")],
        "is inside this command's input",
    ),
    (
        "compare inside its input through ..",
        lambda t: ["compare", str(_run(t / "p")), "-o", f"{t}/x/../p/cmp"],
        "is inside this command's input",
    ),
    ("compare into a run holding its input", _nested_input, "contains this command's input"),
    (
        "compare through a link into its input",
        lambda t: ["compare", str(_run(t / "p")), "-o", str(_linked(t / "p", t / "l") / "cmp")],
        "is inside this command's input",
    ),
    (
        "compare onto its input spelled p/sub/..",
        lambda t: ["compare", str(_run(t / "p")), "-o", f"{t}/p/tables/.."],
        "is one of this command's inputs",
    ),
    (
        "ablate onto its profile",
        lambda t: ["ablate", *TINY, "-p", str(_run(t / "p")), "-o", str(t / "p")],
        "is one of this command's inputs",
    ),
    (
        "covary onto its quant run",
        lambda t: ["covary", str(_run(t / "q", "quant")), "-o", str(t / "q")],
        "is one of this command's inputs",
    ),
    (
        "steer eval onto its train run",
        lambda t: [
            "steer",
            "eval",
            *TINY,
            "-v",
            str(_run(t / "v", "steer train")),
            "-d",
            "x",
            "-o",
            str(t / "v"),
        ],
        "is one of this command's inputs",
    ),
    (
        "sparsity evaluate onto its calibration",
        lambda t: [
            "sparsity",
            "evaluate",
            *TINY,
            "-t",
            str(_run(t / "cal", "sparsity calibrate")),
            "-o",
            str(t / "cal"),
        ],
        "is one of this command's inputs",
    ),
    (
        "steer generate onto its prompt file",
        lambda t: ["steer", "generate", *TINY, "--prompts", str(_file(t)), "-o", str(_file(t))],
        "is one of this command's inputs",
    ),
    (
        "imatrix onto a folder",
        lambda t: ["imatrix", *TINY, "-o", str(_run(t / "p", "imatrix"))],
        "not a file",
    ),
    ("sweep model named .", lambda t: _sweep(t, ["."]), "model name '.' cannot name a run folder"),
    ("sweep model named ..", lambda t: _sweep(t, [".."]), "model name '..' cannot name"),
    ("sweep model named .hidden", lambda t: _sweep(t, [".x"]), "model name '.x' cannot name"),
    (
        "sweep into a profile run",
        lambda t: _sweep(t, ["a"], _run(t / "p")),
        "is an actscope `profile` run",
    ),
    ("sweep over a user folder in models/", _sweep_over_user_run, "models/a already exists and is a"),
    (
        "cache onto a run",
        lambda t: ["cache", "tiny:llama", "-s", "resid_post", "-o", str(_run(t / "p"))],
        "a previous activation store",
    ),
    (
        "cache --overwrite onto a user folder",
        lambda t: [
            "cache",
            "tiny:llama",
            "-s",
            "resid_post",
            "--overwrite",
            "-o",
            str(_user_folder(t / "mine")),
        ],
        "not an actscope output",
    ),
]


@pytest.mark.parametrize("setup,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_unsafe_out_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    setup: Callable[[Path], list[str]],
    match: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _refused(tmp_path, capsys, setup(tmp_path), match)


def test_unwritable_parent_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("actscope.runs.os.access", lambda path, mode: False)
    argv = _profile_argv(tmp_path, tmp_path / "new" / "run")
    _refused(tmp_path, capsys, argv, "is not writable (permission denied)")


def test_read_only_file_system_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "ro", 1024, read_only=True) as ro:
        argv = _profile_argv(tmp_path, ro / "run")
        _refused(tmp_path, capsys, argv, "is not writable (read-only file system)")


def test_nearly_full_disk_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("actscope.runs.free_bytes", lambda where: 1 << 20)
    loads: list[str] = []
    monkeypatch.setattr("actscope.models.load_model", lambda *a, **k: loads.append("load"))
    argv = _profile_argv(tmp_path, tmp_path / "run")
    _refused(tmp_path, capsys, argv, "needs at least 8.0 MiB free on disk, but")
    assert loads == []


def test_cache_disk_refusal_is_consistent_and_names_store_dtype(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("actscope.store.plan.free_bytes", lambda where: 3 << 20)
    argv = ["cache", "tiny:llama", "-s", "resid_post", "--dtype", "fp32"]
    argv += ["--corpus", str(_corpus(tmp_path)), "-o", str(tmp_path / "store")]
    line = _refused(tmp_path, capsys, argv, "more on disk")
    assert "plus a margin of 64.0 MiB, but" in line and "has only 3.0 MiB free" in line
    assert "--store-dtype bfloat16" in line and " --dtype" not in line


def test_cache_refuses_a_user_folder_named_like_its_work_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _user_folder(tmp_path / "store.partial")
    argv = ["cache", "tiny:llama", "-s", "resid_post", "--corpus", str(_corpus(tmp_path))]
    _refused(tmp_path, capsys, [*argv, "-o", str(tmp_path / "store")], "no plan.json")


# --- runs that do write: one real profile, then compares over it ---------------------------


@pytest.fixture(scope="module")
def profile_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prof")
    argv = [*_profile_argv(tmp, tmp / "p"), "--max-tokens", "48", "--seq-len", "24"]
    assert main(argv) == 0
    return tmp / "p"


def test_compare_replaces_its_previous_run_and_sweeps_stale_temporaries(
    tmp_path: Path, profile_run: Path
) -> None:
    out = tmp_path / "cmp"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    head, host, _pid, rand = temp_name("cmp").rsplit("-", 3)
    stale = tmp_path / f"{head}-{host}-{dead.pid}-{rand}"
    _user_folder(stale)  # what a killed writer leaves
    assert main(["compare", str(profile_run), "-o", str(out)]) == 0
    first = (out / "manifest.json").read_text()
    assert main(["compare", str(profile_run), "-o", str(out)]) == 0
    assert (out / "manifest.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]


def test_compare_into_an_empty_folder(tmp_path: Path, profile_run: Path) -> None:
    (tmp_path / "cmp").mkdir()
    assert main(["compare", str(profile_run), "-o", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "report.html").exists()


def test_full_disk_while_writing_keeps_the_previous_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    profile_run: Path,
) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(profile_run), "-o", str(out)]) == 0

    def full(*args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    line = _refused(tmp_path, capsys, ["compare", str(profile_run), "-o", str(out)], "cannot")
    assert line == (
        f"actscope: error: cannot write {out}: No space left on device; "
        "the previous one there is unchanged"
    )


def test_cache_on_a_full_disk_keeps_its_shards_for_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: object, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("actscope.store.writer.atomic_write_bytes", full)
    out = tmp_path / "store"
    argv = ["cache", "tiny:llama", "-s", "resid_post", "--corpus", str(_corpus(tmp_path))]
    assert main([*argv, "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        f"actscope: error: cannot write {out}: No space left on device; the finished shards "
        f"in {out}.partial are kept: run the command again to resume"
    )
    assert "Traceback" not in "".join(lines) and not out.exists()
