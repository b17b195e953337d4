"""Where a command writes: checked before the work starts, and write failures said in one line.

Every command checks its output folder or file first (`check_folder_writable`,
`check_file_writable`: create the folder, write and remove a probe file), so that a read-only or
full location fails in a second, not after an hour of work. A failure while writing later on
(no space left, a quota, no permission, a read-only file system) becomes an `OutputError` whose
message names the path and the cause (`output_error`, `writing`); files already written are left
as they were (every writer of the library replaces files atomically, see captioner.files).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from captioner.errors import CaptionerError

# errno -> what the one-line message says
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}

# What torch.save's C++ writer says when a write fails part-way (it hides the errno): on a full disk
# "[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456", or "... file write failed".
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")

PROBE_PREFIX = ".captioner-write-test"


class OutputError(CaptionerError):
    """A file or folder could not be written; the message names the path and the cause."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, errno_: int | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.errno = errno_


def _free_space(path: Path) -> str:
    """'12.3 MB free' on the file system of `path` (or of its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                return "free space unknown"
            for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
                if free >= size:
                    return f"{free / size:.1f} {unit} free"
            return f"{free} bytes free"
    return "free space unknown"


def is_torch_write_failure(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES)


def path_from_traceback(tb: TracebackType | None) -> Path | None:
    """The file being written when the exception of `tb` was raised: the target of the innermost
    captioner.files.atomic_write, else the file argument of torch.save, else None."""
    found: Path | None = None
    for frame, _ in traceback.walk_tb(tb):
        code = frame.f_code
        local = frame.f_locals
        if code.co_name == "atomic_write" and code.co_filename.endswith(os.path.join("captioner", "files.py")):
            if isinstance(local.get("path"), (str, os.PathLike)):
                found = Path(local["path"])
        elif code.co_name == "save" and "torch" in code.co_filename and found is None:
            if isinstance(local.get("f"), (str, os.PathLike)):
                found = Path(local["f"])
    return found


def output_error(error: BaseException, path: str | os.PathLike | None = None) -> OutputError | None:
    """The OutputError that says `error` in one line, or None when `error` is not a write failure.

    An OSError whose errno is one of WRITE_ERRNOS, or torch.save's RuntimeError on a full disk
    (which is said as "no space left on device", with the free space measured now). `path` is used
    when the error names none (a failed write() on an open file names nothing)."""
    if isinstance(error, OutputError):
        return error
    # With two paths (shutil.copyfile, os.replace), the second is the one being written.
    named = (getattr(error, "filename2", None) or getattr(error, "filename", None)) if isinstance(error, OSError) \
        else None
    target = path_from_traceback(error.__traceback__)
    if named and not (target is not None and Path(named).name.startswith(target.name)):
        where: Path | None = Path(named)
    else:  # the file atomic_write was writing, rather than its temporary
        where = target or (Path(named) if named else Path(path) if path else None)
    shown = str(where) if where is not None else "(the output location)"
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        cause = WRITE_ERRNOS[error.errno]
        extra = f" ({_free_space(where)})" if error.errno in (errno.ENOSPC, errno.EDQUOT) and where else ""
        return OutputError(f"{cause}: {shown}{extra}", where, error.errno)
    if is_torch_write_failure(error):
        extra = f"; {_free_space(where)} there now" if where else ""
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return OutputError(f"no space left on device: {shown} (torch.save stopped part-way: {first_line!r}{extra})",
                           where, errno.ENOSPC)
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a write failure inside the block into an OutputError naming `path` (if the error names
    no file of its own)."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        converted = output_error(error, path)
        if converted is None or converted is error:
            raise
        raise converted from error


def _write_probe(folder: Path) -> None:
    probe = folder / f"{PROBE_PREFIX}-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_folder_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` (and its parents) if needed and write and remove a probe file in it;
    OutputError naming the folder and the cause otherwise. Returns the folder."""
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{what} {folder} is a file, not a folder; give a folder", folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_probe(folder)
    except OSError as error:
        cause = WRITE_ERRNOS.get(error.errno) or error.strerror or str(error)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            cause += f" ({_free_space(folder)})"
        raise OutputError(f"{what} {folder} is not writable: {cause}", folder, error.errno) from error
    return folder


def check_file_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """The folder of `path` is writable (created if needed) and `path`, if it exists, is a file that
    may be replaced; OutputError otherwise. Nothing is written to `path` itself."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name", path)
    check_folder_writable(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} is not writable: permission denied: {path}", path, errno.EACCES)
    return path


__all__ = ["OutputError", "WRITE_ERRNOS", "check_file_writable", "check_folder_writable", "is_torch_write_failure",
           "output_error", "path_from_traceback", "writing"]
