"""What every measurement shares: the synthetic checkpoints, timing and peak-RSS helpers, the
lab's Hydra config, and the table's rows.

The synthetic checkpoints (bf16, Llama-3.2-1B shapes with a 32k vocabulary and tied
embeddings; base ~ N(0, 0.02), experts = base + N(0, 0.002)) are built once under --workdir.
The lab comes from the Hydra lab config (conf/lab/default.yaml), cached under
$SAE_MERGING_CACHE/lab. Timed runs are repeated (--repeat) and the fastest is kept, so every
side is measured warm. --threads (default auto) follows the thread policy of every entry point
(src/sae_merging/utils/threads.py).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sae_merging.utils import kernels

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 2048, 8192, 32, 8, 32000
RATE = 0.6  # the pruning rate of measurements 1 and 2
COMMAND_RATE = 0.5  # the merge command's --prune in measurements 1 and 5
GB = 1e9


def llama_layout(params: float) -> list[tuple[str, tuple[int, ...]]]:
    """Llama-3.2-1B's tensors (32k vocabulary, tied embeddings) with as many layers as make
    about `params` parameters."""
    head = HIDDEN // HEADS
    layer = [
        ("self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
        ("self_attn.k_proj.weight", (KV_HEADS * head, HIDDEN)),
        ("self_attn.v_proj.weight", (KV_HEADS * head, HIDDEN)),
        ("self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
        ("mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
        ("mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
        ("mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ("input_layernorm.weight", (HIDDEN,)),
        ("post_attention_layernorm.weight", (HIDDEN,)),
    ]
    per_layer = sum(torch.Size(shape).numel() for _, shape in layer)
    layers = max(1, round((params - VOCAB * HIDDEN) / per_layer))
    names = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    names += [(f"model.layers.{i}.{name}", shape) for i in range(layers) for name, shape in layer]
    return names + [("model.norm.weight", (HIDDEN,))]


def build_checkpoints(folder: Path, params: float) -> list[Path]:
    """base / expert1 / expert2 .safetensors under `folder` (built once; `done` marks a build)."""
    from sae_merging.utils.tensorfiles import TensorFileWriter

    files = [folder / f"{name}.safetensors" for name in ("base", "expert1", "expert2")]
    if (folder / "done").is_file():
        return files
    folder.mkdir(parents=True, exist_ok=True)
    layout = llama_layout(params)
    writers = [
        TensorFileWriter(f, {"format": "pt"}, [(n, torch.bfloat16, s) for n, s in layout]) for f in files
    ]
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for name, shape in layout:
        base = torch.randn(shape, generator=generator).mul_(0.02)
        writers[0].write(name, base.bfloat16())
        for writer in writers[1:]:
            writer.write(name, torch.randn(shape, generator=generator).mul_(0.002).add_(base).bfloat16())
    for writer in writers:
        writer.close()
    (folder / "done").write_text(json.dumps({"params": params, "layout": len(layout)}))
    print(f"built {folder} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return files


def llama_layout_of(file: Path) -> list[tuple[str, tuple[int, ...]]]:
    from sae_merging.utils.tensorfiles import TensorFile

    with TensorFile(file) as handle:
        return [(name, shape) for name, _, shape in handle.layout()]


def best_of(repeat: int, work) -> float:
    """The fastest of `repeat` timed calls (the first one warms caches up)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def proc_memory(field: str) -> int:
    """A Vm* field of /proc/self/status in bytes (VmHWM: the peak RSS that ru_maxrss reports)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark (clear_refs 5), so a peak covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def remove_output(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def lab_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@dataclass
class Row:
    what: str
    measured: str
    reference: str
    ratio: float | None = None
    floor: str = ""
    passed: bool | None = None

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}"
        verdict = "" if self.passed is None else ("pass" if self.passed else "FAIL")
        return [self.what, self.measured, self.reference, ratio, self.floor, verdict]


def fastest_and_first(run: dict) -> str:
    """The kept (fastest) time, and the first run's when it differs (cold caches)."""
    first = run["runs"][0]
    return f"{run['seconds']:.2f} s" + (f"; first run {first:.2f} s" if len(run["runs"]) > 1 else "")


def markdown(rows: list[Row]) -> str:
    header = ["measurement", "measured", "reference", "ratio", "floor", "result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row.cells()) + " |" for row in rows])


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "load_average": os.getloadavg(),
        "child_loops": kernels.describe(),  # (SAE_MERGING_KERNELS=0: the NumPy/torch ones)
    }
