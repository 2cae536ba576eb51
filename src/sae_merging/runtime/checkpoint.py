"""The checkpoint of a run folder, and the checks before resuming it.

`checkpoint/state.json` holds, after every finished generation: the method's state, the fitness
cache, every generation's metrics record (so `metrics.jsonl` can always be rebuilt), the
results-affecting config and method of the run that wrote it, a checksum (XXH3-128) per file of every
individual the state refers to, and a checksum of all of that. The generation before is kept
as `checkpoint/previous.json` (with its individuals), so a damaged last checkpoint can fall
back one generation.

Resuming (`resume_from`) verifies the checkpoint before any model is loaded: a file that does
not parse or whose checksum fails is one line naming it (offering `resume=previous` when the
generation before verifies); a checkpoint of another config is refused naming the first
differing key (`resume=force` continues it anyway, `resume=false` starts a new folder); one of
another method is refused always.

Imports nothing heavy: the run's preflight may call it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sae_merging.utils.files import atomic_write_json, file_digest, stable_hash
from sae_merging.utils.settings import ConfigError, InputError

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
PREVIOUS_FILE = "previous.json"
DAMAGED_FILE = "state.damaged.json"
INDIVIDUALS_DIR = "individuals"
RESUME_MODES = (True, False, "force", "previous")


class CheckpointError(InputError):
    """A checkpoint file that cannot be trusted (unparsable, checksum failed, missing)."""


def _sealed(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def write(run_dir: Path, body: Mapping[str, Any], new_generation: bool = True) -> None:
    """Write the checkpoint (`body` sealed with its checksum); a new generation's moves the one
    before to previous.json first (a kill in between resumes from it)."""
    folder = run_dir / CHECKPOINT_DIR
    state = folder / STATE_FILE
    if new_generation and state.is_file():
        os.replace(state, folder / PREVIOUS_FILE)
    atomic_write_json(state, {**body, "checksum": _sealed(body)})


def read(path: Path) -> dict:
    """A verified checkpoint body; raises CheckpointError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from None
    if not isinstance(data, dict) or "state" not in data:
        raise CheckpointError(f"{path}: not a checkpoint (no 'state')")
    if "checksum" not in data:
        raise CheckpointError(
            f"{path}: written before checkpoints had checksums; resume=force resumes it unchecked"
        )
    checksum = data.pop("checksum")
    if _sealed(data) != checksum:
        raise CheckpointError(f"{path}: checksum mismatch (the file changed after it was written)")
    return data


def verify_individuals(run_dir: Path, body: Mapping[str, Any]) -> None:
    """Every file of every individual the checkpoint refers to exists with its recorded checksum."""
    root = run_dir / CHECKPOINT_DIR / INDIVIDUALS_DIR
    for ident, files in body.get("files", {}).items():
        for name, digest in files.items():
            path = root / ident / name
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: missing (the checkpoint of generation {generation(body)} needs it)"
                )
            if file_digest(path) != digest:
                raise CheckpointError(f"{path}: checksum mismatch (the file changed after it was written)")


def generation(body: Mapping[str, Any]) -> int:
    return int(body["state"]["generation"])


def first_difference(saved: Any, current: Any, key: str = "") -> str | None:
    """`key: A there, B here` for the first setting (in the saved config's order) whose value
    differs, None when none does."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        for name in [*saved, *(k for k in current if k not in saved)]:
            path = f"{key}.{name}" if key else str(name)
            if name not in current:
                return f"{path}: {json.dumps(saved[name])} there, unset here"
            if name not in saved:
                return f"{path}: unset there, {json.dumps(current[name])} here"
            if (found := first_difference(saved[name], current[name], path)) is not None:
                return found
        return None
    if saved != current:
        return f"{key}: {json.dumps(saved)} there, {json.dumps(current)} here"
    return None


def run_record(config: Mapping[str, Any]) -> dict:
    """What a checkpoint records of the run writing it: its results-affecting config, that
    config's hash and the method's class."""
    method = config.get("method", {})
    target = method.get("_target_") if isinstance(method, Mapping) else None
    return {"config_hash": stable_hash(config), "method": target, "config": config}


def resume_from(run_dir: Path, config: Mapping[str, Any], mode: Any = True) -> dict | None:
    """The verified checkpoint body a run of `config` continues (None: start afresh), after
    the checks of the module docstring; raises CheckpointError or ConfigError (one line)."""
    folder = run_dir / CHECKPOINT_DIR
    state, previous = folder / STATE_FILE, folder / PREVIOUS_FILE
    if not state.is_file() and not previous.is_file():
        return None
    if mode is False:
        raise ConfigError([f"resume=false: {folder} holds a checkpoint; choose a new folder"])
    force = mode == "force"
    candidates = [previous] if mode == "previous" or not state.is_file() else [state, previous]
    failures, body, chosen = [], None, None
    for path in (p for p in candidates if p.is_file()):
        try:
            body = read(path)
            verify_individuals(run_dir, body)
            chosen = path
            break
        except CheckpointError as error:
            if force and "before checkpoints had checksums" in str(error):
                body, chosen = json.loads(path.read_text()), path
                break
            failures.append(str(error))
    if chosen is None and not failures:
        raise CheckpointError(f"resume=previous: {previous} does not exist (no generation before is kept)")
    if chosen is None:
        raise CheckpointError(
            f"{failures[0]}; no earlier generation verifies: start afresh in a new folder "
            "(resume=false) or restore the file"
        )
    if failures and chosen == previous and mode != "previous":
        raise CheckpointError(
            f"{failures[0]}; generation {generation(body)} ({chosen.name}) verifies: "
            "resume=previous restarts from it"
        )
    record = body.get("run", {})
    current = run_record(config)
    if record.get("method") not in (None, current["method"]):
        raise CheckpointError(
            f"{chosen}: holds a checkpoint of {record['method']}, which method {current['method']} "
            "cannot continue: choose a new folder (or resume=false)"
        )
    if (difference := first_difference(record.get("config", {}), config)) is not None and not force:
        raise ConfigError(
            [
                f"{folder} was written by a run with another config ({difference}); resume=false "
                "starts this run in a new folder, resume=force continues that checkpoint with these settings"
            ]
        )
    if chosen == previous:  # the loop resumes from state.json; a damaged one is kept aside
        if state.is_file():
            os.replace(state, folder / DAMAGED_FILE)
        os.replace(previous, state)
    if difference is not None:
        body["forced_from"] = [*body.get("forced_from", []), record.get("config_hash")]
    return body
