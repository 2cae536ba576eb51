"""Measure the lab's interference frontier: for each expert recipe (a set of `lab.*` overrides on
a preset), train the experts from the preset's shared base (each model cached on its own, so the
base is trained once), and score the reference rows on a subset of the test items, task
arithmetic's lambda chosen on the validation split. Prints, and after every variant saves, a
table over every variant tried (JSON + Markdown).

    python experiments/lab_frontier.py                                  # every variant below
    python experiments/lab_frontier.py --variants lr1.5e-4 overlap0.5   # some of them
    python experiments/lab_frontier.py --multitask --limit 2000         # with the ceiling, full test sets
    python experiments/lab_frontier.py --lab micro --limit 20 --out /tmp/frontier   # smoke run

Run it on one torch thread (`lab.threads` of the preset, 1): the weights depend on the count.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "analysis" / "figures" / "lab" / "frontier"

# name -> lab.* overrides (dotted keys) on the preset; "" means the preset itself
VARIANTS: dict[str, dict[str, object]] = {
    "preset": {},
    "overlap0": {"expert_overlap": 0.0},
    "overlap0.5": {"expert_overlap": 0.5},
    "lr1.5e-4": {"math_expert.train.lr": 1.5e-4, "multilingual_expert.train.lr": 1.5e-4},
    "overlap0_lr1.5e-4": {
        "expert_overlap": 0.0,
        "math_expert.train.lr": 1.5e-4,
        "multilingual_expert.train.lr": 1.5e-4,
    },
    "overlap0_lr5e-5": {
        "expert_overlap": 0.0,
        "math_expert.train.lr": 5e-5,
        "multilingual_expert.train.lr": 5e-5,
    },
    "overlap0_lr3e-4": {
        "expert_overlap": 0.0,
        "math_expert.train.lr": 3e-4,
        "multilingual_expert.train.lr": 3e-4,
    },
    "layers": {"expert_overlap": 0.0, "expert_split": "layers"},
    "layers_lr1e-3": {
        "expert_overlap": 0.0,
        "expert_split": "layers",
        "math_expert.train.lr": 1e-3,
        "multilingual_expert.train.lr": 1e-3,
    },
    "layers_reversed_lr1e-3": {
        "expert_overlap": 0.0,
        "expert_split": "layers_reversed",
        "math_expert.train.lr": 1e-3,
        "multilingual_expert.train.lr": 1e-3,
    },
    "layers_reversed_lr1.5e-3": {
        "expert_overlap": 0.0,
        "expert_split": "layers_reversed",
        "math_expert.train.lr": 1.5e-3,
        "multilingual_expert.train.lr": 1.5e-3,
    },
    "layers_reversed_lr2e-3": {
        "expert_overlap": 0.0,
        "expert_split": "layers_reversed",
        "math_expert.train.lr": 2e-3,
        "multilingual_expert.train.lr": 2e-3,
    },
    "layers_reversed_math1.5e-3_ml7e-4": {
        "expert_overlap": 0.0,
        "expert_split": "layers_reversed",
        "math_expert.train.lr": 1.5e-3,
        "multilingual_expert.train.lr": 7e-4,
    },
    "layers_reversed_lr1e-3_replay0.5": {
        "expert_overlap": 0.0,
        "expert_split": "layers_reversed",
        "math_expert.train.lr": 1e-3,
        "multilingual_expert.train.lr": 1e-3,
        "math_expert.replay": 0.5,
        "multilingual_expert.replay": 0.5,
    },
    "layers_lr2.5e-4": {
        "expert_overlap": 0.0,
        "expert_split": "layers",
        "math_expert.train.lr": 2.5e-4,
        "multilingual_expert.train.lr": 2.5e-4,
    },
    "overlap0_replay0.5": {
        "expert_overlap": 0.0,
        "math_expert.replay": 0.5,
        "multilingual_expert.replay": 0.5,
    },
    "overlap0.25": {"expert_overlap": 0.25},
    "overlap0.75": {"expert_overlap": 0.75},
}


def preset(name: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"lab={name}"])
    return OmegaConf.to_container(cfg.lab, resolve=True)


def with_overrides(lab: dict, overrides: dict[str, object]) -> dict:
    lab = json.loads(json.dumps(lab))
    for dotted, value in overrides.items():
        node = lab
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return lab


def summary(name: str, overrides: dict, result: dict, seconds: dict) -> dict:
    """One frontier row: the floors' quantities in points (accuracy x 100)."""
    acc = {m: {t: 100 * v for t, v in s.items()} for m, s in result["test_accuracy"].items()}
    math_t, ml_t = list(acc["base"])
    mean = {m: (s[math_t] + s[ml_t]) / 2 for m, s in acc.items()}
    gain = result["normalized_gain"]
    best = max(mean["math"], mean["multilingual"])
    row = {
        "variant": name,
        "overrides": overrides,
        "math_gain": acc["math"][math_t] - acc["base"][math_t],
        "ml_gain": acc["multilingual"][ml_t] - acc["base"][ml_t],
        "math_margin": acc["math"][math_t] - acc["multilingual"][math_t],
        "ml_margin": acc["multilingual"][ml_t] - acc["math"][ml_t],
        "best_expert_mean": best,
        "lambda": result["task_arithmetic"]["lambda"],
        "ta_mean": mean["task_arithmetic"],
        "ta_minus_best": mean["task_arithmetic"] - best,
        "ta_kept": [gain["task_arithmetic"][math_t], gain["task_arithmetic"][ml_t]],
        "average_kept": [gain["average"][math_t], gain["average"][ml_t]],
        "multitask_mean": mean.get("multitask"),
        "multitask_minus_ta": mean["multitask"] - mean["task_arithmetic"] if "multitask" in mean else None,
        "test_examples": result["test_examples"],
        "train_seconds": seconds,
        "result": result,
    }
    return row


