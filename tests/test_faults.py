"""Faults and misuse lose nothing: inputs are never written, resume checks what it resumes, one
writer per run folder, sweeps survive one bad job, storage errors are one line (issue 25)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sae_merging.runtime import merge_command as merge_checkpoints
from sae_merging.utils import paths

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its relative path -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def models(micro_lab, tmp_path) -> dict[str, Path]:
    """Copies of the micro lab's base and experts (tests may try to write over them)."""
    root = tmp_path / "M"
    found = {"base": Path(micro_lab.base), **{k: Path(v) for k, v in micro_lab.experts.items()}}
    return {name: Path(shutil.copytree(path, root / name)) for name, path in found.items()}


def _merge(models: dict[str, Path], out, overwrite: bool = False) -> Path:
    experts = [str(p) for name, p in models.items() if name != "base"]
    return merge_checkpoints.merge_checkpoints(str(models["base"]), experts, out, 0.5, overwrite=overwrite)


def _main(monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["merge_checkpoints.py", *arguments])
    with pytest.raises(SystemExit) as done:
        merge_checkpoints.main()
    return done.value.code, capsys.readouterr().err


# --- 1. inputs are sacred ---------------------------------------------------------------------


def _out_cases(models: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    base, expert = models["base"], next(p for n, p in models.items() if n != "base")
    (tmp_path / "link").symlink_to(base)
    hard = tmp_path / "hard"
    hard.mkdir()
    os.link(base / "model.safetensors", hard / "model.safetensors")
    return {
        "the base": base,
        "an expert": expert,
        "a path with ..": expert / ".." / base.name,
        "a symlink to the base": tmp_path / "link",
        "inside the base": base / "sub",
        "a folder holding the models": base.parent,
        "a hard link to the base's weights": hard,
    }


@pytest.mark.parametrize(
    "case",
    [
        "the base",
        "an expert",
        "a path with ..",
        "a symlink to the base",
        "inside the base",
        "a folder holding the models",
        "a hard link to the base's weights",
    ],
)
def test_merge_refuses_an_output_over_its_inputs(case, models, tmp_path, monkeypatch, capsys):
    out = _out_cases(models, tmp_path)[case]
    before = {name: _digest(path) for name, path in models.items()}
    experts = [str(p) for n, p in models.items() if n != "base"]
    code, err = _main(
        monkeypatch, capsys, "--base", str(models["base"]), "--experts", *experts, "--scale", "0.5",
        "--out", str(out), "--overwrite",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "input" in err and "--out" in err, err
    assert {name: _digest(path) for name, path in models.items()} == before


def test_merge_refuses_a_folder_holding_files_unless_overwrite(models, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(ValueError, match=r"already holds files \(notes.txt\).*--overwrite"):
        _merge(models, out)
    assert _digest(out) == {"notes.txt": hashlib.sha256(b"a user's file").hexdigest()}
    fresh = _merge(models, tmp_path / "fresh")
    _merge(models, out, overwrite=True)
    # the merge's files replaced, the user's file kept
    assert (out / "notes.txt").read_text() == "a user's file"
    assert {k: v for k, v in _digest(out).items() if k != "notes.txt"} == _digest(fresh)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_merge_on_a_full_disk_is_one_line_and_writes_nothing(models, tmp_path, monkeypatch, capsys):
    from sae_merging.merging import streaming

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.safetensors"))

    monkeypatch.setattr(streaming, "stream_task_arithmetic", full)
    experts = [str(p) for n, p in models.items() if n != "base"]
    code, err = _main(
        monkeypatch,
        capsys,
        "--base",
        str(models["base"]),
        "--experts",
        *experts,
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and err.count("\n") == 1 and "no space left" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M"]  # no output, no temporary folder


def test_leftovers_of_a_killed_merge_are_removed(models, tmp_path):
    killed = tmp_path / ".merged.abc123.tmp"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".other.abc123.tmp"
    other.mkdir()
    _merge(models, tmp_path / "merged")
    assert not killed.exists() and other.exists()  # another output's leftovers are not its business


def test_an_output_folder_around_an_input_file_is_refused(tmp_path):
    weights = tmp_path / "a" / "b.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"w")
    assert "contains the input --x" in paths.overlap_problems(tmp_path / "a", {"--x": weights}, "--out")[0]
    assert "is the input --x" in paths.overlap_problems(weights, {"--x": weights}, "--out")[0]
    assert paths.overlap_problems(tmp_path / "c", {"--x": weights}, "--out") == []


@pytest.mark.parametrize(
    "where", ["inside the base", "the lab cache's parent", "a folder of one's own files"]
)
def test_run_refuses_a_run_folder_over_its_inputs(where, models, micro_lab_config, tmp_path, capsys):
    experts = [str(p) for n, p in models.items() if n != "base"]
    own = ["model=hf", f"model.base={models['base']}", f"model.experts=[{','.join(experts)}]", "task=lab"]
    overrides, run_dir, expected = {
        "inside the base": (own, models["base"] / "run", "lies inside the input model.base"),
        "the lab cache's parent": (
            [],
            Path(micro_lab_config["cache_dir"]).parent,
            "contains the input model.lab",
        ),
        "a folder of one's own files": (
            [],
            tmp_path / "mine",
            "holds files that are not a run's (notes.txt)",
        ),
    }[where]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    before = {name: _digest(path) for name, path in models.items()}
    code, err, _ = _cli(overrides, run_dir, capsys)
    assert code == 2 and "Traceback" not in err and expected in err, err
    assert {name: _digest(path) for name, path in models.items()} == before
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


# --- 2. resume checks what it resumes ---------------------------------------------------------

SMOKE = ["experiment=smoke", "progress=false", "schedule.steps=3"]
COMPARED = ("test", "opt", "sparsity", "zero_fraction", "fitness_evaluations", "examples_scored", "chosen")


def _same(a: dict, b: dict) -> None:
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


def _cli(
    overrides: list[str], run_dir: Path, capsys, first: list[str] = SMOKE
) -> tuple[int | None, str, dict | None]:
    """`python run.py FIRST OVERRIDES hydra.run.dir=RUN_DIR` in process: (exit status, stderr,
    results)."""
    from conftest import compose_config

    from sae_merging.runtime import cli

    capsys.readouterr()
    try:
        results = cli.main(compose_config(first + overrides), run_dir, overrides=overrides)
        code = 0
    except SystemExit as done:
        results, code = None, done.code
    return code, capsys.readouterr().err, results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, micro_lab) -> dict:
    from conftest import compose_config

    from sae_merging.runtime import runner

    return runner.run(compose_config(SMOKE), tmp_path_factory.mktemp("whole") / "run")


@pytest.fixture
def interrupted(tmp_path, micro_lab, monkeypatch) -> Path:
    """A run folder whose run was interrupted during generation 3 (generations 0-2 checkpointed)."""
    from conftest import compose_config

    from sae_merging.methods.sae import SAE
    from sae_merging.runtime import runner

    original = SAE.ask

    def stop_at_generation_3(self, ctx, state, generation):
        if generation == 3:
            raise KeyboardInterrupt
        return original(self, ctx, state, generation)

    with monkeypatch.context() as patch:
        patch.setattr(SAE, "ask", stop_at_generation_3)
        with pytest.raises(KeyboardInterrupt):
            runner.run(compose_config(SMOKE), tmp_path / "run")
    return tmp_path / "run"


def _one_line(code, err: str) -> str:
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, (code, err)
    return err


def test_resuming_with_another_config_is_refused(interrupted, uninterrupted, capsys):
    before = _digest(interrupted / "checkpoint")
    err = _one_line(*_cli(["seed=1"], interrupted, capsys)[:2])
    assert "seed: 0 there, 1 here" in err and "resume=false" in err and "resume=force" in err
    err = _one_line(*_cli(["method.archive_size=5"], interrupted, capsys)[:2])
    assert "method.archive_size: " in err
    assert _digest(interrupted / "checkpoint") == before
    # resume=false: the run goes to a new folder beside it, the interrupted one stays as it was
    code, err, results = _cli(["seed=1", "resume=false"], interrupted, capsys)
    assert code == 0 and results["seed"] == 1
    assert (interrupted.parent / "run-2" / "results.json").is_file()
    assert _digest(interrupted / "checkpoint") == before
    # the same config resumes, and equals the uninterrupted run
    code, err, resumed = _cli([], interrupted, capsys)
    assert code == 0
    _same(uninterrupted, resumed)
    assert "resumed_from_other_configs" not in resumed


@pytest.mark.slow
def test_resume_force_continues_and_says_so(interrupted, capsys):
    code, err, results = _cli(["resume=force", "method.archive_size=5"], interrupted, capsys)
    assert code == 0
    saved = json.loads((interrupted / "checkpoint" / "state.json").read_text())
    assert results["resumed_from_other_configs"] == [saved["forced_from"][0]] != [results["config_hash"]]


@pytest.mark.slow
def test_another_method_on_the_checkpoint_is_one_line(interrupted, capsys):
    for overrides in (["method=pso"], ["method=pso", "resume=force"]):
        err = _one_line(*_cli(overrides, interrupted, capsys)[:2])
        assert "KeyError" not in err and "SAE" in err and "PSO" in err, err


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last values
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_named_and_the_generation_before_resumes(interrupted, uninterrupted, capsys):
    state = interrupted / "checkpoint" / "state.json"
    state.write_text(state.read_text()[:-20])
    err = _one_line(*_cli([], interrupted, capsys)[:2])
    assert str(state) in err and "generation 1 (previous.json) verifies" in err and "resume=previous" in err
    code, err, resumed = _cli(["resume=previous"], interrupted, capsys)
    assert code == 0
    _same(uninterrupted, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["tensors", "meta", "elapsed", "state-value"])
def test_every_checkpoint_file_is_verified(damaged, interrupted, capsys):
    checkpoint = interrupted / "checkpoint"
    saved = json.loads((checkpoint / "state.json").read_text())
    newest = max(saved["files"])  # an individual the last generation made
    path = {
        "tensors": checkpoint / "individuals" / newest / "tensors.safetensors",
        "meta": checkpoint / "individuals" / newest / "meta.json",
        "elapsed": checkpoint / "elapsed.json",
        "state-value": checkpoint / "state.json",
    }[damaged]
    if damaged == "state-value":  # parses, but a number changed
        path.write_text(path.read_text().replace('"generation": 2', '"generation": 7', 1))
    elif damaged == "elapsed":
        path.write_text("{")
    else:
        _damage(path)
    err = _one_line(*_cli([], interrupted, capsys)[:2])
    assert str(path) in err, err


@pytest.mark.slow
def test_a_damaged_results_file_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text('{"method": "sae", "te')
    err = _one_line(*_cli([], tmp_path / "run", capsys)[:2])
    assert str(tmp_path / "run" / "results.json") in err and "cannot be read" in err


@pytest.mark.parametrize("how", ["deleted", "last line cut"])
def test_metrics_are_rebuilt_from_the_checkpoint(how, interrupted, uninterrupted, capsys):
    metrics = interrupted / "metrics.jsonl"
    written = metrics.read_text().splitlines()
    if how == "deleted":
        metrics.unlink()
    else:
        metrics.write_text("\n".join(written)[:-15])
    code, _, resumed = _cli([], interrupted, capsys)
    assert code == 0
    _same(uninterrupted, resumed)
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [0, 1, 2, 3]
    assert lines[:3] == written[:3]


# --- 3. one writer per run folder -------------------------------------------------------------

_HOLD = (
    "import sys, time; from sae_merging.utils.locks import FolderLock; "
    "lock = FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
)


def test_a_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    from sae_merging.utils.locks import FolderLock, FolderLockedError

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"in use by PID {holder.pid} "):
            FolderLock(tmp_path).acquire()
        code, err, _ = _cli([], tmp_path, capsys)
        assert f"PID {holder.pid}" in _one_line(code, err)
    finally:
        holder.kill()  # kill -9: its lock file stays
        holder.wait()
    assert (tmp_path / ".lock").is_file()
    with FolderLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(f"PID {os.getpid()} ")


# --- 5. one line, exit 2, for what the machine refuses ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "results"])
def test_a_full_disk_is_one_line_and_the_run_resumes_equal(
    where, tmp_path, uninterrupted, capsys, monkeypatch
):
    from sae_merging.runtime import checkpoint, runner

    original = {"checkpoint": checkpoint.atomic_write_json, "results": runner.atomic_write_json}[where]
    calls = []

    def full(path, data):
        calls.append(path)
        if len(calls) == 3 or Path(path).name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    monkeypatch.setattr({"checkpoint": checkpoint, "results": runner}[where], "atomic_write_json", full)
    err = _one_line(*_cli([], tmp_path / "run", capsys)[:2])
    assert "no space left" in err and "resume with:" in err and "hydra.run.dir=" in err
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.undo()
    code, _, resumed = _cli([], tmp_path / "run", capsys)
    assert code == 0
    _same(uninterrupted, resumed)


def test_a_read_only_cache_is_one_line(tmp_path, capsys, monkeypatch):
    from sae_merging.lab import pools

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/ro/cache/lab")

    monkeypatch.setattr(pools, "build_lab", read_only)
    err = _one_line(*_cli(["lab.cache_dir=/ro/cache/lab"], tmp_path / "run", capsys)[:2])
    assert "read-only file system writing /ro/cache/lab" in err


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("empty", "gsm8k/test.jsonl: holds no rows"),
        ("no answer", "gsm8k/test.jsonl:2: missing field 'answer'"),
        ("bad line", "gsm8k/test.jsonl:2: not valid JSON"),
    ],
)
def test_a_bad_data_file_is_named_before_any_model_loads(
    damage, expected, models, tmp_path, capsys, monkeypatch
):
    from sae_merging.runtime import runner

    data = Path(shutil.copytree(ROOT / "tests" / "fixtures", tmp_path / "data"))
    test = data / "gsm8k" / "test.jsonl"
    rows = test.read_text().splitlines()
    if damage == "empty":
        test.write_text("")
    elif damage == "no answer":
        test.write_text("\n".join([rows[0], json.dumps({"question": "2+2?"}), *rows[2:]]) + "\n")
    else:
        test.write_text(rows[0] + "\n" + rows[1][:-5] + "\n")
    monkeypatch.setattr(runner, "prepare", lambda *a: pytest.fail("a model was loaded"))
    experts = ",".join(str(p) for n, p in models.items() if n != "base")
    overrides = [
        "model=hf",
        f"model.base={models['base']}",
        f"model.experts=[{experts}]",
        "task=paper_local",
        "task.opt_size={}",
    ]
    code, err, _ = _cli([*overrides, f"task.data_dir={data}"], tmp_path / "run", capsys, ["logger=none"])
    assert code == 2 and "Traceback" not in err and expected in err, err


