"""Every file FDFO writes goes through here: atomic writes, checks before a run, plain-language errors.

Why one module: a full disk, a read-only mount, a folder without permission, a path that is a
file, or a folder deleted (or unmounted) during a run must give one clear message, never a chain
of library tracebacks, and must never leave a half-written file behind. Writers:

    atomic_write(path, write, what)  write(f) fills a binary file object; the data lands in a
                                     temporary file in the same folder, is fsynced and renamed over
                                     `path`, so readers see the old file or the new one, nothing in
                                     between. Used for checkpoints, LoRA files, PNGs, JSON records.
    write_bytes / write_text / write_json   the same for ready data.
    append_line(path, line, what)    one line added to a log (metrics.jsonl; later picks.jsonl):
                                     written with one call and fsynced; if the write fails the file
                                     is cut back to its previous length, so a log never ends in a
                                     partial line.
    copy_file(src, dst, what)        atomic copy (publishing a LoRA into ComfyUI's loras folder).
    ensure_dir(path, what, parents)  create a folder (parents only when asked: see below).
    check_writable(folder, what)     create the folder, write and remove a probe file; returns the
                                     free bytes. Front ends call it before any model work.
    space_warning(...)               a message when the expected writes will not fit.

Failures raise `StorageError` (what could not be written, why in plain words, what to do). The
OS error behind it is found even when a library wraps it (torch.save raises RuntimeError with
the OSError as context; safetensors reports "os error 28").

Folders are never created behind the caller's back: a write needs its folder to exist, unless
it asks for it (`make_folder`: a run's own checkpoints/ or samples/; `parents`: an output folder
the user named). A run folder that vanished during a run was deleted or unmounted; re-creating
it could fill the disk under the mount point, so the write fails and says so.

Reusing this module for a new file (a writer added by a later feature): call `append_line` for a
log or `atomic_write` / `write_json` for a whole file, with `what` naming the file in the user's
words ("picks log"); catch nothing: the trainer turns a StorageError into the run-level message
(last checkpoint, where the LoRA went, how to resume).

Tests simulate faults without root through `fault_hook` (called before every operation).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from . import faults

#: Suffix of the temporary files of atomic writes (so stale ones, left by a killed process, can be
#: recognised and removed without touching anything else).
TEMP_SUFFIX = ".fdfo-tmp"

#: Test seam: fault_hook(operation, path) is called before each operation, with operation one of
#: "mkdir", "create", "write", "sync", "rename", "append", "probe". Raise an OSError from it to
#: simulate a full, read-only or vanished target (tests run as root, where chmod stops nothing).
fault_hook: Callable[[str, Path], None] | None = None


class StorageError(RuntimeError):
    """A file or folder could not be written. The message says which, why, and what to do.

    Attributes: path (what could not be written), reason (plain words), errno (or None).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, reason: str = "",
                 errno_: int | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.reason = reason
        self.errno = errno_


def _hook(operation: str, path: Path) -> None:
    if fault_hook is not None:
        fault_hook(operation, path)


