"""Atomic files and folders: temporary names, the stale sweep, the publish lock, crashes, races."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from tests._trees import temp_entries, tree_state

from actscope.errors import OutputError
from actscope.utils import atomic
from actscope.utils.atomic import (
    STALE_SECONDS,
    atomic_dir,
    atomic_write_bytes,
    is_stale,
    lock_path,
    publish_dir,
    sweep_stale,
    temp_name,
)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


# --- files ---------------------------------------------------------------------------------


def test_file_is_written_and_replaced_without_leftovers(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "x.bin"
    atomic_write_bytes(dest, b"one")
    atomic_write_bytes(dest, b"two")
    assert dest.read_bytes() == b"two"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.bin"]
    assert oct(dest.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_full_disk_while_writing_a_file_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "x.txt"
    atomic_write_bytes(dest, b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"old" and temp_entries(tmp_path) == []


# --- folders -------------------------------------------------------------------------------


def test_folder_is_built_under_a_recognisable_name_then_published(tmp_path: Path) -> None:
    dest = tmp_path / "run"
    with atomic_dir(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".run.actscope-tmp-")
        assert f"-{os.getpid()}-" in tmp.name and atomic.is_temp_name(tmp.name)
        (tmp / "a.txt").write_text("1")
        assert not dest.exists()
    assert (dest / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_folder_replaces_the_previous_one_whole(tmp_path: Path) -> None:
    dest = _make(tmp_path / "run", {"a.txt": "old", "only_old.txt": "x"})
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("new")
    assert tree_state(dest) == tree_state(_make(tmp_path / "want", {"a.txt": "new"}))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_both_publish_paths_replace_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    dest = _make(tmp_path / "run", {"a.txt": "old"})
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_error_in_the_block_leaves_the_previous_folder(tmp_path: Path) -> None:
    dest = _make(tmp_path / "run", {"a.txt": "old"})
    before = tree_state(tmp_path)
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert tree_state(tmp_path) == before


def test_no_overwrite_refuses_before_any_work(tmp_path: Path) -> None:
    dest = _make(tmp_path / "run", {"a.txt": "old"})
    with pytest.raises(FileExistsError), atomic_dir(dest, overwrite=False):
        pass
    assert temp_entries(tmp_path) == []


def test_publish_asks_replaceable_under_the_lock(tmp_path: Path) -> None:
    dest = tmp_path / "run"
    before = {}
    refuse = atomic_dir(dest, replaceable=lambda p: "not yours")
    with pytest.raises(OutputError, match="not yours"), refuse as tmp:
        (tmp / "a.txt").write_text("new")
        _make(dest, {"user.txt": "mine"})  # appears while the run is being written
        before = tree_state(dest)
    assert tree_state(dest) == before and temp_entries(tmp_path) == []


def test_publish_without_replaceable_never_replaces_a_file(tmp_path: Path) -> None:
    dest = tmp_path / "run"
    dest.write_text("a file")
    with pytest.raises(OutputError, match="not a folder"), atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("new")
    assert dest.read_text() == "a file" and temp_entries(tmp_path) == []


# --- stale entries -------------------------------------------------------------------------

DAY = STALE_SECONDS


def _entry(
    parent: Path, name: str, *, pid: int | None = None, host: str | None = None, age: float = 0
) -> Path:
    if pid is not None or host is not None:
        stem = temp_name(name)  # .NAME.actscope-tmp-HOST-PID-RAND
        head, _host, _pid, rand = stem.rsplit("-", 3)
        name = f"{head}-{host or _host}-{pid or _pid}-{rand}"
    p = parent / name
    p.mkdir()
    (p / "f").write_text("x")
    t = time.time() - age
    os.utime(p, (t, t))
    return p


# (description, pid: "dead" / "self" / "alive child", host: None = this one, age in days, swept)
STALE_ROWS = [
    ("dead writer on this host", "dead", None, 0, True),
    ("this very process", "self", None, 0, False),
    ("live writer on this host, fresh", "alive", None, 0, False),
    ("live writer on this host, two days old", "alive", None, 2, True),
    ("other host, fresh", "dead", "abcdef", 0, False),
    ("other host, two days old", "dead", "abcdef", 2, True),
]


@pytest.mark.parametrize(
    "pid_kind,host,days,swept", [r[1:] for r in STALE_ROWS], ids=[r[0] for r in STALE_ROWS]
)
def test_stale_rule(tmp_path: Path, pid_kind: str, host: str | None, days: int, swept: bool) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid = {"dead": _dead_pid(), "self": os.getpid(), "alive": child.pid}[pid_kind]
        e = _entry(tmp_path, "run", pid=pid, host=host, age=days * DAY + 60 * (days > 0))
        assert is_stale(e) == swept
        assert sweep_stale(tmp_path) == ([e.name] if swept else [])
        assert e.exists() != swept
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    "name",
    [".notes", ".run.tmp-abc", ".run.actscope-tmp-zz", "run.actscope-tmp-abcdef-1-00", "data"],
)
def test_sweep_leaves_other_names_alone(tmp_path: Path, name: str) -> None:
    e = _entry(tmp_path, name, age=3 * DAY)
    assert sweep_stale(tmp_path) == [] and e.exists()


def test_sweep_removes_an_unheld_lock_and_keeps_a_held_one(tmp_path: Path) -> None:
    left = lock_path(tmp_path / "a")
    left.write_text("")
    held = lock_path(tmp_path / "b")
    with atomic._locked(held):
        assert sweep_stale(tmp_path) == [left.name]
        assert held.exists()
    assert not held.exists() and not left.exists()


def test_sweep_puts_back_a_previous_run_left_aside_by_a_killed_publish(tmp_path: Path) -> None:
    old = tmp_path / temp_name("run", "old")
    head, host, _pid, rand = old.name.rsplit("-", 3)
    aside = _make(tmp_path / f"{head}-{host}-{_dead_pid()}-{rand}", {"a.txt": "previous"})
    assert sweep_stale(tmp_path) == [aside.name]
    assert (tmp_path / "run" / "a.txt").read_text() == "previous"


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from actscope.utils.atomic import atomic_dir
    with atomic_dir(Path(sys.argv[1])) as tmp:
        (tmp / "part.txt").write_text("half")
        print("writing", flush=True)
        time.sleep(60)
    """
)


