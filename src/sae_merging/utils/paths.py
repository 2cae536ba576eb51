"""Output locations that cannot harm inputs: where a merge or a run may write.

An output folder is refused when it is, contains or lies inside an input model folder or file,
compared by resolved real paths (symlinks and `..` resolved), and when it already holds a file
that is a hard link to an input's file. A folder that holds files is refused unless the caller
allows overwriting; then only the files written are replaced (`replace_files`), each atomically.
Leftovers of killed atomic writes (`.NAME.*.tmp`, `.NAME.old`) are removed by `remove_leftovers`.

Imports nothing heavy (the merge command and the run preflight use it before torch).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sae_merging.utils.files import atomic_directory

_LEFTOVER = re.compile(r"^\..+(\.[^.]+\.tmp|\.old)$")  # atomic_write_text / atomic_directory


def real(path: str | os.PathLike) -> Path:
    """The path with `~`, symlinks and `..` resolved (whether or not it exists)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _files(path: Path, limit: int = 10000) -> Iterator[Path]:
    """The regular files at or under `path` (at most `limit`: model folders hold a few dozen)."""
    if path.is_file():
        yield path
        return
    for count, found in enumerate(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
        if count >= limit:
            return
        yield found


def overlap_problems(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike], key: str) -> list[str]:
    """Lines for every input (named by its option, e.g. `--base`) that the output location
    `out` is, contains or lies inside, or whose file `out` holds as a hard link."""
    target = real(out)
    found = []
    local: dict[str, Path] = {}
    for name, path in inputs.items():  # one line per input folder, however many settings name it
        if Path(path).expanduser().exists() and real(path) not in local.values():
            local[name] = real(path)
    for name, source in local.items():
        if target == source:
            found.append(f"{key}={str(out)!r} is the input {name} ({source}): choose another folder")
        elif _inside(target, source):
            found.append(f"{key}={str(out)!r} lies inside the input {name} ({source}): choose another folder")
        elif _inside(source, target):
            found.append(f"{key}={str(out)!r} contains the input {name} ({source}): choose another folder")
    if found or not target.is_dir():
        return found
    held = {}  # the output's files with other links: usually none, and then no input is walked
    for file in _files(target):
        stat = file.stat()
        if stat.st_nlink > 1:
            held[(stat.st_dev, stat.st_ino)] = file
    for name, source in local.items() if held else ():
        for linked in _files(source):
            stat = linked.stat()
            if (file := held.get((stat.st_dev, stat.st_ino))) is not None:
                return [
                    f"{key}={str(out)!r}: {file.name} is a hard link to the input {name}'s {linked}; "
                    "writing there would change it: choose another folder"
                ]
    return found


def entries(folder: str | os.PathLike) -> list[str]:
    """The names in `folder` (none when it does not exist), leftovers of killed writes aside."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not _LEFTOVER.match(p.name))


def nonempty_problem(
    out: str | os.PathLike, key: str, overwrite: bool, flag: str = "--overwrite"
) -> str | None:
    """A line when `out` already holds files and overwriting was not asked for."""
    held = entries(out)
    if not held or overwrite:
        return None
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    return (
        f"{key}={str(out)!r} already holds files ({shown}); choose an empty or new folder, or pass "
        f"{flag} to replace only the files this writes (the others are kept)"
    )


def replace_files(written: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move every file of the folder `written` into `out`, each by one atomic rename (same file
    system), replacing a file of the same name; files of `out` not written stay."""
    written, out = Path(written), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for source in sorted(written.rglob("*")):
        if source.is_file():
            target = out / source.relative_to(written)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    shutil.rmtree(written, ignore_errors=True)


def remove_leftovers(folders: Iterable[str | os.PathLike], names: Iterable[str] | None = None) -> list[Path]:
    """Delete what killed atomic writes left in `folders` (temporary `.NAME.*.tmp` files and
    folders, `.NAME.old` folders); with `names`, only those of these names. Call it only where
    no other process writes (under the folder's lock). Returns what was removed."""
    wanted = None if names is None else {str(n) for n in names}
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not _LEFTOVER.match(path.name):
                continue
            if wanted is not None and not any(path.name.startswith(f".{n}.") for n in wanted):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def output_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder to write `out`'s files into. A new or empty `out` is then replaced by
    it in one rename (`atomic_directory`); one that holds files gets each written file by its
    own atomic rename, and keeps the files that were not written."""
    out = Path(out)
    if not entries(out):
        with atomic_directory(out) as tmp:
            yield tmp
        return
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        replace_files(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


STORAGE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


def storage_problem(error: BaseException) -> str | None:
    """One line for a write that the storage refused (full disk, quota, read-only, permissions);
    None for any other error."""
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRORS:
        return None
    where = f" writing {error.filename}" if error.filename else ""
    return f"{STORAGE_ERRORS[error.errno]}{where} (OSError {error.errno}); nothing was marked complete"
