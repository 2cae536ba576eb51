"""The `run.py` entry: bad inputs as one-line errors (exit status 2) before anything heavy is
imported, the run folder printed at the start and the end, and an interrupted run (Ctrl-C,
SIGTERM) ending with one line that says how to resume it; what finished stays on disk.

This module imports nothing heavy: `preflight` checks the config first, and the runner (torch,
transformers, ...) is imported only once the config is known to be good.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sae_merging.runtime.outputs import RESULTS_FILE
from sae_merging.runtime.preflight import preflight
from sae_merging.utils.files import folder_problem
from sae_merging.utils.paths import storage_problem
from sae_merging.utils.settings import ConfigError, InputError

INPUT_ERROR = 2


def resume_command(run_dir: str, overrides: Sequence[str], multirun: bool, sweep_dir: str | None) -> str:
    """The command that continues this run (or sweep) where it stopped."""
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode="))]
    if multirun and sweep_dir:
        return shlex.join(["python", "run.py", "-m", *kept, f"hydra.sweep.dir={sweep_dir}"])
    return shlex.join(["python", "run.py", *kept, f"hydra.run.dir={run_dir}"])


class RunFolderCheck(Callback):
    """Hydra creates the run (or sweep) folder before the job starts: create it here first, so
    an unusable path is one line and exit status 2, not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._create(config.hydra.run.dir, "hydra.run.dir")
        _keep_hydra_files(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._create(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _create(folder: str, key: str) -> None:
        problem = folder_problem(Path(folder), key)
        if problem is None:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                problem = f"{key}={folder!r}: cannot be created ({error.strerror}); choose another folder"
        if problem:
            print(f"config error: {problem}", file=sys.stderr)
            sys.exit(INPUT_ERROR)


# `.hydra/` of a folder holding a run, as it was before Hydra wrote this launch's config there
_hydra_files: dict[Path, dict[str, bytes]] = {}


def _keep_hydra_files(folder: Path) -> None:
    if holds_a_run(folder) and (folder / ".hydra").is_dir():
        _hydra_files[folder.resolve()] = {
            p.name: p.read_bytes() for p in (folder / ".hydra").iterdir() if p.is_file()
        }


def _restore_hydra_files(folder: Path) -> None:
    """A launch refused in (or moved away from) a folder holding another run leaves that run's
    `.hydra/` as it was, not this launch's config."""
    for name, data in _hydra_files.pop(folder.resolve(), {}).items():
        (folder / ".hydra" / name).write_bytes(data)


def _refuse(lines: list[str], multirun: bool, run_dir: str | Path = "") -> None:
    """Print the lines; exit 2, or in a sweep fail this job only (the others run on)."""
    for line in lines:
        print(line, file=sys.stderr)
    if run_dir:
        _restore_hydra_files(Path(run_dir))
    if multirun:
        from sae_merging.runtime.sweep import JobFailed

        raise JobFailed(lines[0].split(": ", 1)[1] if ": " in lines[0] else lines[0])
    sys.exit(INPUT_ERROR)


def holds_a_run(folder: Path) -> bool:
    return (folder / "checkpoint").exists() or (folder / RESULTS_FILE).exists()


def new_folder_beside(folder: Path) -> Path:
    """`resume=false` in a folder holding a run: the first free `FOLDER-2`, `FOLDER-3`, ...,
    created with the composed config (`.hydra/`) of this run; the old folder is left as it was."""
    number = 2
    while True:  # mkdir decides: two launches at once get two folders
        candidate = folder.with_name(f"{folder.name}-{number}")
        try:
            candidate.mkdir(parents=True)
            break
        except FileExistsError:
            number += 1
    if (folder / ".hydra").is_dir():
        shutil.copytree(folder / ".hydra", candidate / ".hydra")
    _restore_hydra_files(folder)
    print(f"resume=false: {folder} holds another run; this one goes to {candidate}", file=sys.stderr)
    return candidate


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: cleanly, resumable


def main(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    multirun: bool = False,
    sweep_dir: str | None = None,
) -> dict | None:
    run_dir = str(run_dir)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if cfg.get("resume", True) is False and holds_a_run(Path(run_dir)):
            run_dir = str(new_folder_beside(Path(run_dir)))
        plan = preflight(cfg, run_dir, overrides)
        for line in plan.warnings:
            print(f"warning: {line}", file=sys.stderr)
        print(f"run folder: {run_dir}", flush=True)
        from sae_merging.runtime import runner

        results = runner.run(cfg, run_dir, plan)
    except ConfigError as error:
        _refuse([f"config error: {line}" for line in error.problems], multirun, run_dir)
    except (InputError, FileNotFoundError) as error:
        _refuse([f"error: {error}"], multirun, run_dir)
    except OSError as error:  # a full disk, a read-only folder: one line, the run resumable
        if (line := storage_problem(error)) is None:
            raise
        command = resume_command(run_dir, overrides, multirun, sweep_dir)
        _refuse([f"error: {line}" + ("" if multirun else f"; once fixed, resume with: {command}")], multirun)
    except KeyboardInterrupt:
        if multirun:  # the sweep prints the command that resumes every unfinished job
            print(f"\ninterrupted: finished generations are kept in {run_dir}", file=sys.stderr)
            raise
        command = resume_command(run_dir, overrides, multirun, sweep_dir)
        print(
            f"\ninterrupted: finished generations are kept in {run_dir}; resume with: {command}",
            file=sys.stderr,
        )
        sys.exit(130)
    except Exception:
        if multirun:  # a bug: its traceback here, the sweep's summary names it, the others run on
            traceback.print_exc()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in runner.summary_lines(results):
        print(line)
    print(f"run folder: {run_dir}")
    return results
