"""Atomic file writes and stable hashing: an interrupted run never leaves half a file behind."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import xxhash

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_root() -> Path:
    """Where derived files are cached (a GGUF's dequantized weights, the compiled kernels):
    $SAE_MERGING_CACHE, default outputs/cache, as the lab's cache."""
    return Path(os.environ.get("SAE_MERGING_CACHE", "outputs/cache")).expanduser()


def _default_mode(directory: bool) -> int:
    """The mode a plain open/mkdir would give (temporary files start private)."""
    return (0o777 if directory else 0o666) & ~_UMASK


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _default_mode(directory=False))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` in one rename.

    A reader sees either the old folder or the complete new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_digest(path: str | os.PathLike, block: int = 1 << 24) -> str:
    """A checksum of a file's bytes (XXH3-128, hex), to notice damage or edits (not an attack):
    10x sha256's speed (6.0 vs 0.64 GB/s measured), so an individual's save pays little for it."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return digest.hexdigest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:  # no copies
            view = memoryview(mapped)
            for start in range(0, len(view), block):
                digest.update(view[start : start + block])
                # the pages read leave the process (the page cache keeps them): a mapped file
                # read whole would otherwise count whole in RSS, a child's archive file beside it
                mapped.madvise(mmap.MADV_DONTNEED, start, min(block, len(view) - start))
            view.release()
    return digest.hexdigest()


def folder_digests(folder: str | os.PathLike) -> dict[str, str]:
    """The checksum of every file directly in `folder`, by file name."""
    return {p.name: file_digest(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def stable_hash(data: Any, length: int = 12) -> str:
    """A short hash of JSON-serialisable data that does not depend on key order."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def folder_problem(folder: Path, key: str = "hydra.run.dir") -> str | None:
    """Why outputs cannot be written to `folder` (None when they can)."""
    if folder.exists() and not folder.is_dir():
        return f"{key}={str(folder)!r}: is a file, not a folder; choose another folder"
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}={str(folder)!r}: {str(existing)!r} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{key}={str(folder)!r}: {str(existing)!r} is not writable; choose another folder"
    return None
