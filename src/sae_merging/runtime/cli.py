"""The `run.py` entry: bad inputs as one-line errors (exit status 2) before anything heavy is
imported, the run folder printed at the start and the end, and an interrupted run (Ctrl-C,
SIGTERM) ending with one line that says how to resume it; what finished stays on disk.

This module imports nothing heavy: `preflight` checks the config first, and the runner (torch,
transformers, ...) is imported only once the config is known to be good.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sae_merging.runtime.preflight import preflight
from sae_merging.utils.files import folder_problem
from sae_merging.utils.settings import ConfigError, InputError

INPUT_ERROR = 2


def resume_command(run_dir: str, overrides: Sequence[str], multirun: bool, sweep_dir: str | None) -> str:
    """The command that continues this run (or sweep) where it stopped."""
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    if multirun and sweep_dir:
        return shlex.join(["python", "run.py", "-m", *kept, f"hydra.sweep.dir={sweep_dir}"])
    return shlex.join(["python", "run.py", *kept, f"hydra.run.dir={run_dir}"])


class RunFolderCheck(Callback):
    """Hydra creates the run (or sweep) folder before the job starts: create it here first, so
    an unusable path is one line and exit status 2, not Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._create(config.hydra.run.dir, "hydra.run.dir")

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
        plan = preflight(cfg, run_dir, overrides)
        for line in plan.warnings:
            print(f"warning: {line}", file=sys.stderr)
        print(f"run folder: {run_dir}", flush=True)
        from sae_merging.runtime import runner

        results = runner.run(cfg, run_dir, plan)
    except ConfigError as error:
        for line in error.problems:
            print(f"config error: {line}", file=sys.stderr)
        sys.exit(INPUT_ERROR)
    except (InputError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(INPUT_ERROR)
    except KeyboardInterrupt:
        command = resume_command(run_dir, overrides, multirun, sweep_dir)
        print(
            f"\ninterrupted: finished generations are kept in {run_dir}; resume with: {command}",
            file=sys.stderr,
        )
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in runner.summary_lines(results):
        print(line)
    print(f"run folder: {run_dir}")
    return results
