"""The streaming checkpoint merge command: equal to the in-memory merge, a loadable model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sae_merging.merging.functions import task_arithmetic
from sae_merging.models.io import load_state_dict
from sae_merging.pruning.magnitude import MagnitudePruner
from sae_merging.runtime import merge_command as merge_checkpoints

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("prune,granularity", [(None, "global"), (0.5, "global"), (0.3, "local")])
def test_streamed_merge_equals_in_memory(micro_lab, tmp_path, prune, granularity):
    base, experts = micro_lab.base, list(micro_lab.experts.values())
    out = merge_checkpoints.merge_checkpoints(
        str(base), [str(e) for e in experts], tmp_path / "merged", 0.7, [1.0, 0.5], prune, granularity
    )
    states = [load_state_dict(str(path)) for path in (base, *experts)]
    expected = {
        name: task_arithmetic(states[0][name], [s[name] for s in states[1:]], 0.7, [1.0, 0.5])
        for name in states[0]
    }
    if prune is not None:
        expected = MagnitudePruner(granularity).prune(expected, prune)
    model = AutoModelForCausalLM.from_pretrained(out)
    got = model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
