"""Run directories: every command writes one, atomically, and replaces only its own kind.

Layout of ``OUT/``::

    manifest.json   what ran: command, arguments, model (name, file hash, dtype, device),
                    corpus, library versions, seed, wall time, tokens and tokens/s
    summary.json    the headline numbers of the command
    tables/*.parquet tidy tables (one row per site and statistic, per event, per setting...)
    report.html     the self-contained HTML report
    exports/...     files meant for other tools (act scales, imatrix, vectors)

Everything is written into a hidden sibling folder and renamed to ``OUT`` only when the command
succeeded, so a crash never leaves a half-written directory that looks complete
(:mod:`actscope.utils.atomic`).

:func:`check_out` is the one preflight of every output location, run before any model is loaded
(the CLI's ``--out`` option calls it while parsing the arguments): an existing ``OUT`` is
replaced only when it is a previous output of the same kind (a run of the same command, an
activation store, a sweep folder) or an empty folder; anything else is refused.
"""

from __future__ import annotations

import errno
import importlib.metadata as md
import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pandas as pd

from actscope.errors import OutputError, ResourceError
from actscope.utils.atomic import atomic_dir, free_bytes, nearest_existing

_LIBS = ("actscope", "torch", "transformers", "accelerate", "numpy", "pyarrow", "gguf")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that affect results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _LIBS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and tuples to JSON-friendly values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and obj != obj:
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


OutKind = Literal["run", "store", "sweep", "file"]
"""What an output location holds: a run folder, an activation store, a sweep folder, one file."""

RESERVE_BYTES = 8 << 20
"""Free space required beyond the estimated size (the whole requirement when it is unknown)."""

