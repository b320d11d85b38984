"""Atomic writes: a result on disk is either complete or absent, and never replaces the wrong thing.

Files are written next to their destination under a temporary name and renamed with
:func:`os.rename` (atomic on POSIX within one file system). Run folders are built in a sibling
temporary folder and published only when everything inside has been written; a failure removes
the temporary folder and leaves any previous result untouched.

Names of the temporary entries, all hidden siblings of the destination ``NAME``::

    .NAME.actscope-tmp-HOST-PID-RANDOM   a folder or file being written by process PID on HOST
    .NAME.actscope-old-HOST-PID-RANDOM   the previous NAME, moved aside while it is replaced
    .NAME.actscope-lock                  the lock file of the publish step (removed after it)

HOST is a 6-hex digest of the host name. An entry is *stale* when its process is no longer
alive on this host, or when it is older than a day (:data:`STALE_SECONDS`, the rule for
entries of other hosts on a shared file system); every writer sweeps the stale entries of the
folder it writes into before it starts (:func:`sweep_stale`).

Publishing (:func:`publish_dir`) holds an exclusive :func:`fcntl.flock` on the lock file, so
two writers to the same destination never interleave: the last one wins with a complete
folder. Under the lock the destination is swapped with the new folder in one step
(``renameat2(RENAME_EXCHANGE)`` on Linux); where that call is missing the previous folder is
renamed aside first, and a writer killed between the two renames leaves it as an ``-old-``
entry that the next sweep puts back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from actscope.errors import OutputError

STALE_SECONDS = 24 * 3600
"""Age after which a temporary entry is stale whatever its process (mtime, seconds)."""

_TEMP = re.compile(
    r"^\.(?P<name>.+)\.actscope-(?P<kind>tmp|old)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]+$"
)
_LOCK_SUFFIX = ".actscope-lock"
_RENAME_EXCHANGE = 2


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute, or its nearest ancestor that exists."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(path)).free


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temp_name(name: str, kind: str = "tmp") -> str:
    """Hidden sibling name ``.NAME.actscope-KIND-HOST-PID-RANDOM`` for ``kind`` tmp or old."""
    return f".{name}.actscope-{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_name(name: str) -> bool:
    """True for the name of an actscope temporary entry or lock file."""
    return _TEMP.match(name) is not None or (name.startswith(".") and name.endswith(_LOCK_SUFFIX))


def lock_path(dest: Path) -> Path:
    """The lock file guarding the publish step of ``dest``."""
    return dest.with_name(f".{dest.name}{_LOCK_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def is_stale(entry: Path, now: float | None = None) -> bool:
    """True for an actscope temporary entry whose writer is gone (see the module docstring)."""
    m = _TEMP.match(entry.name)
    if m is None:
        return False
    try:
        age = (time.time() if now is None else now) - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_SECONDS:
        return True
    return m["host"] == _host() and not _pid_alive(int(m["pid"]))


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def sweep_stale(folder: str | os.PathLike[str]) -> list[str]:
    """Remove the stale temporary entries and unused lock files in ``folder``; return their names.

    A stale ``-old-`` folder whose destination is missing (a writer killed between the two
    renames of the fallback publish) is renamed back to its destination instead. Best effort:
    entries that cannot be removed are left.
    """
    parent = Path(folder)
    swept: list[str] = []
    try:
        with os.scandir(parent) as it:
            names = [e.name for e in it if e.name.startswith(".")]
    except OSError:
        return swept
    for name in names:
        entry = parent / name
        if name.endswith(_LOCK_SUFFIX):
            if _drop_unused_lock(entry):
                swept.append(name)
            continue
        if not is_stale(entry):
            continue
        m = _TEMP.match(name)
        assert m is not None
        if m["kind"] == "old":
            dest = parent / m["name"]
            with contextlib.suppress(OSError), _locked(lock_path(dest)):
                if not os.path.lexists(dest):
                    os.rename(entry, dest)
                    swept.append(name)
                    continue
        _remove(entry)
        swept.append(name)
    return swept


def _open_lock(path: Path, blocking: bool) -> int | None:
    """An fd holding ``flock(LOCK_EX)`` on the lock file at ``path`` (None: busy, non-blocking).

    The holder unlinks the file before releasing it, so after locking, the file must still be
    the one at ``path``; otherwise it was released and removed meanwhile and we open it again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        held = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


def _release(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = _open_lock(path, blocking=True)
    assert fd is not None
    try:
        yield
    finally:
        _release(path, fd)


def _drop_unused_lock(path: Path) -> bool:
    """Remove a lock file left by a killed writer (only when nobody holds it)."""
    try:
        fd = _open_lock(path, blocking=False)
    except OSError:
        return False
    if fd is None:
        return False
    _release(path, fd)
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2``); False where unsupported."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    at_cwd = -100
    rc = fn(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_dir(
    tmp: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    replaceable: Callable[[Path], str | None] | None = None,
) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing a previous ``dest`` atomically.

    Runs under the lock of ``dest``. ``replaceable(dest)`` is asked again under the lock when
    ``dest`` exists: a message (str) refuses the replacement with :class:`OutputError`, None
    allows it. Without ``replaceable`` only a folder (not a file or link) is replaced. On
    failure ``tmp`` is left for the caller to remove and ``dest`` is as it was.
    """
    src, target = Path(tmp), Path(dest)
    old: Path | None = None
    with _locked(lock_path(target)):
        if os.path.lexists(target):
            why = replaceable(target) if replaceable is not None else None
            if why is None and (target.is_symlink() or not target.is_dir()):
                why = f"{target} exists and is not a folder"
            if why is not None:
                raise OutputError(why)
            if _exchange(src, target):
                old = src  # the previous folder now sits under the temporary name
            else:
                old = target.with_name(temp_name(target.name, "old"))
                os.rename(target, old)
                try:
                    os.rename(src, target)
                except BaseException:
                    os.rename(old, target)
                    raise
        else:
            os.rename(src, target)
        _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest.parent)
    tmp = dest.with_name(temp_name(dest.name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str],
    overwrite: bool = True,
    *,
    replaceable: Callable[[Path], str | None] | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block ends without error.

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError` before any
    work (at publish time, under the lock, :class:`OutputError`). ``replaceable``: see :func:`publish_dir`.
    Stale temporary entries of the parent folder are swept first. On error the temporary
    folder is deleted and ``path`` is left as it was.
    """
    dest = Path(path)
    if not overwrite and os.path.lexists(dest):
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest.parent)
    tmp = dest.with_name(temp_name(dest.name))
    os.mkdir(tmp, 0o777)  # the umask applies: a published run is an ordinary folder
    try:
        yield tmp
        if overwrite:
            publish_dir(tmp, dest, replaceable)
        else:
            publish_dir(tmp, dest, lambda p: f"{p} already exists")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
