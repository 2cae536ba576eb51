"""Sweeps that survive one bad job (`python run.py -m ...`, `hydra.sweeper` in conf/config.yaml).

Hydra's basic sweeper, with three changes:
- every job's settings are checked (`preflight`) before the first job starts: a config error in
  any job stops the sweep before anything runs, one line per problem naming the job;
- a job that fails (a bad file, a full disk, a bug) is reported and the other jobs run on
  (`runtime.cli` raises `JobFailed` in a sweep instead of exiting the process);
- the sweep ends with one line per job (finished / failed: its reason / interrupted) and exit
  status 1 if any failed; after Ctrl-C, with the command that re-runs the sweep, which resumes
  each unfinished job in its own folder (job N always runs in the same folder, and a job finds
  its checkpoint there, checked against its config).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict

from sae_merging.runtime.outputs import RESULTS_FILE
from sae_merging.utils.settings import ConfigError

INPUT_ERROR, FAILED, INTERRUPTED = 2, 1, 130


class JobFailed(Exception):
    """A sweep job ended with a one-line reason (already printed by the job)."""


class SweepFailed(SystemExit):
    """The sweep ran, and some jobs failed: exit status 1 (run.py passes it on as is)."""


class CheckedSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size, params)

    def sweep(self, arguments: list[str]) -> Any:
        params = self._parse_config() + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params), self.max_batch_size)
        jobs = [list(job) for batch in self.overrides for job in batch]
        self.check_jobs(jobs)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[Sequence[JobReturn]] = []
        done: list[JobReturn | None] = []
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                results = self.launcher.launch(batch, initial_job_idx=len(done))
                done += list(results)
                returns.append(results)
        except (KeyboardInterrupt, SystemExit) as stop:
            if isinstance(stop, SystemExit) and stop.code not in (INTERRUPTED, None):
                raise
            self.report(jobs, done, sweep_dir, arguments, interrupted=True)
            sys.exit(INTERRUPTED)
        self.report(jobs, done, sweep_dir, arguments, interrupted=False)
        return returns

    def check_jobs(self, jobs: list[list[str]]) -> None:
        """Every job's config through the preflight (settings, files), before any job runs."""
        from sae_merging.runtime.preflight import preflight

        started = time.perf_counter()
        problems = []
        self.job_dirs: list[Path | None] = []
        for number, overrides in enumerate(jobs):
            self.job_dirs.append(None)
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
                with open_dict(cfg):
                    cfg.hydra.job.num = number
                HydraConfig.instance().set_config(cfg)
                self.job_dirs[-1] = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
                with open_dict(cfg):
                    del cfg["hydra"]
                preflight(cfg, self.job_dirs[-1], overrides)  # its run folder too
            except ConfigError as error:
                problems += [f"job {number} ({' '.join(overrides)}): {line}" for line in error.problems]
            except Exception as error:  # a config Hydra cannot compose
                problems.append(f"job {number} ({' '.join(overrides)}): {str(error).splitlines()[0]}")
        HydraConfig.instance().set_config(self.config)
        if problems:
            for line in problems:
                print(f"config error: {line}", file=sys.stderr)
            print(f"sweep not started: {len(problems)} problem(s) in {len(jobs)} jobs", file=sys.stderr)
            sys.exit(INPUT_ERROR)
        if len(jobs) > 1:
            seconds = time.perf_counter() - started
            print(f"checked the settings of {len(jobs)} jobs in {seconds:.1f} s", flush=True)

    def report(
        self,
        jobs: list[list[str]],
        done: list[JobReturn | None],
        sweep_dir: Path,
        arguments: list[str],
        interrupted: bool,
    ) -> None:
        """One line per job, the resume command after an interruption; exit 1 if a job failed."""
        lines, failed = [], 0
        for number, overrides in enumerate(jobs):
            result = done[number] if number < len(done) else None
            folder = self.job_dirs[number] if number < len(self.job_dirs) else None
            if (result is not None and result.status == JobStatus.COMPLETED) or (
                result is None and folder is not None and (folder / RESULTS_FILE).is_file()
            ):  # a parallel batch cut short returns no results: its finished jobs left theirs
                state = "finished"
            elif result is not None and result.status == JobStatus.FAILED:
                failed += 1
                reason = result._return_value
                state = f"failed: {reason}" if isinstance(reason, JobFailed) else f"failed: {reason!r}"
            else:
                state = "interrupted" if interrupted else "not run"
            lines.append(f"  job {number} ({' '.join(overrides) or 'no overrides'}): {state}")
        print(f"sweep {sweep_dir}: {len(jobs)} jobs", file=sys.stderr)
        for line in lines:
            print(line, file=sys.stderr)
        if interrupted:
            from sae_merging.runtime.cli import resume_command

            given = [*OmegaConf.select(self.config, "hydra.overrides.hydra", default=[]), *arguments]
            command = resume_command("", given, True, str(sweep_dir))
            print(f"interrupted: resume every unfinished job with: {command}", file=sys.stderr)
        elif failed:
            raise SweepFailed(FAILED)