def markdown(rows: list[dict], header: str) -> str:
    def f(value, digits=1):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        header,
        "",
        "| variant | overrides | math gain | ml gain | margins (math / ml) | best expert mean "
        "| TA (lambda) mean | TA - best | TA kept (math / ml) | average kept (math / ml) "
        "| multitask mean | multitask - TA |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(preset)"
        lines.append(
            f"| {r['variant']} | {overrides} | {f(r['math_gain'])} | {f(r['ml_gain'])} | "
            f"{f(r['math_margin'])} / {f(r['ml_margin'])} | {f(r['best_expert_mean'])} | "
            f"{f(r['ta_mean'])} ({r['lambda']}) | {f(r['ta_minus_best'])} | "
            f"{f(r['ta_kept'][0], 2)} / {f(r['ta_kept'][1], 2)} | "
            f"{f(r['average_kept'][0], 2)} / {f(r['average_kept'][1], 2)} | "
            f"{f(r['multitask_mean'])} | {f(r['multitask_minus_ta'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", default="high_interference", help="the preset the variants change")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--limit", type=int, default=500, help="test items per task (validation: all)")
    parser.add_argument("--multitask", action="store_true", help="also train and score the multi-task model")
    parser.add_argument("--out", type=Path, default=OUT, help="writes <out>.json and <out>.md")
    args = parser.parse_args()

    import torch

    from sae_merging.lab.build import LabSpec, lab_data, reference_scores, trained_models
    from sae_merging.utils.files import atomic_write_json, atomic_write_text

    lab = preset(args.lab)
    torch.set_num_threads(lab["threads"])
    path_json, path_md = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    data_cache: dict[str, object] = {}
    for name in args.variants:
        overrides = VARIANTS[name]
        spec = LabSpec.from_dict(with_overrides(lab, overrides))
        data_key = json.dumps(
            {
                k: v
                for k, v in asdict(spec).items()
                if k in ("seed", "model", "math", "multilingual", "base_data")
            }
            | {"n": [spec.math_expert.n_train, spec.multilingual_expert.n_train]},
            sort_keys=True,
        )
        if data_key not in data_cache:
            data_cache[data_key] = lab_data(spec)
        data = replace(data_cache[data_key], spec=spec)
        stages = ("base", "math", "multilingual") + (("multitask",) if args.multitask else ())
        begin = time.perf_counter()
        models, info = trained_models(data, lab["cache_dir"], stages, progress=True)
        trained = time.perf_counter() - begin
        result = reference_scores(data, models, limit=args.limit)
        seconds = {s: i["seconds"] for s, i in info.items()} | {
            "evaluation": round(time.perf_counter() - begin - trained, 1)
        }
        row = summary(name, overrides, result, seconds) | {"lab": args.lab, "key": spec.key()}
        # re-read before writing: rows another run added meanwhile are kept
        rows = json.loads(path_json.read_text())["rows"] if path_json.is_file() else []
        rows = [
            r
            for r in rows
            if not (
                r["variant"] == name
                and r["lab"] == args.lab
                and r["test_examples"] == row["test_examples"]
                and (r["multitask_mean"] is None or row["multitask_mean"] is not None)
            )
        ] + [row]
        header = (
            f"Lab frontier: variants of `lab={args.lab}` (one torch thread), test items per task as in "
            "`test_examples`, task arithmetic's lambda on the validation split; points = accuracy x 100; "
            "kept = (model - base) / (that task's expert - base). `python experiments/lab_frontier.py`"
        )
        atomic_write_json(path_json, {"rows": rows})
        atomic_write_text(path_md, markdown(rows, header))
        print(markdown([row], f"{name} ({seconds})"), flush=True)
    print(path_md.read_text())


if __name__ == "__main__":
    main()