_KIND_NAMES = {
    "run": "an actscope run",
    "store": "an activation store",
    "sweep": "a sweep folder",
    "empty": "an empty folder",
    "folder": "a folder that is not an actscope output",
    "file": "a file",
    "link": "a symbolic link",
}


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def existing_output(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """What ``path`` holds: ``(kind, command)``.

    kind: ``missing``, ``link``, ``file``, ``empty`` (a folder without entries), ``run`` (a
    ``manifest.json`` with actscope's ``command`` and ``versions`` fields; command is its
    command), ``store`` (a ``manifest.json`` of format ``actscope-activation-store``),
    ``sweep`` (a ``sweep.json`` whose command is ``sweep``) or ``folder`` (anything else).
    """
    from actscope.store.format import STORE_FORMAT

    p = Path(path)
    if p.is_symlink():
        return "link", None
    if not p.exists():
        return "missing", None
    if not p.is_dir():
        return "file", None
    try:
        with os.scandir(p) as it:
            empty = next(it, None) is None
    except OSError:
        return "folder", None
    if empty:
        return "empty", None
    m = _read_json(p / "manifest.json")
    if isinstance(m, dict) and isinstance(m.get("versions"), dict):
        if m.get("format") == STORE_FORMAT:
            return "store", None
        if isinstance(m.get("command"), str):
            return "run", m["command"]
    s = _read_json(p / "sweep.json")
    if isinstance(s, dict) and s.get("command") == "sweep":
        return "sweep", None
    return "folder", None


def replace_refusal(
    path: str | os.PathLike[str], kind: OutKind, command: str | None = None
) -> str | None:
    """Why the existing ``path`` must not be replaced by an output of ``kind``; None if it may.

    A folder output replaces a missing path, an empty folder, or a previous output of the same
    kind (for runs: of the same ``command``, when given). A file output replaces a file.
    """
    found, cmd = existing_output(path)
    if found == "missing":
        return None
    if kind == "file":
        if found == "file":
            return None
        return f"--out {path} is {_KIND_NAMES[found]}, not a file; give a file name"
    if found == "empty" or (found == kind and (command is None or cmd in (None, command))):
        return None
    what = _KIND_NAMES[found] if found != "run" else f"an actscope `{cmd}` run"
    mine = {
        "run": f"a previous `{command}` run" if command else "a previous actscope run",
        "store": "a previous activation store",
        "sweep": "a previous sweep folder",
    }[kind]
    return (
        f"--out {path} already exists and is {what}; actscope replaces only {mine} or an empty "
        "folder: choose another --out or remove it yourself"
    )


def resolved_out(out: str | os.PathLike[str]) -> Path:
    """``out`` as the file system will see it: absolute, its folders' links and ``..`` resolved.

    The last component is kept as given (a link there stays a link), unless it is ``..``.
    """
    p = Path(out).expanduser()
    p = p if p.is_absolute() else Path.cwd() / p
    if p.name in ("", ".."):
        return p.resolve()
    return p.parent.resolve() / p.name


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out(
    out: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    size_bytes: int | None = None,
    kind: OutKind = "run",
    command: str | None = None,
) -> Path:
    """Check that ``out`` may be written and return it as an absolute path; raise otherwise.

    Refused (:class:`OutputError`): an empty name; the current folder or one of its ancestors;
    ``out`` equal to, inside, or an ancestor of one of ``inputs`` (paths the command reads;
    those that do not exist are ignored); an existing ``out`` that :func:`replace_refusal`
    rejects; a location whose nearest existing ancestor is not a writable folder. Refused
    (:class:`~actscope.errors.ResourceError`): fewer free bytes than ``size_bytes`` (0 when
    unknown) + :data:`RESERVE_BYTES`. Reads only; creates nothing.
    """
    if str(out).strip() == "":
        raise OutputError("--out is empty; give the path of the output to write")
    target = resolved_out(out)
    if _within(Path.cwd().resolve(), target) or target == Path(target.anchor):
        raise OutputError(
            f"--out {out} is the current folder or one of its parents; give a new folder name"
        )
    for item in inputs:
        src = Path(item).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if target == src:
            raise OutputError(f"--out {out} is one of this command's inputs ({item})")
        if _within(target, src):
            raise OutputError(f"--out {out} is inside this command's input {item}")
        if _within(src, target):
            raise OutputError(f"--out {out} contains this command's input {item}")
    why = replace_refusal(target, kind, command)
    if why is not None:
        raise OutputError(why)
    base = nearest_existing(target.parent)
    if not base.is_dir():
        raise OutputError(f"cannot create --out {out}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(base) else "permission denied"
        raise OutputError(f"cannot write --out {out}: {base} is not writable ({reason})")
    ensure_free(base, size_bytes or 0, f"--out {out}")
    return target


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def mib(n: float) -> str:
    """A byte count as MiB (GiB from 256 MiB up), one decimal: ``"3.0 MiB"``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def ensure_free(
    where: str | os.PathLike[str],
    needed: int,
    what: str,
    *,
    reserve: int = RESERVE_BYTES,
    free: int | None = None,
    detail: str = "",
    hint: str = "free some space or pick another --out",
) -> int:
    """Raise :class:`ResourceError` unless ``where`` has ``needed`` + ``reserve`` bytes free.

    Returns the free bytes (``free``: already measured). ``detail`` (how ``needed`` was
    estimated) and ``hint`` (what to do) go into the one-line message.
    """
    free = free_bytes(where) if free is None else free
    if needed + reserve <= free:
        return free
    at = nearest_existing(where)
    if needed:
        how = f" ({detail})" if detail else ""
        size = f"about {mib(needed)} more on disk{how} plus a margin of {mib(reserve)}"
    else:
        size = f"at least {mib(reserve)} free on disk"
    raise ResourceError(f"{what} needs {size}, but {at} has only {mib(free)} free; {hint}")


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def write_failure(
    exc: BaseException, out: Path, tmp: Path | None = None, kept: str | None = None
) -> OutputError | None:
    """The one-line error for an exception raised while writing ``out`` (None: not one).

    Disk full, quota, file too large and read-only file system always count; permission
    errors only when they name a path inside the temporary folder ``tmp`` or ``out``. torch's
    archive writer reports a full disk as a RuntimeError without errno: it counts when
    ``tmp`` has less than :data:`RESERVE_BYTES` free (call this before ``tmp`` is removed).
    ``kept``: what the message says is left (default: the previous ``out``, or nothing).
    """
    if isinstance(exc, RuntimeError) and tmp is not None and _torch_write_error(exc):
        code: int | None = errno.ENOSPC if free_bytes(tmp) < RESERVE_BYTES else None
    elif isinstance(exc, OSError):
        code = exc.errno
    else:
        return None
    named = getattr(exc, "filename", None)
    inside = named is not None and any(
        _within(Path(os.path.abspath(named)), p) for p in (tmp, out) if p is not None
    )
    if code not in _WRITE_ERRNOS and not (code in (errno.EACCES, errno.EPERM) and inside):
        return None
    if kept is None:
        exists = os.path.lexists(out)
        kept = "the previous one there is unchanged" if exists else "nothing was written"
    return OutputError(f"cannot write {out}: {os.strerror(code or 0)}; {kept}")


def _torch_write_error(exc: RuntimeError) -> bool:
    text = str(exc)
    return "inline_container" in text or "PytorchStreamWriter" in text


class RunWriter(AbstractContextManager["RunWriter"]):
    """Collects a run's files in a temporary folder and publishes them on success.

    Construction runs :func:`check_out` (``inputs``: the paths the command reads), so create
    the writer before the expensive work. Publishing replaces a previous run of the same
    ``command`` only (checked again under the publish lock). A write that fails for lack of
    space or permission raises :class:`OutputError` with one line; the temporary folder is
    removed and a previous run at ``out`` is left as it was.
    """

    def __init__(
        self,
        out: str | Path,
        command: str,
        args: dict[str, Any] | None = None,
        *,
        inputs: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.out = check_out(out, inputs=inputs, kind="run", command=command)
        self.command = command
        self.manifest: dict[str, Any] = {
            "command": command,
            "args": to_jsonable(args or {}),
            "versions": library_versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._t0 = time.perf_counter()
        self._ctx = atomic_dir(self.out, replaceable=lambda p: replace_refusal(p, "run", command))
        self.tmp: Path | None = None

    def __enter__(self) -> RunWriter:
        try:
            self.tmp = self._ctx.__enter__()
        except OSError as exc:
            mapped = write_failure(exc, self.out)
            if mapped is None:
                raise
            raise mapped from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc is None:
            try:
                # the run's own figure when it measured one before writing (a profile does)
                self.manifest.setdefault("wall_seconds", round(time.perf_counter() - self._t0, 3))
                self.manifest["write_seconds"] = round(time.perf_counter() - self._t0, 3)
                self.json("manifest.json", self.manifest)
            except BaseException as failed:
                exc = failed
            else:
                try:
                    return self._ctx.__exit__(None, None, None)
                except OSError as failed:  # publishing failed; the temporary folder is gone
                    mapped = write_failure(failed, self.out, self.tmp)
                    if mapped is None:
                        raise
                    raise mapped from failed
        mapped = write_failure(exc, self.out, self.tmp)  # while the temporary folder is there
        self._ctx.__exit__(type(exc), exc, exc.__traceback__)
        if mapped is not None:
            raise mapped from exc
        if exc_type is None:
            raise exc
        return False

    @property
    def path(self) -> Path:
        assert self.tmp is not None, "RunWriter used outside its with-block"
        return self.tmp

    def table(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``tables/<name>.parquet``."""
        p = self.path / "tables" / f"{name}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(p, index=False)
        return p

    def json(self, name: str, obj: Any) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False))
        return p

    def text(self, name: str, text: str) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return p

    def file(self, name: str) -> Path:
        """Path inside the run folder for a file written by another library."""
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
