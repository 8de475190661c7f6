"""Atomic file and directory writes that respect the user's umask.

A reader (or a crash) sees the old file or the new one, never a partial one: content goes to a temporary
name in the same directory, is flushed to disk, then renamed over the target. ``mkstemp`` creates files
0600; we set the mode the user's umask would have given, as ``open()`` does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask_mode(base: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _umask_mode(0o666))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result != 0:
        error = ctypes.get_errno()
        if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            return False
        raise OSError(error, os.strerror(error), str(a))
    return True


def atomic_write_directory(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> None:
    """Create directory ``path`` atomically: ``fill`` writes into a staging directory that then replaces it.

    A new ``path`` appears by one rename. An existing one is swapped with the staging directory by one
    ``renameat2(RENAME_EXCHANGE)`` call and the old content deleted afterwards, so a reader or a crash sees
    the complete old directory or the complete new one, never a mix. (Where the kernel lacks the exchange,
    two renames are used and a crash between them leaves the old directory beside the target as ``.old``.)
    A replaced directory keeps its permissions (root may replace a read-only one; it stays read-only).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, _umask_mode(0o777))
        fill(staging)
        if target.is_dir():
            os.chmod(staging, stat.S_IMODE(os.stat(target).st_mode))
        if not target.exists():
            os.rename(staging, target)
        elif _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old content
        else:
            retired = target.with_name(f".{target.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
