"""Every experiment config composes, and every row of every lab table runs (one generation on
the micro lab), so no config goes stale."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sae_merging.runtime import runner

EXPERIMENTS = Path(CONF_DIR) / "experiment"
LAB_TABLES = sorted(p.stem for p in EXPERIMENTS.glob("table*.yaml"))
TINY = [
    "lab=micro",
    "task.opt_size.lab-math=8",
    "task.opt_size.lab-multilingual=10",
    "schedule.steps=1",
    "budget.examples=null",  # one generation, not the table's budget
]


def _rows(name: str) -> list[list[str]]:
    """Each row of a table (its sweep without the seed axis), as override lists."""
    params = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    axes = [
        [f"{key}={value}" for value in str(values).split(",")]
        for key, values in params.items()
        if key != "seed"
    ]
    return [list(row) for row in itertools.product(*axes)]


def test_every_lab_table_is_listed():
    assert LAB_TABLES == [
        "table1_experts", "table1_main", "table2_ablation", "table3_archive_pso",
        "table3_archive_sae", "table4_range", "table5_measure", "table6_schedule",
    ]  # fmt: skip


@pytest.mark.parametrize("name", LAB_TABLES)
@pytest.mark.parametrize("scale", ["lab", "paper"])
def test_every_experiment_composes_at_both_scales(name, scale):
    """One config per experiment, at either scale (`scale=paper`: the paper's models, tasks and
    SLURM, sweeps apart from the lab's), with the same rows."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=[f"experiment={name}", f"scale={scale}"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher._target_.rsplit(".", 1)[-1]
    if scale == "paper":
        assert cfg.model.base == "meta-llama/Llama-3.2-3B-Instruct"
        assert list(cfg.model.experts) == [
            "MergeBench/Llama-3.2-3B-Instruct_math",
            "MergeBench/Llama-3.2-3B-Instruct_multilingual",
        ]
        assert cfg.task.opt_size == {"gsm8k": 1319, "mmlu_prox": 200}
        assert cfg.device == "cuda"
    else:
        assert cfg.model._target_ == "sae_merging.lab.pools.LabModelPool"
        assert cfg.device == "auto"
    assert launcher == ("SlurmLauncher" if scale == "paper" else "JoblibLauncher")
    prefix = "outputs/tables/paper" if scale == "paper" else "outputs/tables"
    assert cfg.hydra.sweep.dir == f"{prefix}/{name}"
    assert "scale" in cfg.hydra.job.config.override_dirname.exclude_keys  # same run names


def test_ablation_rows_reuse_the_sparsity_range_configs():
    """Table 2's wide-range row is Table 4's `sparsity_range=wide`, not a copy of it."""
    ablation = compose_config(["experiment=table2_ablation", "+ablation=wide_range"])
    wide = compose_config(["experiment=table4_range", "+sparsity_range=wide"])
    assert (ablation.schedule.s_min, ablation.schedule.s_max) == (wide.schedule.s_min, wide.schedule.s_max)
    assert (wide.schedule.s_min, wide.schedule.s_max) == (0.05, 0.9)


@pytest.mark.slow
@pytest.mark.parametrize("name", LAB_TABLES)
def test_every_row_runs_one_generation(name, tmp_path, micro_lab):
    for index, row in enumerate(_rows(name)):
        cfg = compose_config([f"experiment={name}", *row, *TINY])
        if "steps" in cfg.method:  # PSO, M2N2: one step
            OmegaConf.update(cfg, "method.steps", 1)
        results = runner.run(cfg, tmp_path / str(index))
        assert set(results["test"]) == {"lab-math", "lab-multilingual", "mean"}, row
        assert results["models_scored"] >= 1, row


# each row of the mechanism ablation: the settings it must change (everything else at the
# paper-faithful defaults of FAITHFUL)
FAITHFUL = {
    "method._target_": "sae_merging.methods.sae.SAE",
    "method.omega_from": "pruned",
    "method.sparsity_scale": "raw",
    "method.elitism": 0,
    "method.keep_experts": False,
    "method.competition": "worst",
    "method.aggregate": "instances",
    "pruner.target": "weights",
    "schedule.phase": "endpoint",
    "schedule.T0": 3,
}
MECHANISM_ROWS = {
    "faithful": {},
    "omega_archive": {"method.omega_from": "archive"},
    "sparsity_scale_archive": {"method.sparsity_scale": "archive"},
    "elitism2": {"method.elitism": 2},
    "keep_experts": {"method.keep_experts": True},
    "task_vector": {"pruner.target": "task_vector"},
    "shared": {"method.competition": "shared"},
    "sgdr": {"schedule.phase": "sgdr"},
    "slower_annealing": {"schedule.T0": 6},
    "combined": {
        "method.omega_from": "archive",
        "method.sparsity_scale": "archive",
        "method.keep_experts": True,
        "pruner.target": "task_vector",
    },
    "pso": "pso",
}


def test_mechanism_ablation_rows_compose_and_validate():
    """conf/experiment/mechanism_ablation.yaml: 10 seeds outermost, every row one option (or the
    listed combination) away from paper-faithful SAE, PSO the baseline, all on the tables' one
    budget with validation selection, and each row's config passes the run's preflight."""
    from sae_merging.runtime.preflight import preflight

    sweep = yaml.safe_load((EXPERIMENTS / "mechanism_ablation.yaml").read_text())
    params = sweep["hydra"]["sweeper"]["params"]
    assert list(params) == ["seed", "+mechanism"]  # seeds outermost
    assert str(params["seed"]) == ",".join(map(str, range(10)))
    rows = _rows("mechanism_ablation")
    assert rows == [[f"+mechanism={name}"] for name in MECHANISM_ROWS]
    for (row,), changed in zip(rows, MECHANISM_ROWS.values(), strict=True):
        cfg = compose_config(["experiment=mechanism_ablation", row])
        assert (cfg.budget.examples, cfg.selection, cfg.threads) == (9000, "validation", 1), row
        if changed == "pso":
            assert cfg.method._target_ == "sae_merging.methods.pso.PSO"
        else:
            expected = {**FAITHFUL, **changed}
            assert {key: OmegaConf.select(cfg, key) for key in expected} == expected, row
        assert preflight(cfg).warnings == [], row
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        overrides = ["experiment=mechanism_ablation"]
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.sweep.dir == "outputs/tables/mechanism_ablation"
