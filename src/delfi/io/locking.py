"""Inter-process locks for the journaled stores: `fcntl.flock` on small lock files that delfi makes.

A `FileLock` is an advisory lock on one lock file, shared or exclusive. The lock file is created on
first use, holding `MARKER` (so delfi recognises it as its own), and is only ever removed by
``release(remove=True)`` from a process that holds it exclusively, and only while it still holds the
marker: a file of that name that delfi did not make is never deleted. A process that locked a file
which another process removed meanwhile notices (the path no longer names the inode it locked) and
locks the new file instead, so removing a lock file never lets two holders in.

``flock`` locks belong to an open file, not to a process: two `FileLock` objects on the same path
in one process exclude each other like two processes do, and the kernel drops a killed process's
locks. Off posix (no ``fcntl``) locks are no-ops and never block (one writer at a time there).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not posix
    fcntl = None  # type: ignore[assignment]

MARKER = b"delfi lock file: removed by the last delfi process that writes the store beside it\n"


class FileLock:
    """An advisory lock on ``path`` (created if missing), taken shared or exclusive.

    Args:
        path: the lock file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._exclusive = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self, *, exclusive: bool, wait: bool = True) -> bool:
        """Take the lock; with ``wait=False`` return False at once when it is held elsewhere."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        if fcntl is None:  # pragma: no cover - not posix
            self._fd, self._exclusive = -1, exclusive
            return True
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if self._names(fd):
                self._fd, self._exclusive = fd, exclusive
                return True
            os.close(fd)  # we locked a file that was removed meanwhile: lock the current one

    def downgrade(self) -> None:
        """Turn a held exclusive lock into a shared one (others may take it shared meanwhile)."""
        if self._fd is None or not self._exclusive:
            raise RuntimeError(f"lock {self.path} is not held exclusively")
        if fcntl is not None and self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
        self._exclusive = False

    def release(self, *, remove: bool = False) -> None:
        """Release the lock (no-op if not held); with ``remove``, held exclusively, delete the lock
        file first when it is one delfi made (it holds `MARKER`)."""
        fd, self._fd = self._fd, None
        if fd is None or fd < 0:
            return
        try:
            if remove and self._exclusive and os.pread(fd, len(MARKER) + 1, 0) == MARKER and self._names(fd):
                os.unlink(self.path)
        except OSError:
            pass  # tidying up is best effort: a lock file left behind is harmless
        finally:
            os.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire(exclusive=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> int:
        """An fd of the lock file, creating it (with the marker) if missing."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDONLY)
                except FileNotFoundError:  # removed since: create it again
                    continue
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise IsADirectoryError(f"lock file {self.path} exists and is not a regular file") from None
                return fd
            try:
                os.write(fd, MARKER)
            except BaseException:
                os.close(fd)
                raise
            return fd

    def _names(self, fd: int) -> bool:
        """Whether ``self.path`` still names the file open as ``fd``."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        fst = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs (so a temp file named after it is left from a killed run).

    This process is never gone; off posix nothing is known to be gone (temps are kept).
    """
    if pid == os.getpid() or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except (ProcessLookupError, OverflowError):  # gone, or not a possible pid
        return True
    except PermissionError:  # it exists, run by another user
        return False
    return False
