"""File helpers: atomic writes (a crash or a kill mid-write never leaves a half-written file in place of a good
one), file hashes and strict JSON."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "FolderBusy",
    "lock_folder",
    "unlock_folder",
    "DiskFullError",
    "OutputPathError",
    "check_writable",
    "check_writable_dir",
    "atomic_path",
    "atomic_write_text",
    "disk_full",
    "finite_json",
    "remove_stale_temps",
    "sha256_file",
    "to_json",
    "work_dir",
    "work_dir_beside",
]


class DiskFullError(OSError):
    """No space left to write a file; the partial file was removed and the previous one kept."""


# No space on the device, or the user's quota is used up: both mean "free some space".
_FULL = {errno.ENOSPC, errno.EDQUOT}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _dead_owner(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``<prefix><pid>.<rest>`` of a process that no longer runs."""
    pid = name[len(prefix) :].split(".", 1)[0].split("-", 1)[0]
    return pid.isdigit() and not _pid_alive(int(pid))


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files a killed writer of ``path`` left beside it (``.<name>.<pid>.*.tmp``)."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _dead_owner(p.name, prefix):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def disk_full(e: OSError, what: str, where: str | os.PathLike[str]) -> DiskFullError:
    """The one-line error for ``e`` (ENOSPC/EDQUOT) while writing ``what`` to ``where``."""
    free = ""
    with contextlib.suppress(OSError):
        st = os.statvfs(Path(where) if Path(where).is_dir() else Path(where).parent)
        free = f", {st.f_bavail * st.f_frsize / 2**20:.0f} MiB free"
    return DiskFullError(
        e.errno,
        f"no space left writing {what} to {where}{free}: the partial file was removed and any previous file "
        "kept; free some space (or write elsewhere) and run again",
    )


class OutputPathError(ValueError):
    """An output path that cannot be written (a folder in its place, a read-only folder)."""


def check_writable(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Refuse, before any work, an output ``path`` that is a folder or lies in a folder that cannot be written.

    Raises:
        OutputPathError: the message names the path and what to pass instead.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(
            f"{what} {path} is an existing folder; give a file name (e.g. {path / 'out'}...)"
        )
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise OutputPathError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: folder {parent} is not writable; choose another output path")
    return path


def check_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Like `check_writable` for a folder that will be created (or written into) at ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file; give a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: {existing} is not a writable folder; choose another")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` keeps its previous content; a full disk raises
    `DiskFullError` saying so. Temporary files that killed writers left behind are removed first.

    Raises:
        DiskFullError: no space left while writing (ENOSPC, EDQUOT).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates owner-only files; give the result the mode a plain open() would (umask applied).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno in _FULL and not isinstance(e, DiskFullError):
            raise disk_full(e, path.name, path.parent) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def work_dir(kind: str) -> Iterator[Path]:
    """A private temporary folder ``segkd-<kind>-<pid>-*``, removed on exit; those of killed runs go first."""
    root = Path(tempfile.gettempdir())
    prefix = f"segkd-{kind}-"
    for old in root.glob(f"{prefix}*"):
        if old.is_dir() and _dead_owner(old.name, prefix):
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as tmp:
        try:
            yield Path(tmp)
        except OSError as e:
            if e.errno in _FULL and not isinstance(e, DiskFullError):
                raise disk_full(e, f"temporary {kind} files", tmp) from e
            raise


@contextlib.contextmanager
def work_dir_beside(path: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """A private folder ``.segkd-<kind>-<pid>-*`` beside ``path`` (same disk: its files are renamed into place),
    removed on exit; those of killed writers go first."""
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".segkd-{kind}-"
    for old in parent.glob(f"{prefix}*"):
        if old.is_dir() and _dead_owner(old.name, prefix):
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-", dir=parent) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def scratch_cwd(kind: str) -> Iterator[Path]:
    """Run the block with a private temporary folder as the working directory (restored on exit).

    For library calls that drop debug files into the working directory: ONNX Runtime's symbolic shape inference
    saves ``sym_shape_infer_temp.onnx`` plus an external-data file there whenever it gives up on a graph, which
    would otherwise litter the user's folder. Paths used inside the block must be absolute.
    """
    cwd = os.getcwd()
    with work_dir(kind) as tmp:
        os.chdir(tmp)
        try:
            yield tmp
        finally:
            os.chdir(cwd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finite_json(value: Any) -> Any:
    """``value`` with every NaN/inf float (an mIoU of nothing, a class absent from the data) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    """Strict JSON (NaN/inf written as null, which every JSON reader accepts; Python's default ``NaN`` is not)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


# ------------------------------------------------------------------------------------------- one writer per folder
class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock; ``holder`` names it ("process N on HOST")."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"{folder} is being written by {holder or 'another process'}")
        self.folder, self.holder = folder, holder


LOCK_NAME, OWNER_NAME = ".lock", ".lock.owner"


def lock_folder(folder: str | os.PathLike[str]) -> tuple[Any, str]:
    """Hold ``folder/.lock`` (an OS lock, dropped when the holder dies; ``filelock`` works on every OS) and name
    the holder in ``.lock.owner``. Returns (the lock, the previous holder's name when one died holding it).

    Raises:
        FolderBusy: a live process holds it.
    """
    import socket

    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(folder / LOCK_NAME, timeout=0), folder / OWNER_NAME
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusy(folder, _holder(owner)) from None
    previous = _holder(owner)
    atomic_write_text(owner, f"process {os.getpid()} on {socket.gethostname()}")
    return lock, previous


def unlock_folder(folder: str | os.PathLike[str], lock: Any) -> None:
    """Empty the holder record, then release the lock (a failure to write must not hide the caller's error)."""
    with contextlib.suppress(OSError):
        (Path(folder) / OWNER_NAME).write_text("")
    lock.release()


def _holder(owner: Path) -> str:
    try:
        return owner.read_text().strip()
    except OSError:
        return ""