# --- sizes and free space ------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _existing_ancestor(path: Path) -> Path | None:
    p = Path(os.path.abspath(path))
    while not p.exists():
        if p.parent == p:
            return None
        p = p.parent
    return p if p.is_dir() else p.parent


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing folder); None if unknown."""
    folder = _existing_ancestor(Path(path))
    if folder is None:
        return None
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


# --- error translation ---------------------------------------------------------------------------

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
_TEXT_ERRNO = (
    ("No space left", errno.ENOSPC), ("Read-only file system", errno.EROFS), ("Permission denied", errno.EACCES),
    ("Disk quota exceeded", errno.EDQUOT),
)


def find_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, its cause or context chain), or one parsed from a
    library's message ("... (os error 28)")."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
    text = str(exc)
    m = _OS_ERROR_IN_TEXT.search(text)
    if m:
        code = int(m.group(1) or m.group(2))
        return OSError(code, os.strerror(code))
    for needle, code in _TEXT_ERRNO:
        if needle in text:
            return OSError(code, os.strerror(code))
    return None


def explain(err: OSError, path: Path) -> tuple[str, str]:
    """(why, what to do) in plain words for an OSError met while writing `path`."""
    code = err.errno
    folder = _existing_ancestor(path.parent) or path.parent
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = free_bytes(folder)
        left = f"; {human_bytes(free)} free in {folder}" if free is not None else ""
        why = "the disk quota is used up" if code == errno.EDQUOT else "no space left on the device"
        return f"{why}{left}", "free some space (or choose a folder on another disk)"
    if code == errno.EROFS:
        return "the file system is read-only", "choose a folder on a writable disk"
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied (this user may not write in {folder})",
                "fix the folder's permissions or choose another folder")
    if code in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None or code == errno.ENOTDIR:
            where = f"{blocker} is a file" if blocker is not None else "a part of the path is a file"
            return f"{where}, not a folder", "move that file away or choose another folder"
    if code == errno.EISDIR:
        return f"{path} is a folder, not a file", "move that folder away or choose another name"
    if code == errno.ENOENT:
        missing = next((p for p in reversed([path.parent, *path.parent.parents]) if not p.exists()), path.parent)
        return (f"the folder {missing} does not exist (deleted or unmounted during the run?)",
                "restore or re-mount it, or choose another folder")
    if code == errno.ENAMETOOLONG:
        return "the file name is too long for this file system", "choose a shorter name or folder"
    if code == errno.EIO:
        return "input/output error (a failing disk or a lost network mount)", "check the disk or mount"
    return err.strerror or str(err), "check the folder and try again"


def storage_error(exc: BaseException, path: str | os.PathLike, what: str, verb: str = "write") -> StorageError | None:
    """A StorageError for `exc` met while writing `what` at `path`, or None when `exc` is no
    storage failure (a bug in the data being written must surface as itself)."""
    if isinstance(exc, StorageError):
        return exc
    path = Path(path)
    err = find_os_error(exc)
    if err is None:
        err = _diagnose(path)
    if err is None:
        return None
    why, todo = explain(err, path)
    return StorageError(f"could not {verb} the {what} {path}: {why}. To fix: {todo}.", path=path, reason=why,
                        errno_=err.errno)


def _diagnose(path: Path) -> OSError | None:
    """Find why a write failed when the library gave no OS error: probe the folder."""
    folder = path.parent
    if not folder.exists():
        return OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    if not folder.is_dir():
        return OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    free = free_bytes(folder)
    if free is not None and free < 64 * 1024:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    try:
        probe = tempfile.TemporaryFile(dir=folder)
        probe.close()
    except OSError as e:
        return e
    return None


# --- folders ---------------------------------------------------------------------------------------


def ensure_dir(path: str | os.PathLike, what: str = "folder", parents: bool = False) -> Path:
    """Create `path` if missing. Without `parents`, its parent must exist (see the module note)."""
    path = Path(path)
    if path.is_dir():
        return path
    todo = [p for p in reversed([path, *path.parents]) if not p.is_dir()] if parents else [path]
    for p in todo:
        try:
            _hook("mkdir", p)
            p.mkdir(exist_ok=True)
        except OSError as e:
            raise storage_error(e, p, what, verb="create") from None
    return path


def check_writable(folder: str | os.PathLike, what: str = "folder", parents: bool = True) -> int | None:
    """Create `folder` (with parents) and write and remove a probe file in it; the free bytes there.

    Raises StorageError when the folder cannot be created or written (read-only, no permission,
    a file in the way, a full disk).
    """
    folder = ensure_dir(folder, what, parents=parents)
    try:
        _hook("probe", folder)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fdfo-probe.", suffix=TEMP_SUFFIX) as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise storage_error(e, folder / ".fdfo-probe", what) from None
    return free_bytes(folder)


def space_warning(folder: str | os.PathLike, need: int, items: str) -> str | None:
    """A warning when `folder`'s file system has less than `need` bytes free, else None.
    `items` says what the bytes are for ("6 checkpoints of 30 MB, the LoRA ...")."""
    free = free_bytes(folder)
    if free is None or free >= need:
        return None
    return (f"warning: {folder} has {human_bytes(free)} free, but this run will write about {human_bytes(need)} "
            f"({items}); the disk will fill before the run ends. Free some space, write checkpoints less often, "
            "or choose a folder on another disk. (If a write fails, training stops with the last checkpoint kept.)")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed process left in `folder` and its sub-folders
    (only ours: names ending in TEMP_SUFFIX)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f"*{TEMP_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# --- writers ---------------------------------------------------------------------------------------


class _GuardedFile(io.RawIOBase):
    """The temp file as writers see it: every write passes the fault hook. No fileno(), so
    libraries (PIL) write through write() instead of around it."""

    def __init__(self, f: BinaryIO, path: Path):
        super().__init__()
        self._f, self._path = f, path

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        _hook("write", self._path)
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def seekable(self) -> bool:
        return True


def _prepare_folder(path: Path, what: str, parents: bool, make_folder: bool) -> None:
    folder = path.parent
    if folder.is_dir():
        return
    if parents or (make_folder and folder.parent.is_dir()):
        ensure_dir(folder, what=f"folder of the {what}", parents=parents)
        return
    raise storage_error(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)), path, what)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], what: str = "file",
                 parents: bool = False, make_folder: bool = False) -> Path:
    """Write `path` atomically: write(f) fills a binary file object; then fsync and rename.

    The folder of `path` must exist, except: `make_folder` creates it when its own parent exists
    (a run's checkpoints/ or samples/), `parents` creates every missing folder. On any failure the
    temporary file is removed and `path` is untouched; OS failures raise StorageError (other
    exceptions propagate as they are).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        _prepare_folder(path, what, parents, make_folder)
        _hook("create", path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(_GuardedFile(f, path))
            f.flush()
            faults.kill_point("write", path.name)  # crash tests: killed with the temp file half done
            _hook("sync", path)
            os.fsync(f.fileno())
        _hook("rename", path)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except Exception as e:
        err = storage_error(e, path, what)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "file", parents: bool = False,
                make_folder: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(data), what, parents, make_folder)


def write_text(path: str | os.PathLike, text: str, what: str = "file", parents: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), what, parents)