def test_a_budget_below_one_generation_is_one_line_naming_the_budget_it_needs(tmp_path, capsys, micro_lab):
    """Refused before anything is scored, with the smallest budget that fits generation 0 and
    the choice: that budget runs, one less is refused again."""
    import re

    err = _one_line(*_cli(["budget.examples=10"], tmp_path / "run", capsys)[:2])
    assert "budget.examples=10: is below what generation 0" in err
    needed = int(re.search(r"at least (\d+)\)", err).group(1))
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() and "checkpoint" in p.parts]
    err = _one_line(*_cli([f"budget.examples={needed - 1}"], tmp_path / "less", capsys)[:2])
    assert f"at least {needed})" in err
    code, err, results = _cli([f"budget.examples={needed}"], tmp_path / "enough", capsys)
    assert code == 0, err
    assert results["examples_scored"] <= needed


# --- 4. sweeps survive one bad job ------------------------------------------------------------


def _run_py(*arguments: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *arguments], cwd=ROOT, capture_output=True, text=True, env=dict(os.environ)
    )


def test_a_config_error_in_any_job_stops_the_sweep_before_it_starts(tmp_path, micro_lab):
    done = _run_py("-m", "experiment=smoke", "seed=0,-1,1", f"hydra.sweep.dir={tmp_path / 's'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "job 1 (experiment=smoke seed=-1): seed=-1: must be an integer >= 0" in done.stderr, done.stderr
    assert not any((tmp_path / "s").iterdir())  # no job ran


SWEEP = ["-m", "experiment=smoke", "progress=false", "threads=1", "hydra/launcher=lab_parallel"]


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(tmp_path, micro_lab):
    done = _run_py(*SWEEP, "budget.examples=10,null", f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert any("job 0" in x and "failed: budget.examples=10: is below what generation 0" in x for x in lines)
    assert any("job 1" in x and x.endswith(": finished") for x in lines)
    assert (tmp_path / "1" / "results.json").is_file() and not (tmp_path / "0" / "results.json").exists()
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_ctrl_c_on_a_parallel_sweep_resumes_each_job_in_its_own_folder(tmp_path, micro_lab):
    """The printed command re-runs the sweep; each job resumes its own folder (issue 25: under
    lab_parallel it resumed seed 0's folder with seed 1) and equals an uninterrupted run."""
    import shlex
    import signal
    import time

    args = [*SWEEP, "schedule.steps=6", "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}"]
    process = subprocess.Popen(
        [sys.executable, "run.py", *args], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )  # fmt: skip
    metrics = [tmp_path / "s" / str(job) / "metrics.jsonl" for job in (0, 1)]
    while not all(m.is_file() and len(m.read_text().splitlines()) >= 2 for m in metrics):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    err = process.communicate()[1]
    assert process.returncode == 130, err[-3000:]
    command = next(line for line in err.splitlines() if "resume every unfinished job with:" in line)
    resumed = _run_py(*shlex.split(command.split("with: ", 1)[1])[2:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for job in (0, 1):
        results = json.loads((tmp_path / "s" / str(job) / "results.json").read_text())
        assert results["seed"] == job
        whole = _run_py(
            *args[1:-3], "schedule.steps=6", f"seed={job}", f"hydra.run.dir={tmp_path / str(job)}"
        )
        assert whole.returncode == 0, whole.stderr[-2000:]
        _same(json.loads((tmp_path / str(job) / "results.json").read_text()), results)


# --- 6. leftovers of killed builds and saves --------------------------------------------------


@pytest.mark.slow  # builds a micro lab
def test_leftovers_of_a_killed_lab_build_are_removed_by_the_next_build(micro_lab_config, tmp_path):
    from sae_merging.lab.build import LabSpec, build_lab

    spec = LabSpec.from_dict(micro_lab_config)
    name = f"{spec.name}-{spec.key()}"
    killed = tmp_path / f".{name}.k1ll3d.tmp"
    (killed / "base").mkdir(parents=True)
    (killed / "base" / "model.safetensors").write_bytes(b"half")
    base = f"base-{spec.stage_keys()['base']}"
    killed_stage = tmp_path / "stages" / f".{base}.k1ll3d.tmp"  # a stage's model, cached on its own
    killed_stage.mkdir(parents=True)
    (killed_stage / "model.safetensors").write_bytes(b"half")
    build_lab(spec, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.lock", "stages"])
    assert not list(tmp_path.rglob("*.tmp"))
    assert (tmp_path / "stages" / base / "stage.json").is_file()


def test_leftovers_of_a_killed_save_are_removed_by_the_next_run(interrupted, capsys):
    killed = [
        interrupted / ".model.k1ll3d.tmp",
        interrupted / "checkpoint" / "individuals" / ".g001-0009.x.tmp",
    ]
    for path in killed:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    (interrupted / "checkpoint" / ".state.json.k1ll3d.tmp").write_text("{")
    code, _, _ = _cli([], interrupted, capsys)
    assert code == 0
    assert not [p for p in interrupted.rglob(".*.tmp")]


@pytest.mark.slow  # two runs through run.py
def test_a_refused_launch_leaves_the_folders_config_as_it_was(tmp_path, micro_lab):
    run = ["experiment=smoke", "progress=false", "schedule.steps=1", f"hydra.run.dir={tmp_path / 'run'}"]
    assert _run_py(*run).returncode == 0

    def digest() -> dict:  # the lock file names the last process that held it
        return {k: v for k, v in _digest(tmp_path / "run").items() if k != ".lock"}

    before = digest()
    refused = _run_py(*run, "seed=1")
    assert refused.returncode == 2 and "holds results of another config" in refused.stderr
    assert digest() == before  # .hydra/config.yaml still says seed 0
    moved = _run_py(*run, "seed=1", "resume=false")
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert digest() == before
    assert json.loads((tmp_path / "run-2" / "results.json").read_text())["seed"] == 1
    assert "seed: 1" in (tmp_path / "run-2" / ".hydra" / "config.yaml").read_text()
