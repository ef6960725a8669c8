"""Atomic writes: outputs appear complete or not at all (write to a temp path, then rename).

Temp paths are hidden siblings named ``.{name}.tmp-{pid}-*`` (and ``.{name}.old-{pid}`` for the
entry being replaced), so :func:`clean_leftovers` can tell a killed writer's debris (its process is
gone) from a live one's, and remove it on the next start of the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-.*)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_dir(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path``, on error it is removed.

    A process killed inside the block leaves only a hidden ``.{name}.tmp-*`` directory, never a
    half-written ``path``; an existing ``path`` is swapped out in one atomic step where the file
    system allows it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if not path.exists():
            try:
                os.replace(tmp, path)
                return
            except OSError as error:  # another writer published ``path`` just now
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        if not overwrite:  # published by another writer since the start
            raise FileExistsError(path)
        if _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old entry
            return
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(directory: Path) -> list[Path]:
    """Remove the temp entries of killed writers in ``directory``; return what was removed.

    An ``.{name}.old-{pid}`` whose ``name`` is missing (killed between the two renames of a
    replacement) is renamed back instead of removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        original = directory / match["name"]
        with contextlib.suppress(FileNotFoundError):  # another process may clean the same entry
            if match["kind"] == "old" and not original.exists():
                os.replace(entry, original)
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def check_writable(path: Path, what: str) -> None:
    """Refuse ``path`` (a file or directory to be written) when its location cannot be written.

    Probes the nearest existing ancestor with a real temp file (permission bits alone say nothing
    for root, read-only mounts or immutable directories).
    """
    path = Path(path)
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what} {path} lies under {parent}, which is a file, not a directory",
                         hint=f"choose a {what} whose parent directories are directories")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".spectra-probe-{os.getpid()}-", dir=parent)
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be written: {parent} is not writable ({exc.strerror})",
                         hint=f"choose a writable {what}, or fix the permissions of {parent}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: Path, what: str) -> None:
    """Refuse a file output that is an existing directory or lies in an unwritable location."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; a file path is expected",
                         hint=f"give {what} the path of a file (a new one, or one to replace)")
    check_writable(path, what)