def write_json(path: str | os.PathLike, obj: Any, what: str = "file", indent: int | None = 2,
               parents: bool = False) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n", what, parents)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, what: str = "file") -> Path:
    """Copy `src` to `dst` atomically (a reader never sees a partial copy)."""
    src = Path(src)
    try:
        source = open(src, "rb")
    except OSError as e:  # the source is the problem, not the target
        raise StorageError(f"could not copy {src} to {dst}: {e.strerror or e}", path=src, reason=str(e.strerror),
                           errno_=e.errno) from None
    with source:
        return atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20), what)


def append_line(path: str | os.PathLike, line: str, what: str = "log") -> Path:
    """Append one line (a newline is added) to `path`, creating it if needed.

    One write call, then fsync. If it fails, the file is cut back to its previous length so it
    never ends in a partial line, and StorageError says why.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        _prepare_folder(path, what, parents=False, make_folder=False)
        _hook("append", path)
        with open(path, "ab", buffering=0) as f:  # unbuffered: a failed write can be undone
            size = f.seek(0, os.SEEK_END)
            try:
                _hook("write", path)
                if f.write(data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(f.fileno())
            except BaseException:
                try:
                    f.truncate(size)
                except OSError:
                    pass
                raise
    except Exception as e:
        err = storage_error(e, path, what)
        if err is None:
            raise
        raise err from None
    return path
