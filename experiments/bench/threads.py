"""Measurement 6: the thread policy's measurement: seconds per step of the lab's training loop
(`lab.training.train`, what the lab build runs; default lab shapes) at 1 thread and at every
core, interleaved, with the load average before and after.
"""

from __future__ import annotations

import os
import time

import torch

from sae_merging.utils.threads import usable_cores

from .common import Row, lab_config


def lab_step_seconds(repeat: int, steps: int = 20) -> dict:
    """Seconds per step of the lab's training loop (`lab.training.train`, what the lab build
    runs) on the default lab's model shape and batch size, at 1 thread and at every core,
    interleaved; the fastest of `repeat` is kept, and the load average is noted."""
    from omegaconf import OmegaConf
    from transformers import LlamaConfig, LlamaForCausalLM

    from sae_merging.lab.training import Sequence_, TrainSpec, train

    lab = OmegaConf.to_container(lab_config([]).lab, resolve=True)
    m = lab["model"]
    config = LlamaConfig(
        vocab_size=400,
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"],
        num_key_value_heads=m["num_attention_heads"],
        max_position_embeddings=m["max_position_embeddings"],
    )
    generator = torch.Generator().manual_seed(0)
    data = [  # lab problems are a few dozen tokens long
        Sequence_(tuple(torch.randint(4, 400, (n,), generator=generator).tolist()), (True,) * n)
        for n in torch.randint(30, 60, (256,), generator=generator).tolist()
    ]
    spec = TrainSpec(steps=steps, batch_size=lab["base_train"]["batch_size"], warmup=5)
    previous, cores = torch.get_num_threads(), usable_cores()
    times: dict[int, list[float]] = {1: [], cores: []}
    load = [os.getloadavg()]
    try:
        for _ in range(repeat):
            for threads in times:
                torch.set_num_threads(threads)
                model = LlamaForCausalLM(config)
                started = time.perf_counter()
                train(model, data, spec, seed=0, pad_id=0)
                times[threads].append((time.perf_counter() - started) / steps)
    finally:
        torch.set_num_threads(previous)
    load.append(os.getloadavg())
    return {"seconds_per_step": {t: min(v) for t, v in times.items()}, "runs": times, "load_average": load}


def measure(args, results: dict) -> list[Row]:
    """Measurement 6's row."""
    rows: list[Row] = []
    steps = lab_step_seconds(args.repeat)
    results["lab_steps"] = steps
    per_step = steps["seconds_per_step"]
    one, every = per_step[1], per_step[max(per_step)]
    load = " / ".join(f"{x[0]:.2f}" for x in steps["load_average"])
    rows.append(
        Row(
            f"lab training step, {max(per_step)} threads (load average {load})",
            f"{every:.3f} s",
            f"1 thread {one:.3f} s",
            every / one,
        )
    )
    return rows
