"""Every bad input is refused before any work, as one line per problem, exit status 2, no
traceback: a table of cases run in-process through the `run.py` entry (`runtime.cli.main`) and
the merge command, plus a few through a subprocess (Hydra's own errors, the run folder, and the
start-up: a config error is reported before torch is imported)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, compose_config
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from sae_merging.runtime import cli, merge_command
from sae_merging.runtime.preflight import preflight

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "progress=false"]
PAPER_LOCAL = ["task=paper_local", "model=hf", "model.experts=[{math},{multilingual}]", "logger=none"]
HF = ["model=hf", "task=lab"]  # own models on the lab's tasks: named, as run.py requires
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA on a CPU machine")
NAN_REFUSED = "must be a finite number (NaN and inf are refused everywhere)"


def _copy_model(source: Path, target: Path, tokenizer: bool = True) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        if tokenizer or not file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, target / file.name)
    return target


@pytest.fixture(scope="module")
def paths(tmp_path_factory, micro_lab) -> dict[str, str]:
    """Good and broken model folders and data files, by placeholder name."""
    root = tmp_path_factory.mktemp("bad-inputs")
    math, multilingual = (Path(p) for p in micro_lab.experts.values())
    found = {"base": str(micro_lab.base), "math": str(math), "multilingual": str(multilingual)}
    found["missing"] = str(root / "nowhere")
    (root / "empty").mkdir()
    found["empty"] = str(root / "empty")
    corrupt = _copy_model(math, root / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\xff" * 64)
    found["corrupt"] = str(corrupt)
    truncated = _copy_model(math, root / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    found["truncated"] = str(truncated)
    not_json = _copy_model(math, root / "not-json")
    (not_json / "model.safetensors").write_bytes((12).to_bytes(8, "little") + b"not a header" + b"\0" * 64)
    found["not_json"] = str(not_json)
    found["no_tokenizer"] = str(_copy_model(Path(micro_lab.base), root / "no-tokenizer", tokenizer=False))
    no_config = _copy_model(math, root / "no-config")
    (no_config / "config.json").unlink()
    found["no_config"] = str(no_config)
    sharded = _copy_model(math, root / "sharded")
    (sharded / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    found["sharded"] = str(sharded)
    (root / "weights.txt").write_text("not a model")
    found["text_file"] = str(root / "weights.txt")
    (root / "fake.gguf").write_bytes(b"NOPE" + b"\0" * 60)
    found["fake_gguf"] = str(root / "fake.gguf")
    reshaped = _copy_model(math, root / "reshaped")
    tensors = load_file(reshaped / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = torch.cat([tensors[name], tensors[name][:1]])
    save_file(tensors, reshaped / "model.safetensors", metadata={"format": "pt"})
    found["reshaped"] = str(reshaped)
    bad_data = root / "bad-data"
    shutil.copytree(FIXTURES, bad_data)
    lines = (bad_data / "gsm8k" / "train.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]  # line 3 cut short
    (bad_data / "gsm8k" / "train.jsonl").write_text("\n".join(lines) + "\n")
    found["bad_data"] = str(bad_data)
    found["no_data"] = str(root / "no-data")
    (root / "a-file").write_text("")
    found["a_file"] = str(root / "a-file")
    return found


# (overrides, expected message); `{name}` is replaced by `paths[name]`; SMOKE comes first.
CASES = {
    # schedule
    "s_min above s_max": (["schedule.s_min=0.7"], "schedule.s_min=0.7: must be <= s_max (0.6)"),
    "s_max not a rate": (["schedule.s_max=1.2"], "schedule.s_max=1.2: must be a finite number in [0, 1)"),
    "s_min nan": (["schedule.s_min=nan"], f"schedule.s_min=nan: {NAN_REFUSED}"),
    "T0 zero": (["schedule.T0=0"], "schedule.T0=0: must be an integer >= 1"),
    "T_mult fraction": (["schedule.T_mult=1.5"], "schedule.T_mult=1.5: must be an integer >= 1"),
    "steps zero": (["schedule.steps=0"], "schedule.steps=0: must be an integer >= 1"),
    "rise unknown": (["schedule.rise=step"], "schedule.rise='step': must be one of cosine, linear"),
    "phase unknown": (["schedule.phase=late"], "schedule.phase='late': must be one of endpoint, sgdr"),
    "constant rate inf": (
        ["schedule=constant", "schedule.rate_value=inf"],
        f"schedule.rate_value=inf: {NAN_REFUSED}",
    ),
    # SAE
    "archive of one": (["method.archive_size=1"], "method.archive_size=1: must be an integer >= 2"),
    "archive below generation 0": (
        ["method.archive_size=3"],
        "method.archive_size=3: must hold the 2 experts",
    ),
    "negative variants": (
        ["method.n_sparse_variants=-1"],
        "method.n_sparse_variants=-1: must be an integer >= 0",
    ),
    "sparsity weight inf": (["method.sparsity_weight=inf"], f"method.sparsity_weight=inf: {NAN_REFUSED}"),
    "sparsity weight negative": (
        ["method.sparsity_weight=-0.1"],
        "method.sparsity_weight=-0.1: must be a finite number >= 0",
    ),
    "redense unknown": (
        ["method.redense=random"],
        "method.redense='random': must be one of parents, original_dense",
    ),
    "competition unknown": (
        ["method.competition=best"],
        "method.competition='best': must be one of worst, shared",
    ),
    "aggregate unknown": (
        ["method.aggregate=sum"],
        "method.aggregate='sum': must be one of instances, task_mean",
    ),
    "omega source unknown": (
        ["method.omega_from=merged"],
        "method.omega_from='merged': must be one of pruned, archive",
    ),
    "sparsity scale unknown": (
        ["method.sparsity_scale=zscore"],
        "method.sparsity_scale='zscore': must be one of raw, archive",
    ),
    "elitism negative": (["method.elitism=-1"], "method.elitism=-1: must be an integer >= 0"),
    "elitism fills the archive": (
        ["method.elitism=3", "method.keep_experts=true", "method.archive_size=4"],
        "method.elitism=3 (keep_experts=True): keeps 5 of the archive's 4 places; at least one must "
        "stay open to children",
    ),
    "keep experts not a flag": (
        ["method.keep_experts=some"],
        "method.keep_experts='some': must be true or false",
    ),
    "sharing alpha nan": (["method.sharing_alpha=nan"], f"method.sharing_alpha=nan: {NAN_REFUSED}"),
    "stream threshold negative": (
        ["method.stream_parents_above_gb=-1"],
        "method.stream_parents_above_gb=-1: must be a finite number >= 0",
    ),
    "unknown method key": (
        ["+method.bogus=1"],
        "method.bogus: unknown setting for sae_merging.methods.sae.SAE; valid: schedule,",
    ),
    "redraw not a flag": (
        ["method.redraw_opt=sometimes"],
        "method.redraw_opt='sometimes': must be true or false",
    ),
    # one-shot baselines
    "scaling factor nan": (
        ["method=task_arithmetic", "method.scaling_factor=nan"],
        f"method.scaling_factor=nan: {NAN_REFUSED}",
    ),
    "scaling grid nan": (
        ["method=task_arithmetic", "method.scaling_grid=[0.5,nan]"],
        f"method.scaling_grid[1]=nan: {NAN_REFUSED}",
    ),
    "empty grid": (
        ["method=task_arithmetic", "method.scaling_grid=[]"],
        "method.scaling_grid=[]: must not be empty when scaling_factor is null",
    ),
    "weights per expert": (
        ["method=task_arithmetic", "method.weights=[1.0]"],
        "method.weights=[1.0]: needs one weight per expert (2)",
    ),
    "weights sum to zero": (
        ["method=linear", "method.weights=[0,0]"],
        "method.weights=[0, 0]: must not sum to zero",
    ),
    "linear takes no factor": (
        ["method=linear", "+method.scaling_factor=0.5"],
        "method.scaling_factor: unknown setting for sae_merging.methods.one_shot.Linear; valid: weights",
    ),
    "ties density above 1": (
        ["method=ties", "method.density=1.5"],
        "method.density=1.5: must be a finite number in (0, 1]",
    ),
    "dare density zero": (
        ["method=dare", "method.density=0"],
        "method.density=0: must be a finite number in (0, 1]",
    ),
    "dare rescale not a flag": (
        ["method=dare", "method.rescale=maybe"],
        "method.rescale='maybe': must be true or false",
    ),
    # PSO, M2N2, expert
    "pso scope unknown": (
        ["method=pso", "method.random_scope=diagonal"],
        "method.random_scope='diagonal': must be one of per_element",
    ),
    "pso inertia nan": (["method=pso", "method.inertia=nan"], f"method.inertia=nan: {NAN_REFUSED}"),
    "pso drop of 1": (
        ["method=pso", "method.dare_drop=1.0"],
        "method.dare_drop=1.0: must be a finite number in [0, 1)",
    ),
    "pso clamp zero": (
        ["method=pso", "method.clamp=0"],
        "method.clamp=0: must be a finite number > 0 or null",
    ),
    "pso swarm too small": (
        ["method=pso", "method.swarm_size=2"],
        "method.swarm_size=2: must hold base + expert:math + expert:multilingual (>= 3)",
    ),
    "m2n2 archive of one": (
        ["method=m2n2", "method.archive_size=1"],
        "method.archive_size=1: must be an integer >= 2",
    ),
    "m2n2 interpolation unknown": (
        ["method=m2n2", "method.interpolation=cubic"],
        "method.interpolation='cubic': must be one of lerp, slerp, slerp_flat",
    ),
    "m2n2 split unknown": (
        ["method=m2n2", "method.split_at=layer"],
        "method.split_at='layer': must be one of tensor, entry",
    ),
    "m2n2 no children": (
        ["method=m2n2", "method.children_per_step=0"],
        "method.children_per_step=0: must be an integer >= 1",
    ),
    "expert index beyond the pool": (
        ["method=expert", "method.index=5"],
        "method.index=5: must be in 0..1 (experts: math, multilingual)",
    ),
    # pieces, pools, evaluator, logger, run
    "pruner granularity": (
        ["pruner.granularity=rows"],
        "pruner.granularity='rows': must be one of local, global",
    ),
    "pruner target unknown": (
        ["pruner.target=deltas"],
        "pruner.target='deltas': must be one of weights, task_vector",
    ),
    "pruner skip not a list": (
        ["pruner.skip=embed"],
        "pruner.skip='embed': must be a list of fnmatch patterns",
    ),
    "scoring granularity": (
        ["scoring.granularity=layer"],
        "scoring.granularity='layer': must be one of global, local",
    ),
    "dtype unknown": (["model.dtype=int8"], "model.dtype='int8': must be one of float32, bfloat16, float16"),
    "vocab policy unknown": (
        ["model.vocab_policy=rows"],
        "model.vocab_policy='rows': must be one of refuse, common_rows",
    ),
    "extraction unknown": (
        ["evaluator.extraction=fuzzy"],
        "evaluator.extraction='fuzzy': must be one of strict, flexible",
    ),
    "batch size zero": (["evaluator.batch_size=0"], "evaluator.batch_size=0: must be an integer >= 1"),
    "token budget zero": (["evaluator.token_budget=0"], "evaluator.token_budget=0: must be an integer >= 1"),
    "shared prefix zero": (
        ["evaluator.min_shared_prefix=0"],
        "evaluator.min_shared_prefix=0: must be an integer >= 1",
    ),
    "prefill tokens zero": (
        ["evaluator.prefill_tokens=0"],
        "evaluator.prefill_tokens=0: must be an integer >= 1",
    ),
    "token budget for lm-eval": (
        ["evaluator=lm_eval", "+evaluator.token_budget=4096"],
        "evaluator.token_budget: unknown setting for sae_merging.evaluation.lm_eval_backend.LmEvalEvaluator",
    ),
    "max length negative": (
        ["evaluator.max_length=-5"],
        "evaluator.max_length=-5: must be an integer >= 1 or null",
    ),
    "final evaluator batch": (
        ["final_evaluator={_target_:sae_merging.evaluation.builtin.BuiltinEvaluator,batch_size:0}"],
        "final_evaluator.batch_size=0: must be an integer >= 1",
    ),
    "logger mode unknown": (
        ["logger=wandb", "logger.mode=bogus"],
        "logger.mode='bogus': must be one of offline, online, disabled, shared",
    ),
    "target without module": (
        ["method._target_=sae_merging.methods.nope.SAE"],
        "method._target_='sae_merging.methods.nope.SAE': no module 'sae_merging.methods.nope'",
    ),
    "seed negative": (["seed=-1"], "seed=-1: must be an integer >= 0"),
    "device unknown": (["device=tpu"], "device='tpu': must be auto, cpu, cuda, cuda:N or mps"),
    "threads zero": (["threads=0"], "threads=0: must be an integer >= 1 or null"),
    "progress not a flag": (["progress=maybe"], "progress='maybe': must be true or false"),
    "selection unknown": (
        ["selection=best"],
        "selection='best': must be one of last_draw, all_draws, validation",
    ),
    "validation without a validation set": (
        ["task.validation_size.lab-math=null", "task.validation_size.lab-multilingual=null"],
        "selection='validation': the task pool holds out no validation set",
    ),
    "validation share of 1": (
        ["task.validation_size.lab-math=1.0"],
        "task.validation_size.lab-math=1.0: must be a finite number in (0, 1)",
    ),
    "budget zero": (["budget.examples=0"], "budget.examples=0: must be an integer >= 1 or null"),
    "budget unknown key": (["+budget.seconds=5"], "budget.seconds=5: unknown setting; valid: examples"),
    "unknown top-level key": (["+foo=1"], "foo: unknown setting; valid top-level keys: seed,"),
    # lab and tasks
    "lab steps zero": (["lab.base_train.steps=0"], "lab.base_train.steps=0: must be an integer >= 1"),
    "lab lr nan": (["lab.base_train.lr=nan"], f"lab.base_train.lr=nan: {NAN_REFUSED}"),
    "lab unknown key": (["+lab.bogus=1"], "lab.bogus=1: unknown setting; valid: name, seed, threads, model,"),
    "opt size of an unknown task": (
        ["+task.opt_size.nonexistent=5"],
        "task.opt_size='nonexistent': names an unknown task; tasks: lab-math, lab-multilingual",
    ),
    "test size zero": (
        ["task.test_size.lab-math=0"],
        "task.test_size.lab-math=0: must be an integer >= 1 or null",
    ),
    # model files (model=hf)
    "model paths missing": (
        [*HF, "model.experts=[{missing},{missing}2]"],
        "model.experts[1]='{missing}2': no such file or folder (a local path or a hub id 'owner/name')",
    ),
    "empty folder": (
        [*HF, "model.experts=[{empty},{math}]"],
        "model.experts[0]='{empty}': the folder is empty",
    ),
    "corrupt safetensors": (
        [*HF, "model.experts=[{math},{corrupt}]"],
        "model.experts[1]='{corrupt}': {corrupt}/model.safetensors is not a safetensors file (header length",
    ),
    "truncated safetensors": (
        [*HF, "model.experts=[{math},{truncated}]"],
        "model.experts[1]='{truncated}': {truncated}/model.safetensors is truncated: tensor",
    ),
    "header not json": (
        [*HF, "model.experts=[{math},{not_json}]"],
        "{not_json}/model.safetensors is not a safetensors file (its header is not JSON)",
    ),
    "no tokenizer": (
        [*HF, "model.base={no_tokenizer}", "model.experts=[{math},{multilingual}]"],
        "model.base='{no_tokenizer}': no tokenizer files",
    ),
    "no config": (
        [*HF, "model.experts=[{no_config},{math}]"],
        "model.experts[0]='{no_config}': no config.json",
    ),
    "missing shard": (
        [*HF, "model.experts=[{math},{sharded}]"],
        "{sharded}/model-00001-of-00002.safetensors (named in model.safetensors.index.json) does not exist",
    ),
    "text file as model": (
        [*HF, "model.experts=[{math},{text_file}]"],
        "model.experts[1]='{text_file}': a file that is not .gguf",
    ),
    "not a gguf file": ([*HF, "model.experts=[{math},{fake_gguf}]"], "{fake_gguf} is not a GGUF file"),
    "one expert": ([*HF, "model.experts=[{math}]"], "model.experts needs at least 2 models, got 1"),
    "names per expert": (
        [*HF, "model.experts=[{math},{multilingual}]", "model.expert_names=[a]"],
        "model.expert_names=['a']: needs one name per expert (2)",
    ),
    "base required": (
        [*HF, "model.experts=[{math},{multilingual}]", "method=task_arithmetic"],
        "method 'task_arithmetic' needs a base model: set model.base=PATH_OR_ID",
    ),
    "task-vector pruning without a base": (
        [*HF, "model.experts=[{math},{multilingual}]", "pruner.target=task_vector"],
        "pruner.target='task_vector': needs a base model: set model.base=PATH_OR_ID",
    ),
    "shapes differ": (
        [*HF, "model.experts=[{math},{reshaped}]"],
        "error: tensor 'model.layers.0.mlp.up_proj.weight' has shape [64, 32] in",
    ),
    # data files
    "data folder missing": (
        [*PAPER_LOCAL, "env:{no_data}"],
        "task.data_dir='{no_data}' does not exist: set task.data_dir=DIR (or SAE_MERGING_DATA)",
    ),
    "data folder is a file": (
        [*PAPER_LOCAL, "task.data_dir={a_file}"],
        "task.data_dir='{a_file}' is not a folder",
    ),
    "data file missing": (
        [*PAPER_LOCAL, "task.data_dir={math}"],
        "task.tasks[0].source='{math}/gsm8k': no train data at",
    ),
    "malformed jsonl": (
        [*PAPER_LOCAL, "env:{bad_data}"],
        "task.tasks[0].source: {bad_data}/gsm8k/train.jsonl:3: not valid JSON",
    ),
    # devices (CPU machines)
    "cuda on a cpu build": (["device=cuda"], "device='cuda': CUDA is not available with torch"),
    "vllm without a gpu": (["evaluator=vllm"], "evaluator=vllm (needs a CUDA GPU): CUDA is not available"),
}
NEEDS_CPU = {"cuda on a cpu build", "vllm without a gpu"}
AFTER_PREFLIGHT = NEEDS_CPU | {"shapes differ"}  # found once torch / the headers are read


def _fill(text: str, paths: dict[str, str]) -> str:
    for name, path in paths.items():
        text = text.replace("{" + name + "}", path)
    return text


def _refuse(overrides: list[str] | DictConfig, run_dir: Path, capsys, command_line=None) -> str:
    """stderr of the `run.py` entry for these overrides (or this config and `command_line`),
    which must exit 2 without traceback."""
    cfg = overrides if isinstance(overrides, DictConfig) else compose_config(overrides)
    if command_line is None:
        command_line = [] if isinstance(overrides, DictConfig) else overrides
    with pytest.raises(SystemExit) as done:
        cli.main(cfg, run_dir, command_line)
    captured = capsys.readouterr()
    assert done.value.code == 2, captured
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert lines and all(line.startswith(("config error: ", "error: ")) for line in lines), lines
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "results.json").exists()
    return captured.err


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_before_any_work(case, paths, tmp_path, capsys, monkeypatch):
    if case in NEEDS_CPU and torch.cuda.is_available():
        pytest.skip("checks the refusal of CUDA on a CPU machine")
    overrides, message = CASES[case]
    overrides = [_fill(o, paths) for o in overrides]
    for env in [o for o in overrides if o.startswith("env:")]:
        monkeypatch.setenv("SAE_MERGING_DATA", env[4:])
    overrides = [o for o in overrides if not o.startswith("env:")]
    overrides = overrides if overrides[0].startswith("task=") else SMOKE + overrides
    cfg = compose_config(overrides)
    err = _refuse(cfg, tmp_path / "run", capsys, overrides)
    assert _fill(message, paths) in err
    if case not in AFTER_PREFLIGHT:  # the light checks found it: preflight alone refuses it
        with pytest.raises(ValueError):
            preflight(cfg)


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    err = _refuse(SMOKE + ["schedule.s_min=nan", "method.archive_size=1", "+foo=1"], tmp_path / "run", capsys)
    assert len(err.strip().splitlines()) == 3


def test_nan_options_are_refused_before_loading(tmp_path, capsys, monkeypatch):
    """`scaling_factor=nan` once saved an all-NaN model and a results.json holding a bare NaN."""
    from sae_merging.models import io

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(io, "load_model", refuse)
    monkeypatch.setattr(io, "load_tokenizer", refuse)
    for option in ("method.scaling_factor=nan", "method.scaling_factor=inf", "method.scaling_factor=-inf"):
        err = _refuse(SMOKE + ["method=task_arithmetic", option], tmp_path / "run", capsys)
        assert NAN_REFUSED in err
    assert not (tmp_path / "run" / "model").exists()


def test_a_run_folder_that_is_a_file(paths, capsys):
    err = _refuse(SMOKE, Path(paths["a_file"]), capsys)
    assert f"config error: hydra.run.dir={paths['a_file']!r}: is a file, not a folder" in err


def test_results_of_another_config_are_not_reused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps({"config_hash": "0123"}))
    cfg = compose_config(SMOKE)
    with pytest.raises(SystemExit) as done:
        cli.main(cfg, tmp_path / "run")
    assert done.value.code == 2
    assert "holds results of another config (0123); use a new run folder" in capsys.readouterr().err


def test_a_large_archive_is_legal_but_warned(tmp_path):
    plan = preflight(compose_config(SMOKE + ["method.archive_size=40"]))
    assert plan.warnings == [
        "method.archive_size=40: generation 0 holds 4 members; the archive never fills (9 members by "
        "generation 2); a full archive scores 40 members and makes 20 children per generation"
    ]
    plan = preflight(compose_config(["method.archive_size=40"]))
    assert "the archive fills by generation 5" in plan.warnings[0]
    assert preflight(compose_config([])).warnings == []


# --- the merge command -------------------------------------------------------------------------


MERGE_CASES = {
    "prune not a rate": (["--prune", "1.5"], "error: --prune 1.5: must be a finite number in [0, 1)"),
    "scale nan": (["--scale", "nan"], "error: --scale nan: must be a finite number"),
    "weights per expert": (["--weights", "1"], "error: --weights: 1 weights for 2 experts"),
    "granularity unknown": (
        ["--granularity", "rows"],
        "error: --granularity rows: must be one of local, global",
    ),
    "base without tokenizer": (
        ["--base", "{no_tokenizer}"],
        "error: --base='{no_tokenizer}': no tokenizer files",
    ),
    "corrupt expert": (
        ["--experts", "{math}", "{corrupt}"],
        "error: --experts[1]='{corrupt}': {corrupt}/model.safetensors",
    ),
    "output is a file": (["--out", "{a_file}"], "error: --out {a_file}: is a file"),
}


@pytest.mark.parametrize("case", list(MERGE_CASES), ids=list(MERGE_CASES))
def test_merge_command_refuses_bad_inputs_before_merging(case, paths, tmp_path, capsys, monkeypatch):
    arguments, message = MERGE_CASES[case]
    defaults = {"--base": [paths["base"]], "--experts": [paths["math"], paths["multilingual"]]}
    defaults["--out"] = [str(tmp_path / "merged")]
    given = {}
    for item in [_fill(a, paths) for a in arguments]:
        if item.startswith("--"):
            key = item
            given[key] = []
        else:
            given[key].append(item)
    argv = [x for key, values in {**defaults, **given}.items() for x in (key, *values)]
    monkeypatch.setattr(sys, "argv", ["merge_checkpoints.py", *argv])
    from sae_merging.merging import streaming

    monkeypatch.setattr(streaming, "stream_task_arithmetic", _refuse_merge)
    with pytest.raises(SystemExit) as done:
        merge_command.main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert _fill(message, paths) in err
    assert not (tmp_path / "merged").exists()


def _refuse_merge(*args, **kwargs):
    raise AssertionError("merged although an input was bad")


# --- through a subprocess: start-up, Hydra's own errors, the run folder ---------------------------


def _run_py(*arguments: str, importtime: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "run.py", *arguments]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def _imported(stderr: str) -> set[str]:
    """Top-level packages in `python -X importtime` output."""
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


HEAVY = {"torch", "transformers", "lm_eval", "wandb", "safetensors", "datasets"}


def test_a_config_error_exits_before_torch_is_imported(tmp_path):
    done = _run_py("method.archive_size=1", f"hydra.run.dir={tmp_path / 'run'}", importtime=True)
    assert done.returncode == 2
    assert "config error: method.archive_size=1: must be an integer >= 2" in done.stderr
    assert "Traceback" not in done.stderr
    assert not HEAVY & _imported(done.stderr)


@pytest.mark.parametrize("arguments", [["--help"], ["--cfg", "job"]], ids=["help", "cfg-job"])
def test_help_and_config_print_without_heavy_imports(arguments):
    done = _run_py(*arguments, importtime=True)
    assert done.returncode == 0
    assert not HEAVY & _imported(done.stderr)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["model=hf", "model.experts=[owner/a,owner/b]"],
            "config error: model=hf needs a task on the command line: task=paper_local (local GSM8K "
            "and MMLU-ProX files under task.data_dir), task=paper (the hub), or task=lab "
            "(the lab's toy tasks)",
        ),
        (
            ["model=hf", "model.experts=[owner/a,owner/b]", "task=paper_local", "task.data_dir={no_data}"],
            "config error: task.data_dir='{no_data}' does not exist: set task.data_dir=DIR (or "
            "SAE_MERGING_DATA) to the folder holding the task's files (task=paper_local: gsm8k/, "
            "mmlu_prox_lite_en/, mmlu_pro_validation/)",
        ),
    ],
    ids=["own models without a task", "no data folder"],
)
def test_own_model_inputs_are_one_line_before_torch(arguments, message, paths, tmp_path):
    done = _run_py(
        *[_fill(a, paths) for a in arguments], f"hydra.run.dir={tmp_path / 'run'}", importtime=True
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert lines == [_fill(message, paths)]
    assert not HEAVY & _imported(done.stderr)
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["method=nonexistent"], "Could not find 'method/nonexistent'"),
        (["method.bogus=1"], "Could not override 'method.bogus'"),
        (["hydra.run.dir={a_file}"], "config error: hydra.run.dir='{a_file}': is a file, not a folder"),
    ],
    ids=["unknown group option", "unknown key", "run folder is a file"],
)
def test_hydra_errors_exit_2_without_traceback(arguments, message, paths):
    done = _run_py(*[_fill(a, paths) for a in arguments])
    assert done.returncode == 2
    assert _fill(message, paths) in done.stderr
    assert "Traceback" not in done.stderr