def test_sigkill_while_writing_leaves_a_temp_folder_the_next_run_sweeps(tmp_path: Path) -> None:
    dest = _make(tmp_path / "run", {"a.txt": "previous"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(dest)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = temp_entries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".run.actscope-tmp-")
    assert (dest / "a.txt").read_text() == "previous"
    with atomic_dir(tmp_path / "other") as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "run"]


# --- two writers, one destination ----------------------------------------------------------

N_FILES = 6


def _publisher(dest: str, who: int, rounds: int, errors: Any, start: Any) -> None:
    try:
        start.wait()  # all at once: without the lock, 5-10 of 20 writers failed this way
        for r in range(rounds):
            with atomic_dir(dest) as tmp:
                for k in range(N_FILES):
                    (tmp / f"f{k}.txt").write_text(f"{who}:{r}")
                    sub = tmp / "sub"
                    sub.mkdir(exist_ok=True)
                    (sub / f"g{k}.txt").write_text(f"{who}:{r}")
    except BaseException as exc:  # reported to the parent, which fails the test
        errors.put(f"{who}: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_many_concurrent_publishers_never_fail_or_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:  # fork keeps the patch in the children
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    ctx = mp.get_context("fork")
    errors, start = ctx.Queue(), ctx.Barrier(20)
    dest = tmp_path / "run"
    procs = [
        ctx.Process(target=_publisher, args=(str(dest), i, 5, errors, start)) for i in range(20)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 20
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    values = {f.read_text() for f in dest.rglob("*.txt")}
    assert len(values) == 1 and len(list(dest.rglob("*.txt"))) == 2 * N_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_publish_dir_moves_a_folder_into_a_missing_destination(tmp_path: Path) -> None:
    src = _make(tmp_path / temp_name("run"), {"a.txt": "1"})
    publish_dir(src, tmp_path / "run")
    assert (tmp_path / "run" / "a.txt").read_text() == "1" and not src.exists()
