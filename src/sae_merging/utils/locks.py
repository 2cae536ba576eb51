"""One writer per folder: an exclusive lock that names its holder and dies with it.

`FolderLock(folder)` takes `folder/.lock` with `fcntl.flock`: the kernel releases it when the
holding process ends however it ends (kill -9 included), so a lock file left by a dead process
is simply taken over. The file holds the holder's PID and host, to name it in the refusal.
(flock is advisory and per open file; on network file systems that do not support it, two hosts
are not excluded.)
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from sae_merging.utils.settings import InputError

LOCK_FILE = ".lock"


class FolderLockedError(InputError):
    """Another live process writes this folder."""


class FolderLock:
    def __init__(self, folder: str | os.PathLike, what: str = "run folder") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self._handle = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderLockedError(
                f"{self.path.parent}: this {self.what} is in use by {holder}; wait for it to end, "
                "or choose another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
